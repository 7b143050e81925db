"""How well an initialisation fits a set of signals after 0..K test-time steps."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nfit import metrics
from nfit.config import AdaptConfig, DataConfig, FieldOptions, FitConfig, SignalOptions, tile_field
from nfit.data import SignalFolder, guess_channels, load_all, scan_media
from nfit.device import flush_denormals, resolve_device, tune_cpu_allocator
from nfit.errors import ConfigError, InputError
from nfit.fields import Field, Params, build_field, count_params, field_config
from nfit.fit import fit_adam, fit_sgd, random_init, split_batches
from nfit.render import decode, evaluate_tiles
from nfit.runs import load_init
from nfit.signals import MODALITIES
from nfit.tiling import Tiling, extract


@dataclass
class Curves:
    """Per-signal quality after each step: ``psnr[k, i]`` after k steps on signal i."""

    psnr: Tensor  # [K + 1, M]
    ssim: Tensor | None  # [K + 1, M], None when the signals are too small for SSIM
    last: Tensor  # [M, *shape, C] the reconstructions after the last step (CPU)

    def summary(self) -> dict[str, list[float] | None]:
        def stats(x: Tensor | None, digits: int):
            if x is None:
                return None, None
            std = x.std(dim=1, unbiased=False)
            return [round(v, digits) for v in x.mean(dim=1).tolist()], [round(v, digits) for v in std.tolist()]

        psnr_mean, psnr_std = stats(self.psnr, 3)
        ssim_mean, ssim_std = stats(self.ssim, 5)
        return {"psnr_mean": psnr_mean, "psnr_std": psnr_std, "ssim_mean": ssim_mean, "ssim_std": ssim_std}


def adaptation_curves(
    field: Field,
    init: Params,
    signals: Tensor,
    config: AdaptConfig,
    device: torch.device,
    *,
    with_ssim: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> Curves:
    """Fit every signal from ``init`` (Algorithm 2, plain SGD, or Adam) and measure each step.

    signals: [M, *shape, C] in [0, 1], any device; fitted ``config.batch_size`` at a time.
    With ``config.optimizer == "adam"``: ``adam_steps`` steps at ``adam_lr`` (the last
    iterate is measured, not the best one).
    """
    count, *shape, channels = signals.shape
    shape = tuple(shape)
    init = {k: v.to(device) for k, v in init.items()}
    adam = config.optimizer == "adam"
    steps = config.adam_steps if adam else config.steps
    psnr = torch.empty(steps + 1, count)
    ssim = torch.empty(steps + 1, count) if with_ssim else None
    last = torch.empty(signals.shape)
    for part in split_batches(count, config.batch_size):
        sl = slice(part.start, part.stop)
        grid = signals[sl].to(device)  # [B, *shape, C]
        targets = field.to_units(grid)  # [B, N, out]

        def observe(step: int, params: Params) -> None:
            # PSNR comes from the fit's own full-context pass; decode only for SSIM and the last signals
            if ssim is None and step < steps:
                return
            values = decode(field, params, shape).view(grid.shape)  # clamped
            if ssim is not None:
                s = metrics.signal_ssim(values, grid)
                if s is None:
                    raise ValueError("no SSIM for these signals")
                ssim[step, sl] = s.cpu()
            if step == steps:
                last[sl] = values.cpu()

        result = _adapt(field, init, targets, shape, config, observe)
        psnr[:, sl] = torch.stack(result.psnr).cpu()  # [K + 1, B], clamped predictions
        if on_batch is not None:
            on_batch(len(part))
    return Curves(psnr, ssim, last)


def _adapt(field: Field, init: Params, targets: Tensor, shape: tuple[int, ...], config: AdaptConfig, observe):
    """The test-time fit being measured: ``adam_steps`` of Adam at ``adam_lr``, or Algorithm 2 (``config``)."""
    if config.optimizer == "adam":
        fit_config = FitConfig(steps=config.adam_steps, lr=config.adam_lr, batch_size=config.batch_size, chunk=config.chunk)
        return fit_adam(field, init, targets, shape, fit_config, observe=observe)
    return fit_sgd(field, init, targets, shape, config, observe=observe)


def tiled_curves(
    field: Field,
    init: Params,
    files: list[Path],
    tiling: Tiling,
    opts: SignalOptions,
    channels: int,
    config: AdaptConfig,
    device: torch.device,
    *,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[Curves, int]:
    """Fit each file whole, tile by tile, from ``init`` (as ``nfit fit`` does from a tile initialisation)
    and measure the PSNR of the whole file, its tiles blended as a render blends them, after each
    step: ``psnr[k, i]`` (``last`` is empty: files differ in size). Returns the curves and the
    number of files that could not be read (warned about, or raised with ``strict``)."""
    modality = MODALITIES[opts.modality]
    adam = config.optimizer == "adam"
    steps = config.adam_steps if adam else config.steps
    curves, bad = [], 0
    for path in files:
        try:
            values = modality.load_whole(path, opts, channels)  # [*shape, C]
        except InputError as err:
            if strict:
                raise
            bad += 1
            (warn or (lambda m: None))(f"{err.where}: {err.reason}")
            continue
        shape = tuple(values.shape[:-1])
        targets = field.to_units(extract(values, tiling, range(tiling.count(shape))).to(device))
        whole = values.to(device)
        psnr = torch.empty(steps + 1)

        def observe(step: int, params: Params) -> None:
            rendered = torch.cat([v for _, _, v in evaluate_tiles(field, params, tiling, shape, shape)])
            psnr[step] = metrics.psnr(rendered.view(1, *whole.shape), whole.unsqueeze(0))[0].cpu()

        tile_init = {k: v.to(device) for k, v in init.items()}
        _adapt(field, tile_init, targets, tiling.tile, config, observe)
        curves.append(psnr)
        if on_batch is not None:
            on_batch(1)
    if not curves:
        raise InputError(files[0] if files else None, "no readable files to evaluate")
    return Curves(torch.stack(curves, dim=1), None, torch.empty(0)), bad


def ssim_applies(shape: tuple[int, ...]) -> bool:
    """Images and video frames at least as large as SSIM's window (audio has none)."""
    return len(shape) in (2, 3) and min(shape[-2:]) >= metrics.SSIM_MIN_SIDE


@dataclass
class EvalReport:
    init: str  # a path, or "random"
    init_sha256: str | None
    data: str
    signals: int
    bad_files: int
    shape: tuple[int, ...]
    steps: int
    results: dict[str, dict[str, list[float] | None]]  # "rescaled" / "plain" / "adam" -> Curves.summary()
    parameters: int = 0  # of the field
    values: int = 0  # that a fitted file stores: the parameters, or a sparse field's survivors and biases
    density: float = 1.0  # of the weight matrices
    tiling: dict | None = None  # whole files fitted tile by tile: the tiling (PSNR is of each whole file)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@flush_denormals()
def evaluate_folder(
    init: str | Path,
    data: str | Path,
    config: AdaptConfig | None = None,
    *,
    res: int | None = None,
    data_config=None,
    field_options=None,
    seed: int = 0,
    limit: int | None = None,
    density: float | None = None,
    workers: int = 0,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvalReport:
    """Fit every signal of a folder from ``init`` (an init file or run, or "random") and report
    PSNR/SSIM mean and spread after each step 0..K: with and without gradient re-scaling,
    or with Adam (``config.optimizer``). ``density`` picks the level of a sparse run.

    Signals are conformed to the initialisation's grid (images and video frames
    resized and cropped, audio resampled and cut); ``data_config`` (and ``res``) set
    the grid of the random baseline (default: :class:`nfit.config.DataConfig`'s). A tile
    initialisation (and a random baseline with ``data_config.tile``) fits whole files at their
    own scale tile by tile, and the PSNR is of each whole file.
    """

    config = config or AdaptConfig()
    device = resolve_device(config.device)
    tune_cpu_allocator(device)  # a long job of many steps: keep freed memory
    dcfg = data_config or DataConfig()
    if res is not None:
        dcfg = dataclasses.replace(dcfg, res=res)
    meta = None if str(init) == "random" else load_init(init, density)
    modality, files = scan_media(Path(data), meta.modality if meta is not None else dcfg.modality)
    if limit is not None:
        files = files[:limit]
    tiling = None
    if meta is None:
        if density is not None:
            raise ConfigError("--density", "applies to a sparse run, not the random baseline")
        channels = dcfg.channels or guess_channels(files, modality)
        tiles = dcfg.tiles()
        if tiles is not None:  # the baseline of a tile initialisation: random tiles of the same size
            tiling = Tiling(*tiles.sizes(modality))
            opts, shape = dcfg.tile_options(modality, tiling.tile[0]), tiling.tile
        else:
            opts = dcfg.signal_options(modality)
            shape = MODALITIES[modality].dataset_shape(opts)
        fopts = field_options or FieldOptions()
        defaults = None if tiling is None else tile_field(modality)
        field_ = build_field(fopts.name, field_config(fopts, modality, shape, channels, defaults))
        params, sha = random_init(field_, seed), None
    elif meta.tiling is not None:  # a tile initialisation: whole files at their own scale, fitted tile by tile
        tiling, channels = meta.tiling, meta.channels
        opts = SignalOptions(modality, sample_rate=None if meta.rate is None else round(meta.rate),
                             frames=None if modality != "video" else dcfg.frames, stride=dcfg.stride)
        field_, params, sha, shape = meta.field, meta.params, meta.sha256, meta.shape
    else:
        opts = MODALITIES[modality].grid_options(meta.shape, meta.rate)
        if dcfg.res is not None and opts.res != dcfg.res:
            raise ConfigError("--res", f"the initialisation was trained on a {'x'.join(map(str, meta.shape))} grid; "
                                       "evaluate on that")
        field_, params, sha, shape, channels = meta.field, meta.params, meta.sha256, meta.shape, meta.channels
    warn = warn or (lambda m: None)
    results = {}
    variants = (("adam", True),) if config.optimizer == "adam" else (("rescaled", True), ("plain", False))
    if tiling is not None:
        for name, rescale in variants:
            curves, bad = tiled_curves(field_, params, files, tiling, opts, channels,
                                       dataclasses.replace(config, rescale=rescale), device, strict=strict, warn=warn,
                                       on_batch=on_batch)
            results[name] = curves.summary()
        count = curves.psnr.shape[1]
    else:
        _, signals = load_all(SignalFolder(files, opts, channels), list(range(len(files))), strict, warn)
        bad, count = len(files) - len(signals), len(signals)
        with_ssim = ssim_applies(shape)
        for name, rescale in variants:
            curves = adaptation_curves(field_, params, signals, dataclasses.replace(config, rescale=rescale), device,
                                       with_ssim=with_ssim, on_batch=on_batch)
            results[name] = curves.summary()
    steps = config.adam_steps if config.optimizer == "adam" else config.steps
    sparsity = None if meta is None else meta.sparsity
    return EvalReport(str(init), sha, str(data), count, bad, shape, steps, results, count_params(field_),
                      count_params(field_) if sparsity is None else meta.n_values,
                      1.0 if sparsity is None else sparsity["density"], None if tiling is None else tiling.to_json())
