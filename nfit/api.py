"""The Python API: the same jobs as the CLI, as functions.

    import nfit
    nf = nfit.fit("photo.png", steps=300)          # a NeuralField
    nf.save("photo.nf")
    big = nfit.render("photo.nf", res=1024)          # float tensor [H, W, C] in [0, 1]
    nfit.render_to_file(nf, "big.png", res=1024)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfit import metrics
from nfit.atomic import guard_output, make_dirs
from nfit.coding import ARM
from nfit.config import (
    CLIP_FIELD,
    INIT_SIZE_TOLERANCE,
    CODING_MARGIN_DB,
    LATENT_BUDGET_BPP,
    LATENT_FIT,
    LATENT_FIT_BYTES,
    MEMORY_FRACTION,
    AdaptConfig,
    DataConfig,
    FieldOptions,
    FitConfig,
    RenderConfig,
    TILE_ADAM_LR,
    TILE_WARMUP,
    TILE_FIT,
    SignalOptions,
    StoreConfig,
    TileConfig,
    TrainConfig,
    tile_field,
)
from nfit.data import scan_folder
from nfit.device import flush_denormals, resolve_device, tune_cpu_allocator
from nfit.errors import ConfigError, NfitError, NfitWarning, OutputError
from nfit.evaluation import EvalReport, evaluate_folder
from nfit.fieldfile import (
    INIT_FORMAT,
    MetaInit,
    NeuralField,
    field_bytes,
    is_field_file,
    load_field,
    read_field_header,
    read_format,
    read_metadata,
    save_field,
)
from nfit.fields import FIELDS, Params, build_field, count_params, field_config, field_config_dict, unbatch_params
from nfit.fields.base import Pointwise
from nfit.fields.grid import LatentGrid
from nfit.fields.masked import narrow_width
from nfit.fit import StepInfo, fit_batch, random_init, split_batches
from nfit.latent import RateGoal, fit_latents, lambda_for, lr_share
from nfit.memory import available_bytes
from nfit.inits import DEFAULT, default_init, default_init_path, shipped_init, trained_channels
from nfit.rate import measure
from nfit.rate import store as store_field
from nfit.render import default_output, render_to_file, render_values
from nfit.runs import RUN_FILE, find_init, level_files, load_init, summarize_run
from nfit.signals import EXTENSIONS, MODALITIES, Signal, modality_for, read_signal
from nfit.signals.audio import header_length
from nfit.signals.image import header_size
from nfit.tiled import fit_tiles
from nfit.tiling import Tiling
from nfit.train import TrainResult
from nfit.train import meta_train as _meta_train
from nfit.viz import context_frames, selected_context, write_context_maps

ProgressFactory = Callable[[str, int], Callable[[StepInfo], None]]
"""Called once per batch with a label and its number of steps; returns the per-step callback."""


@flush_denormals()
def fit_signals(
    signals: Sequence[Signal],
    config: FitConfig | None = None,
    field: FieldOptions | None = None,
    progress: ProgressFactory | None = None,
    *,
    init: MetaInit | str | None = None,
    adapt: AdaptConfig | None = None,
    store: StoreConfig | None = None,
    tiles: TileConfig | None = None,
) -> list[NeuralField]:
    """Fit one field per signal. Signals of equal grid and channels are fitted in batches.

    ``tiles`` (default: whole-signal fields) cuts each signal into tiles, each fitted by its own
    small field (:mod:`nfit.tiling`), batch by batch; a tile initialisation (one trained with
    ``meta-train --tile``) always fits tiles of its own size.

    Without ``init``: Adam from a random initialisation (``config``, ``field``). With a
    learned ``init``: the init decides the field, and ``adapt`` the steps (GradNCP's
    re-scaled SGD by default, or Adam); a sparse ``init`` keeps its pruned weights at
    zero. ``init="default"``: the initialisation shipped for each signal's modality
    (see :mod:`nfit.inits`), or a random one where nfit ships none. From a learned
    init, ``config.target_psnr`` continues with Adam (``adapt.adam_lr``, at most
    ``config.steps`` steps) for the signals that the SGD steps left below it. ``store``
    says how the fields will be written; with float16 the values are rounded before
    the summary is measured, so it describes the file.
    """
    config = config or FitConfig()
    field = field or FieldOptions()
    adapt = adapt or AdaptConfig()
    store = store or StoreConfig()
    default = init == DEFAULT
    _check_field_given_init(init, field)
    if store.standalone and (init is None or default or init.mask is None):
        raise ConfigError("--standalone", "applies to fields fitted from a sparse initialisation (they alone have a mask)")
    if field.name == LatentGrid.name and store.bits is not None:
        raise ConfigError("--bits", "a latent grid is always coded, its latents as integers: its size follows "
                          "--bpp, --max-bytes or --target-psnr")
    device = resolve_device(adapt.device if init is not None else config.device)
    tune_cpu_allocator(device)  # each step frees and faults in again tens of MB of activations: 1.2-1.8x the time
    target = config.target_psnr
    if store.by_quality and target is not None:
        config = dataclasses.replace(config, target_psnr=target + CODING_MARGIN_DB)  # room for the rounding
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(signals):
        if init is not None and not default:
            _check_init_fits(init, s)
        groups[(s.modality, s.shape, s.channels)].append(i)
    fitted: list[NeuralField | None] = [None] * len(signals)
    for (modality, shape, channels), members in groups.items():
        start = _Start.of(default_init(modality, channels) if default else init, default, field, config, adapt,
                          modality, shape, channels, tiles or TileConfig(tile=0))
        if start.tiling is not None:  # tiles batch within a signal: one signal at a time
            for i in members:
                fitted[i] = _fit_tiled(signals[i], start, config, adapt, store, progress, device, target)
            continue
        fit_group = _fit_latent_batch if isinstance(start.net, LatentGrid) else _fit_one_batch
        for part in split_batches(len(members), start.batch_size):
            idx = [members[j] for j in part]
            for i, nf in zip(idx, fit_group([signals[i] for i in idx], start, config, adapt, store, progress,
                                                  device, target)):
                fitted[i] = nf
    return fitted  # type: ignore[return-value]


@dataclass
class _Start:
    """Where a group of signals (one modality, grid and channels) starts: the field, its initial
    parameters, the batch size, and the record the .nf keeps of it."""

    field_name: str
    field_config: dict[str, Any]
    net: Any  # the Field
    params: Params
    batch_size: int
    init: MetaInit | None
    record: dict[str, Any]
    tiling: Tiling | None = None
    tile_batch: int = TileConfig.batch

    @classmethod
    def of(cls, init: MetaInit | None, default: bool, field: FieldOptions, config: FitConfig, adapt: AdaptConfig,
           modality: str, shape: tuple[int, ...], channels: int, tiles: TileConfig) -> _Start:
        if init is None:
            tiling = _tiling(tiles, field, modality, shape)
            grid = shape if tiling is None else tiling.tile
            # tiles: the small field of TILE_FIELD; clips of a whole field (NeRV, latent grids) CLIP_FIELD's
            defaults = tile_field(modality) if _tiled(tiles, field) else None if tiling is None else CLIP_FIELD
            config_dict = field_config(field, modality, grid, channels, defaults)
            net = build_field(field.name, config_dict)
            return cls(field.name, config_dict, net, random_init(net, config.seed), config.batch_size, None,
                       {"name": "random", "seed": config.seed, "sha256": None}, tiling, tiles.batch)
        if init.tiling is not None:
            return cls(init.field_name, init.field_config, init.field, init.params, adapt.batch_size, init,
                       _init_record(init, default, modality, channels), init.tiling, tiles.batch)
        _warn_init_size(init, modality, shape)
        return cls(init.field_name, init.field_config, init.field, init.params, adapt.batch_size, init,
                   _init_record(init, default, modality, channels))


def _init_record(init: MetaInit, default: bool, modality: str, channels: int) -> dict[str, Any]:
    """What a .nf records of the initialisation it was fitted from."""
    record = {"name": f"default:{modality}" if default else "meta", "algo": init.algo.get("name"), "sha256": init.sha256}
    if default and channels != trained_channels(modality):
        record["channels_adapted"] = channels
    if init.sparsity is not None:
        record["density"] = init.sparsity.get("density")
    return record


def _tiling(tiles: TileConfig, field: FieldOptions, modality: str, shape: tuple[int, ...]) -> Tiling | None:
    """The tiling of a fit from random: the options', or none for a whole-signal field (``--tile 0``).
    Fields that decode whole frames (NeRV) are cut along time only, into clips of a fixed length."""
    if _tiled(tiles, field):
        return Tiling(*tiles.sizes(modality))
    sizes = None if tiles.whole or modality != "video" else tiles.frame_chunks(shape)
    return None if sizes is None else Tiling(*sizes)


def _fit_tiled(signal: Signal, start: _Start, config: FitConfig, adapt: AdaptConfig, store: StoreConfig,
               progress: ProgressFactory | None, device: torch.device, target: float | None) -> NeuralField:
    """Fit one signal tile by tile and describe it (PSNR and SSIM of what is stored, rendered whole)."""
    values = torch.from_numpy(signal.values)  # [*shape, C]
    label = f"{signal.source.name}: {start.tiling.count(signal.shape):,} tiles"
    result = fit_tiles(start.net, start.params, values, start.tiling, config, adapt, start.init is not None,
                       device=device, batch=start.tile_batch,
                       progress=None if progress is None else lambda steps: progress(label, steps))
    nf = _described(start, signal, result.params, store)
    return _stored(nf, start, values, store, target, device, {**result.method, "seconds": round(result.seconds, 3),
                                                              "batch": 1, "device": device.type}, config, progress, label)


def _stored(nf: NeuralField, start: _Start, values: torch.Tensor, store: StoreConfig, target: float | None,
            device: torch.device, summary: dict[str, Any], config: FitConfig, progress: ProgressFactory | None,
            label: str) -> NeuralField:
    """``nf`` as it will be written (coded or rounded: see :mod:`nfit.rate`), its summary measured on that.
    Under a time budget (``--seconds``) the coding is not fine-tuned: the budget was the fit's."""
    if "target_psnr" in summary and summary["target_psnr"] != target:  # the fit aimed higher, for the coding
        summary = {**summary, "target_psnr": target, "fit_target_psnr": summary["target_psnr"]}
    budget = store.budget(math.prod(nf.shape))
    for _ in range(3):
        # a budget counts the metadata too: size the file with a summary as long as the final one will be
        nf.summary = {**summary, "psnr": -99.9999, "ssim": -0.99999, "bits": 16}
        coded = store_field(nf, None if start.init is None else start.params, values, store, target, device,
                            tune=config.seconds is None,
                            progress=None if progress is None else lambda steps: progress(f"{label}: coding", steps))
        psnr, ssim = measure(coded, values, device)
        coded.summary = {**summary, "psnr": round(psnr, 4), "ssim": None if ssim is None else round(ssim, 5)}
        if coded.quantised is not None:
            coded.summary["bits"] = coded.quantised.bits
        over = 0 if budget is None else field_bytes(coded) - budget
        if over <= 0:
            return coded
        store = dataclasses.replace(store, max_bytes=budget - over, bpp=None)  # a longer summary than foreseen
    raise ConfigError(nf.source, f"cannot be stored in {budget:,} bytes")


def _fit_one_batch(signals: list[Signal], start: _Start, config: FitConfig, adapt: AdaptConfig, store: StoreConfig,
                   progress: ProgressFactory | None, device: torch.device, target: float | None) -> list[NeuralField]:
    """Fit signals of one grid together and describe each result as a NeuralField (PSNR, SSIM of what is stored)."""
    shape, label = signals[0].shape, _batch_label(signals)
    grid = torch.from_numpy(np.stack([s.values for s in signals])).to(device)  # [B, *shape, C]
    deadline = None if config.seconds is None else time.perf_counter() + config.seconds
    params, method, seconds, stopped = fit_batch(start.net, start.params, start.net.to_units(grid), shape, config,
                                                 adapt, start.init is not None,
                                                 lambda n: progress(label, n) if progress else None, deadline=deadline)
    summary = {"seconds": round(seconds, 3), "batch": len(signals), "device": device.type, "stopped": stopped}
    return [_stored(_described(start, s, {k: v.cpu() for k, v in unbatch_params(params, b).items()}, store), start,
                    grid[b].cpu(), store, target, device, {**method[b], **summary}, config, progress, s.source.name)
            for b, s in enumerate(signals)]


def _described(start: _Start, signal: Signal, params: Params, store: StoreConfig) -> NeuralField:
    """A fit of ``signal`` from ``start`` as a NeuralField, before it is stored (:func:`_stored`)."""
    return NeuralField(
        field_name=start.field_name, field_config=start.field_config, params=params, modality=signal.modality,
        shape=signal.shape, channels=signal.channels, bit_depth=signal.bit_depth, source=signal.source.name,
        source_bytes=_file_size(signal.source), rate=signal.rate, init=start.record, dtype=store.dtype,
        mask=None if start.init is None else start.init.mask, standalone=store.standalone, tiling=start.tiling)


def _batch_label(signals: list[Signal]) -> str:
    """How a progress bar names a batch of signals of one grid."""
    shape = signals[0].shape
    return signals[0].source.name if len(signals) == 1 else f"{len(signals)} x {'x'.join(map(str, shape))}"


def _fit_latent_batch(signals: list[Signal], start: _Start, config: FitConfig, adapt: AdaptConfig,
                      store: StoreConfig, progress: ProgressFactory | None, device: torch.device,
                      target: float | None) -> list[NeuralField]:
    """Fit latent-grid fields (:mod:`nfit.latent`) to signals of one grid, their rate steered toward
    the store's budget, else toward ``config.target_psnr``, else fixed, and describe each as stored."""
    fits = _latent_batch_fits(signals[0], device)
    if fits < len(signals):  # the whole grid of each is held at once: fewer signals together
        return [nf for i in range(0, len(signals), fits) for nf in _fit_latent_batch(
            signals[i:i + fits], start, config, adapt, store, progress, device, target)]
    shape, label = signals[0].shape, _batch_label(signals)
    grid = torch.from_numpy(np.stack([s.values for s in signals])).to(device)  # [B, *shape, C]
    budget = store.budget(math.prod(shape))
    if budget is not None:  # what the latents may take: the budget less the rest of the file, with room to spare
        empty = dataclasses.replace(_described(start, signals[0], start.params, store), summary={"seconds": 0.0})
        # stored under the budget itself: a budget that not even zero latents fit fails here, before the fit
        rest = field_bytes(store_field(empty, None, grid[0].cpu(), store, None, device))
        bits = max(1.0, 8 * (budget - rest) * LATENT_FIT["budget_share"])
        rate = bits / math.prod(shape)  # the latents' bits per sample
        goal = RateGoal(lam=lambda_for(rate), bits=bits)
        config = dataclasses.replace(config, lr=config.lr * lr_share(rate))
    else:
        goal = RateGoal(psnr=config.target_psnr)
    deadline = None if config.seconds is None else time.perf_counter() + config.seconds
    result = fit_latents(start.net, start.params, start.net.to_units(grid), shape, config, goal,
                         progress(label, config.steps) if progress else None, deadline=deadline)
    summary = {"method": "adam-rd", "steps": result.steps, "lr": config.lr, "seed": config.seed,
               "target_psnr": config.target_psnr, "seconds": round(result.seconds, 3), "batch": len(signals),
               "device": device.type, "stopped": result.stopped}
    out = []
    for b, s in enumerate(signals):
        nf = _described(start, s, {k: v.cpu() for k, v in unbatch_params(result.params, b).items()}, store)
        out.append(_stored(nf, start, grid[b].cpu(), store, target, device,
                           {**summary, "lambda": float(f"{result.lam[b]:.4g}")}, config, progress, s.source.name))
    return out


def _latent_batch_fits(signal: Signal, device: torch.device) -> int:
    """How many signals like this one a latent fit may hold at once in MEMORY_FRACTION of the memory
    available (at LATENT_FIT_BYTES per sample and channel); raises ConfigError where not even one fits,
    rather than let the system kill the process part way."""
    need, free = _latent_need(math.prod(signal.shape), signal.channels), available_bytes(device)
    fits = _latent_capacity(need, free)
    if fits < 1:
        raise ConfigError(signal.source, f"a latent grid of {'x'.join(map(str, signal.shape))} samples needs about "
                          f"{need / 2**30:.1f} GiB to fit, {free / 2**30:.1f} GiB is free: fit it in tiles "
                          "(leave out --field grid)")
    return fits


def _latent_need(samples: int, channels: int) -> int:
    """Bytes a latent fit of one signal peaks at (LATENT_FIT_BYTES per sample and channel)."""
    return LATENT_FIT_BYTES * samples * channels


def _latent_capacity(need: int, free: int | None) -> int:
    """How many latent fits of ``need`` bytes each fit in MEMORY_FRACTION of ``free`` bytes (None: unknown,
    no bound)."""
    return 1 << 30 if free is None else int(MEMORY_FRACTION * free // need)


def _check_shared_field(field: FieldOptions) -> None:
    """An initialisation is shared by signals of one grid: a field sized by its one signal cannot be one."""
    if getattr(FIELDS.get(field.name), "whole_signal", False):
        raise ConfigError("--field", f"a {field.name!r} field is sized by the file it fits: it is for nfit fit "
                          "(compact files), not for initialisations")


def _check_field_given_init(init: MetaInit | str | Path | None, field: FieldOptions | None) -> None:
    """A learned initialisation decides the field: field options beside one are an error, not ignored."""
    if init is not None and field is not None and field != FieldOptions():
        raise ConfigError("--init", "the initialisation decides the field: drop --field/--width/--depth/--w0")


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:  # a Signal built in memory
        return None


def _warn_init_size(init: MetaInit, modality: str, shape: tuple[int, ...]) -> None:
    """A learned initialisation used far from the grid size it was trained at: say so, and how to match it."""
    ratio = math.prod(shape) / math.prod(init.shape)
    if 1 / INIT_SIZE_TOLERANCE <= ratio <= INIT_SIZE_TOLERANCE:
        return
    hint = f"--res {max(init.shape[-2:])}" if modality in ("image", "video") else f"--duration {init.shape[0] / (init.rate or 1):g}"
    warnings.warn(NfitWarning(
        f"fitting {modality} of {'x'.join(map(str, shape))} from an initialisation trained at "
        f"{'x'.join(map(str, init.shape))} ({ratio:.2g}x the samples): it helps at the size it was trained at and "
        f"may lose to fitting from scratch here; give {hint}, or fit without --init"), stacklevel=3)


def _check_init_fits(init: MetaInit, signal: Signal) -> None:
    if signal.modality != init.modality:
        raise ConfigError(signal.source, f"is {signal.modality}, the initialisation is for {init.modality}")
    if signal.channels != init.channels:
        raise ConfigError(
            signal.source, f"has {signal.channels} channel(s), the initialisation was trained on {init.channels}"
        )
    mismatch = init.field.grid_error(signal.shape, signal.channels)
    if mismatch:
        raise ConfigError(signal.source, f"does not fit the initialisation's field: {mismatch}")


def reading_options(options: SignalOptions | None, init: MetaInit | str | None) -> SignalOptions:
    """The options to read files with for fitting from ``init``: audio is resampled to the rate the
    initialisation was trained at, and video frames for a NeRV (whose decoder has one frame size)
    are cropped and resized to its size, unless the options say otherwise."""
    opts = options or SignalOptions()
    if not isinstance(init, MetaInit):
        return opts
    if init.modality == "audio" and opts.sample_rate is None and init.rate is not None:
        opts = dataclasses.replace(opts, sample_rate=round(init.rate))
    if init.modality == "video" and opts.res is None and init.field.samples_per_unit > 1 and init.shape[1] == init.shape[2]:
        opts = dataclasses.replace(opts, res=init.shape[1])
    return opts


def fit(
    inputs: str | Path | Signal | Sequence[str | Path | Signal],
    *,
    field: str = FieldOptions.name,
    width: int | None = None,
    depth: int | None = None,
    w0: float | None = None,
    field_config: dict[str, Any] | None = None,
    progress: ProgressFactory | None = None,
    init: str | Path | MetaInit | None = None,
    density: float | None = None,
    bits: int | None = StoreConfig.bits,
    dtype: str = StoreConfig.dtype,
    standalone: bool = StoreConfig.standalone,
    max_bytes: int | None = None,
    bpp: float | None = None,
    options: SignalOptions | None = None,
    tile: int | None = None,
    tile_frames: int | None = None,
    overlap: int | None = None,
    **fit_options: Any,
) -> NeuralField | list[NeuralField]:
    """Fit one file (returns a NeuralField) or several (returns a list), as ``nfit fit`` does.

    Signals are cut into tiles (``tile``, ``tile_frames``, ``overlap``: see
    :class:`nfit.config.TileConfig`; ``tile=0`` fits one field to the whole signal).
    ``field_config`` sets any other option of the field, e.g. NeRV's ``{"strides": [2, 2]}``.
    ``bits``, ``dtype``, ``max_bytes``, ``bpp``: how the field is stored (:class:`nfit.config.StoreConfig`;
    coded, with its bit width chosen by :mod:`nfit.rate`, by default).
    ``fit_options`` are the settings of :func:`fit_plan`: steps, lr, seed, target_psnr, seconds,
    batch_size, device, and with ``init`` (an init file or run from ``nfit meta-train``, or
    "default" for the one nfit ships) optimizer, rescale and gamma. ``density`` picks the level
    of a sparse run directory given as ``init``. ``options`` say how files are read (modality,
    audio sample rate and duration, video frames, stride and size).
    """
    single = isinstance(inputs, (str, Path, Signal))
    items = [inputs] if single else list(inputs)
    fields = FieldOptions(field, width, depth, w0, field_config)
    tiles = TileConfig(tile, tile_frames, overlap)
    paths = [Path(x) for x in items if not isinstance(x, Signal)]
    store = StoreConfig(bits, dtype, standalone, max_bytes, bpp)
    if len(paths) == len(items) and latents_for_budget(paths, fields, store, options or SignalOptions(),
                                                       {**fit_options, "init": init, "tiles": tiles}):
        fields = FieldOptions(name=LatentGrid.name)
    plan = fit_plan(paths, init=init, density=density, field=fields, tiles=tiles, **fit_options)
    opts = reading_options(options, plan.init)
    signals = [x if isinstance(x, Signal) else read_signal(x, opts) for x in items]
    result = fit_signals(signals, plan.config, fields, progress, init=plan.init, adapt=plan.adapt, store=store,
                         tiles=plan.tiles)
    return result[0] if single else result


@dataclass
class FileOutcome:
    """What became of one input of :func:`fit_files`. Holds no parameters: a folder of
    any size costs a few hundred bytes per file here."""

    input: Path
    output: Path
    status: str  # "fitted", "skipped" (the output existed) or "failed"
    error: NfitError | None = None  # why it failed; ``str(error)`` names the file
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # the fit's (psnr, ssim, steps, ...)
    shape: tuple[int, ...] = ()
    bytes: int | None = None  # of the written output


def fit_files(
    inputs: Sequence[str | Path],
    outputs: Sequence[str | Path],
    config: FitConfig | None = None,
    field: FieldOptions | None = None,
    progress: ProgressFactory | None = None,
    *,
    init: str | Path | MetaInit | None = None,
    adapt: AdaptConfig | None = None,
    store: StoreConfig | None = None,
    tiles: TileConfig | None = None,
    keep_going: bool = False,
    skip_existing: bool = False,
    on_outcome: Callable[[FileOutcome], None] | None = None,
    options: SignalOptions | None = None,
    force: bool = False,
) -> list[FileOutcome]:
    """Fit ``inputs[i]`` into ``outputs[i]``, streaming: files are decoded as they are
    needed, fitted in batches of equal shape, and each output is written (atomically)
    as soon as its batch is done, so memory does not grow with the number of files and
    an interruption loses at most the batch in progress.

    Outputs are checked first, before any work: each must end in ``.nf``, be none of the
    inputs (not even through a link), and be new or a .nf file that nfit wrote (else
    ``force``), and be writable. A file that
    cannot be read, fitted or written raises at once, or with ``keep_going`` becomes a
    "failed" outcome while the others carry on. ``skip_existing`` leaves inputs whose
    output exists alone, so an interrupted folder can be finished by running again.
    Returns one outcome per input, in input order.
    """
    if len(inputs) != len(outputs):
        raise ConfigError(None, "need one output per input")
    inputs, outputs = [Path(p) for p in inputs], [Path(o) for o in outputs]
    _check_outputs(inputs, outputs, skip_existing, force)
    meta = init if init is None or init == DEFAULT or isinstance(init, MetaInit) else load_init(init)
    config = config or FitConfig()
    stream = _FitStream(inputs, outputs, keep_going, on_outcome,
                        lambda signals: fit_signals(signals, config, field, progress, init=meta, adapt=adapt, store=store,
                                                    tiles=tiles))
    opts = reading_options(options, meta)
    batch_size = (adapt or AdaptConfig()).batch_size if meta is not None else config.batch_size
    if (meta.tiling is not None if isinstance(meta, MetaInit) else tiles is not None and _tiled(tiles, field or FieldOptions())):
        batch_size = 1  # a tiled fit batches tiles, not files: hold one decoded file at a time
    for i, (src, out) in enumerate(zip(inputs, outputs)):
        if skip_existing and out.exists():
            stream.done(i, FileOutcome(src, out, "skipped"))
            continue
        try:
            signal = read_signal(src, opts)
            if isinstance(meta, MetaInit):
                _check_init_fits(meta, signal)
        except NfitError as err:
            stream.failed(i, err)
            continue
        stream.add(i, signal, batch_size)
        del signal  # the stream's reference is the only one, so fitting frees it
    stream.finish()
    return stream.outcomes  # type: ignore[return-value]


def _check_outputs(inputs: list[Path], outputs: list[Path], skip_existing: bool, force: bool) -> None:
    """Before any work: no two outputs alike, each a .nf that destroys no input and no file nfit did not write."""
    seen: set[Path] = set()
    for out in outputs:
        if out in seen:
            raise ConfigError(None, f"two inputs would write the same output {out}")
        seen.add(out)
        if out.suffix.lower() != ".nf":
            raise OutputError(out, "a fitted field is written as a .nf file: give an output name ending in .nf")
        if not (skip_existing and out.exists()):
            guard_output(out, inputs, ours=is_field_file, force=force)


class _FitStream:
    """Decoded signals waiting for a batch, by (modality, grid, channels), fitted and written as batches
    fill. At most ``batch_size`` are held at once: past that the biggest group is fitted as it is, so a
    folder of all-different shapes still runs in bounded memory. Records one outcome per input."""

    def __init__(self, inputs: list[Path], outputs: list[Path], keep_going: bool,
                 on_outcome: Callable[[FileOutcome], None] | None, fit: Callable[[list[Signal]], list[NeuralField]]):
        self.inputs, self.outputs, self.keep_going, self.on_outcome, self.fit = inputs, outputs, keep_going, on_outcome, fit
        self.outcomes: list[FileOutcome | None] = [None] * len(inputs)
        self.pending: dict[tuple, list[tuple[int, Signal]]] = defaultdict(list)

    def done(self, i: int, outcome: FileOutcome) -> None:
        self.outcomes[i] = outcome
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def failed(self, i: int, error: NfitError) -> None:
        if not self.keep_going:
            raise error
        self.done(i, FileOutcome(self.inputs[i], self.outputs[i], "failed", error))

    def add(self, i: int, signal: Signal, batch_size: int) -> None:
        key = (signal.modality, signal.shape, signal.channels)
        self.pending[key].append((i, signal))
        if len(self.pending[key]) >= batch_size:
            self.flush(key)
        elif sum(map(len, self.pending.values())) >= batch_size:
            self.flush(max(self.pending, key=lambda k: len(self.pending[k])))

    def finish(self) -> None:
        while self.pending:
            self.flush(min(self.pending, key=lambda k: self.pending[k][0][0]))  # oldest first

    def flush(self, key: tuple) -> None:
        members = self.pending.pop(key)
        idx = [i for i, _ in members]
        try:
            fitted = self.fit([sig for _, sig in members])
        except NfitError as err:
            for i in idx:
                self.failed(i, err)
            return
        except (torch.cuda.OutOfMemoryError, MemoryError):
            for i in idx:
                self.failed(i, NfitError(self.inputs[i],
                                         f"out of memory fitting a batch of {len(idx)} (try a smaller --batch-size)"))
            return
        del members  # the decoded signals: free before writing
        for i, nf in zip(idx, fitted):
            try:
                save_field(nf, self.outputs[i])
            except NfitError as err:
                self.failed(i, err)
                continue
            self.done(i, FileOutcome(self.inputs[i], self.outputs[i], "fitted", None, nf.summary, nf.shape,
                                     self.outputs[i].stat().st_size))


@flush_denormals()
def adapt_config(test: dict[str, Any], steps: int | None = None, lr: float | None = None, gamma: float | None = None,
                 rescale: bool = True, optimizer: str = AdaptConfig.optimizer, batch_size: int = AdaptConfig.batch_size,
                 device: str = AdaptConfig.device) -> AdaptConfig:
    """Test-time settings: the ones given, else the initialisation's own (``test``, as init files record it),
    else nfit's defaults."""
    kwargs: dict[str, Any] = {"optimizer": optimizer, "rescale": rescale, "batch_size": batch_size, "device": device}
    if optimizer == "adam":
        kwargs.update(adam_steps=steps if steps is not None else AdaptConfig.adam_steps,
                      adam_lr=lr if lr is not None else AdaptConfig.adam_lr)
    else:
        kwargs.update(steps=steps if steps is not None else int(test.get("steps", AdaptConfig.steps)),
                      lr=lr if lr is not None else float(test.get("lr", AdaptConfig.lr)))
    kwargs["gamma"] = gamma if gamma is not None else float(test.get("gamma", AdaptConfig.gamma))
    return AdaptConfig(**kwargs)


def plan_fit(inputs: Sequence[str | Path], output: str | Path | None = None, out_dir: str | Path | None = None,
             modality: str | None = None) -> tuple[list[Path], list[Path]]:
    """Inputs (folders expanded, recursively: their media files, or those of ``modality``) and their
    outputs: ``output`` (one input), ``out_dir`` (a folder's subfolders mirrored inside it, created)
    or beside each input."""
    given = [Path(p) for p in inputs]
    output, out_dir = (None if output is None else Path(output)), (None if out_dir is None else Path(out_dir))
    extensions = MODALITIES[modality].extensions if modality in MODALITIES else EXTENSIONS
    if output is not None and out_dir is not None:
        raise ConfigError(None, "give either -o/--output or -O/--out-dir, not both")
    pairs: list[tuple[Path, Path]] = []
    for item in given:
        if item.is_dir():
            pairs += [(f, f.relative_to(item).with_suffix(".nf")) for f in scan_folder(item, extensions)]
        else:
            pairs.append((item, Path(item.stem + ".nf")))
    files = [src for src, _ in pairs]
    if output is not None:
        if len(files) > 1:
            raise ConfigError("-o", "one output file for several inputs: use -O DIR instead")
        return files, [output]
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(out_dir, "is not a directory")
        outputs = [out_dir / rel for _, rel in pairs]
        for parent in sorted({o.parent for o in outputs}):
            make_dirs(parent)
        return files, outputs
    return files, [src.with_suffix(".nf") for src in files]


@dataclass
class FitPlan:
    """How :func:`fit_paths` fits: from random (``init`` None) or from an initialisation, with what settings."""

    config: FitConfig
    init: MetaInit | str | None = None
    adapt: AdaptConfig | None = None
    tiles: TileConfig = dataclasses.field(default_factory=TileConfig)


def fit_plan(files: Sequence[Path], *, init: str | Path | MetaInit | None = None, density: float | None = None,
             field: FieldOptions | None = None, steps: int | None = None, lr: float | None = None,
             optimizer: str = AdaptConfig.optimizer, rescale: bool = True, gamma: float | None = None,
             seed: int = FitConfig.seed, target_psnr: float | None = None, seconds: float | None = None,
             batch_size: int = FitConfig.batch_size, device: str = FitConfig.device,
             tiles: TileConfig | None = None) -> FitPlan:
    """The settings of a fit, with every rule on combining them: an initialisation decides the field
    (and a tile initialisation the tiling); the test-time options (optimizer, rescale, gamma, density)
    need one; "default" needs one shipped for the files' modality. ``steps`` and ``lr`` are Adam's
    from random, the test-time ones from an init. Tiled fits have their own defaults (``TILE_FIT``):
    a target PSNR (0 turns it off), more steps at a higher rate."""
    tiles = tiles or TileConfig()
    if init is None and _shipped_tiles_apply(files, tiles, field):
        init = DEFAULT  # nfit fit's default: tiles from the initialisation nfit ships for them
    learned = init not in (None, "random")
    if not learned:
        if not rescale or gamma is not None or optimizer != AdaptConfig.optimizer or density is not None:
            raise ConfigError(None, "--optimizer, --no-rescale, --gamma and --density apply to fitting from --init")
        field = field or FieldOptions()
        kind = "latent" if field.name == LatentGrid.name else "tiled" if _tiled(tiles, field) else "whole"
        if kind == "latent" and (tiles.tile or tiles.frames or tiles.overlap):
            raise ConfigError("--tile", "a latent grid is one field per file: drop --tile, --tile-frames and --overlap")
        return FitPlan(fit_config(kind, steps, lr, target_psnr, seconds, seed, batch_size, device), tiles=tiles)
    _check_field_given_init(init, field)  # here too: before any file is read
    if init == DEFAULT:
        if not _ships_init(files):
            raise ConfigError("--init", "nfit ships no initialisation for these files")
        if density is not None:
            raise ConfigError("--density", "applies to fitting from a sparse run (--init RUN)")
        shipped = shipped_init(modality_for(files[0]).name)
        meta: MetaInit | str = DEFAULT
        test, tiling = shipped.test, shipped.tiling
    else:
        meta = init if isinstance(init, MetaInit) else load_init(init, density)
        test, tiling = meta.test, meta.tiling
    if tiling is None and tiles.tile or tiling is not None and not _same_tiling(tiles, tiling):
        raise ConfigError("--tile", "the initialisation decides the tiling: drop --tile, --tile-frames and --overlap "
                          "(tile initialisations come from meta-train --tile)")
    if tiling is None:  # --steps and --lr are the test-time ones; Adam's refinement keeps its defaults
        refine = fit_config("whole", None, None, target_psnr, seconds, seed, batch_size, device)
        return FitPlan(refine, meta, adapt_config(test, steps, lr, gamma, rescale, optimizer, batch_size, device), tiles)
    # Tiles: --steps counts the whole fit (the initialisation's SGD steps, then Adam), --lr is Adam's
    adapt = adapt_config(test, None, None, gamma, rescale, optimizer, batch_size, device)
    total = TILE_FIT["steps"] if steps is None else steps
    adam_lr = lr if lr is not None else float(test.get("adam_lr", TILE_ADAM_LR))
    sgd_steps = min(adapt.steps, total) if optimizer == "sgd" else 0
    adapt = dataclasses.replace(adapt, steps=sgd_steps, adam_lr=adam_lr, adam_steps=total)
    refine = dataclasses.replace(fit_config("tiled", total - sgd_steps, adam_lr, target_psnr, seconds, seed, batch_size,
                                            device), warmup=TILE_WARMUP)
    return FitPlan(refine, meta, adapt, tiles)


def _same_tiling(tiles: TileConfig, tiling: Tiling) -> bool:
    """Whether tile options (None: unset) agree with an initialisation's tiling."""
    video = len(tiling.tile) == 3
    return ((tiles.tile is None or tiles.tile == tiling.tile[-1])
            and (tiles.overlap is None or tiles.overlap == tiling.overlap[-1])
            and (tiles.frames is None or video and tiles.frames == tiling.tile[0]))


def _shipped_tiles_apply(files: Sequence[Path], tiles: TileConfig, field: FieldOptions | None) -> bool:
    """Whether a fit given no --init starts from the tile initialisation nfit ships for these files:
    when it ships one, and neither the field nor the tiling asked for differs from it."""
    if tiles.whole or (field is not None and field != FieldOptions()) or not _ships_init(files):
        return False
    shipped = shipped_init(modality_for(files[0]).name)
    return shipped is not None and shipped.tiling is not None and _same_tiling(tiles, shipped.tiling)


def fit_config(kind: str, steps: int | None = None, lr: float | None = None, target_psnr: float | None = None,
               seconds: float | None = None, seed: int = FitConfig.seed, batch_size: int = FitConfig.batch_size,
               device: str = FitConfig.device) -> FitConfig:
    """Adam's settings, the given ones or the defaults of a fit of ``kind``: "tiled" (``TILE_FIT``),
    "latent" (a latent grid, ``LATENT_FIT``) or "whole" (a whole-signal field, ``FitConfig``). A target
    PSNR of 0 means none."""
    d = {"tiled": TILE_FIT, "latent": {**LATENT_FIT, "target_psnr": None, "seconds": None}}.get(
        kind, {"steps": FitConfig.steps, "lr": FitConfig.lr, "target_psnr": None, "seconds": None})
    target = d["target_psnr"] if target_psnr is None else (target_psnr or None)
    return FitConfig(steps=d["steps"] if steps is None else steps, lr=d["lr"] if lr is None else lr, seed=seed,
                     target_psnr=target, seconds=d["seconds"] if seconds is None else seconds, batch_size=batch_size,
                     device=device)


def _tiled(tiles: TileConfig, field: FieldOptions) -> bool:
    """Whether a fit from random is cut into tiles with small fields and the tile defaults (``TILE_FIT``):
    unless ``--tile 0``, for fields evaluated point by point (NeRV's clips keep a whole field's defaults)."""
    cls = FIELDS.get(field.name)
    return not tiles.whole and (cls is None or issubclass(cls, Pointwise) and not getattr(cls, "whole_signal", False))


def _ships_init(files: Sequence[Path]) -> bool:
    """Whether nfit ships an initialisation for the modality of these files."""
    try:
        return bool(files) and default_init_path(modality_for(files[0]).name) is not None
    except NfitError:
        return False  # an unreadable name: the fit itself reports it


def fit_paths(
    inputs: Sequence[str | Path],
    *,
    output: str | Path | None = None,
    out_dir: str | Path | None = None,
    field: FieldOptions | None = None,
    options: SignalOptions | None = None,
    store: StoreConfig | None = None,
    skip_existing: bool = False,
    force: bool = False,
    context_maps: str | Path | None = None,
    progress: ProgressFactory | None = None,
    on_plan: Callable[[list[Path]], None] | None = None,
    on_outcome: Callable[[FileOutcome], None] | None = None,
    **settings: Any,
) -> list[FileOutcome]:
    """``nfit fit``: files or folders into .nf files, with every rule the command line has.

    ``settings`` are those of :func:`fit_plan` (init, density, steps, lr, optimizer, rescale,
    gamma, seed, target_psnr, batch_size, device). Several inputs, or a folder, keep going
    past a file that fails (its outcome says why); one input raises. ``on_plan(files)`` is
    called once the inputs are known; ``context_maps`` draws GradNCP's selected context
    (re-scaled SGD from an initialisation only) into that folder first.
    """
    options = options or SignalOptions()
    store = store or StoreConfig()
    files, outputs = plan_fit(inputs, output, out_dir, options.modality)
    if latents_for_budget(files, field, store, options, settings):
        field = FieldOptions(name=LatentGrid.name)
    plan = fit_plan(files, field=field, **settings)
    if context_maps is not None:
        if plan.init is None or plan.adapt.optimizer != "sgd" or not plan.adapt.rescale:
            raise ConfigError("--save-context-maps", "draws the context of re-scaled SGD from an initialisation")
        save_context_maps(files, context_maps, plan.init, plan.adapt)
    if on_plan is not None:
        on_plan(files)
    many = len(inputs) > 1 or any(Path(p).is_dir() for p in inputs)
    return fit_files(files, outputs, plan.config, field, progress, init=plan.init, adapt=plan.adapt, store=store,
                     tiles=plan.tiles, keep_going=many, skip_existing=skip_existing, on_outcome=on_outcome, options=options, force=force)


def latents_for_budget(files: Sequence[Path], field: FieldOptions | None, store: StoreConfig,
                       options: SignalOptions, settings: dict[str, Any]) -> bool:
    """Whether ``nfit fit`` given a size budget, and no field, initialisation or tiling, fits latent grids
    rather than its default tiles: when every file is an image or a recording whose budget is under
    LATENT_BUDGET_BPP bits per pixel or sample (there a latent grid makes the better file, by far at low
    rates) and whose grid fits in memory (:func:`_latent_capacity`; larger ones stay tiles,
    with a warning)."""
    tiles = settings.get("tiles") or TileConfig()
    budget = store.max_bytes is not None or store.bpp is not None
    chosen = (settings.get("init") is not None or (field is not None and field != FieldOptions())
              or (tiles.tile, tiles.frames, tiles.overlap) != (None, None, None) or options.res is not None)
    if not budget or chosen or not files:
        return False
    free = available_bytes(resolve_device(settings.get("device", FitConfig.device)))
    for f in files:
        try:
            modality = modality_for(f, options.modality).name
        except NfitError:
            return False  # not a media file: the fit itself reports it
        size = _header_samples(f, modality, options)
        if size is None:
            return False
        (samples, channels), per = size, "pixel" if modality == "image" else "sample"
        if 8 * store.budget(samples) >= LATENT_BUDGET_BPP * samples:
            return False
        need = _latent_need(samples, channels)
        if _latent_capacity(need, free) < 1:  # tiles, then: said, as they code low rates poorly
            warnings.warn(NfitWarning(
                f"{f}: a latent grid, the better file under {LATENT_BUDGET_BPP:g} bits per {per}, would need about "
                f"{need / 2**30:.1f} GiB to fit ({free / 2**30:.1f} GiB free): fitting tiles, whose files are poor at "
                "low rates (a shorter or smaller copy would fit a latent grid)"), stacklevel=3)
            return False
    return True


def _header_samples(path: Path, modality: str, options: SignalOptions) -> tuple[int, int] | None:
    """(samples, channels) of an image (pixels, 3 at most) or audio file as it will be read, from its header
    alone; None for other modalities or when the header does not tell."""
    if modality == "image":
        size = header_size(path)
        return None if size is None else (math.prod(size), 3)
    if modality == "audio" and (info := header_length(path)) is not None:
        frames, rate, channels = info
        out = options.sample_rate or rate  # resampled (and cropped or padded) as the reader will
        return (round(options.duration * out) if options.duration else round(frames * out / rate)), channels
    return None


def save_context_maps(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    init: MetaInit | str = DEFAULT,
    adapt: AdaptConfig | None = None,
) -> list[Path]:
    """GradNCP's selected context at each test-time step of fitting each input from ``init``
    (a learned initialisation, or "default"), drawn as PNGs and an animated GIF in ``out_dir``."""
    adapt = adapt or AdaptConfig()
    device = resolve_device(adapt.device)
    written = []
    for path in inputs:
        signal = read_signal(path)
        if signal.modality != "image":
            raise ConfigError(path, "context maps are drawn for images only")
        meta = default_init(signal.modality, signal.channels) if init == DEFAULT else init
        if meta is None:
            raise ConfigError(path, f"nfit ships no initialisation for {signal.modality}: give --init")
        if meta.tiling is not None:
            raise ConfigError("--save-context-maps", "draws the context of a whole-signal initialisation, "
                              "not of a tile one")
        _check_init_fits(meta, signal)
        targets = torch.from_numpy(signal.values.reshape(1, -1, signal.channels)).to(device)
        maps = selected_context(meta.field, meta.params, targets, signal.shape, adapt)  # [K, 1, N]
        written += write_context_maps(Path(out_dir), Path(path).stem, context_frames(signal.values, maps[:, 0]))
    return written


def load(path: str | Path, init: str | Path | MetaInit | None = None) -> NeuralField:
    """Read and validate a .nf file. A sparse field stored without its mask, and a field coded as
    its difference from an initialisation, need ``init``: the initialisation it was fitted from, or
    a run directory holding it (found by SHA-256); one that nfit ships is found by itself."""
    if init is None:
        init = _shipped_for(Path(path))
    if init is None or isinstance(init, MetaInit):
        return load_field(path, init)
    nf, _ = read_field_header(path)
    sha = nf.init.get("sha256")
    return load_field(path, find_init(init, sha) if sha else load_init(init))


def _shipped_for(path: Path) -> MetaInit | None:
    """The shipped initialisation a .nf file names (as adapted to its channels), or None; read from
    its metadata alone (the loader reports whatever is wrong with the file)."""
    try:
        meta = json.loads(read_metadata(path))
        modality, channels, sha = meta["modality"], meta["signal"]["channels"], meta["init"]["sha256"]
        shipped = shipped_init(modality)  # None where nfit ships none
    except Exception:  # unreadable or malformed: nothing to look up
        return None
    found = sha is not None and shipped is not None and shipped.sha256 == sha
    return default_init(modality, channels) if found else None


def save(nf: NeuralField, path: str | Path) -> Path:
    """Write a .nf file atomically."""
    return save_field(nf, path)


def render(
    nf: NeuralField | str | Path,
    *,
    res: int | None = None,
    width: int | None = None,
    height: int | None = None,
    sample_rate: int | None = None,
    fps: float | None = None,
    device: str = "cpu",
    init: str | Path | MetaInit | None = None,
) -> torch.Tensor:
    """Decode a field on a grid: native, or images and video frames with longest side ``res``
    or ``width`` x ``height``, audio at ``sample_rate``, video at ``fps`` (the same duration):
    float values [*shape, C] in [0, 1]. ``init``: see :func:`load`."""
    nf = nf if isinstance(nf, NeuralField) else load(nf, init)
    cfg = RenderConfig(res=res, width=width, height=height, sample_rate=sample_rate, fps=fps)
    shape, _ = MODALITIES[nf.modality].target_shape(nf.shape, nf.rate, cfg)
    return render_values(nf, shape, device=device)


def info(nf: NeuralField | str | Path) -> dict[str, Any]:
    """What a .nf (or init) file holds, as plain JSON-ready data. Needs no initialisation,
    even for a sparse field: sizes come from the file itself."""
    path = None if isinstance(nf, NeuralField) else Path(nf)
    if path is not None and (path.is_dir() or read_format(path) == INIT_FORMAT):
        init = load_init(path)
        data = {"file": str(path), "kind": "init", **init.metadata(), "parameters": count_params(init.field),
                "sha256": init.sha256}
        if path.is_dir() and (path / RUN_FILE).is_file():
            data["run"] = summarize_run(path)  # a run directory: how far it got, as well as its result
        if init.mask is not None:
            data["sparsity"] = {**init.sparsity, "values": init.n_values,
                                # the dense MLP with as many values; a NeRV has no one width to narrow
                                "dense_narrow_width": narrow_width(init.field.base, init.n_values)
                                if hasattr(init.field.config, "width") else None}
        return data
    if isinstance(nf, NeuralField):
        version, storage, writer = nf.metadata()["format_version"], nf.storage(), nf.metadata()["nfit_version"]
    else:
        nf, header = read_field_header(path)
        version, storage, writer = header["format_version"], header["storage"], header["nfit_version"]
    samples = int(np.prod(nf.shape))
    nbytes = path.stat().st_size if path is not None else None
    sparse = storage["sparse"]
    return {
        "file": None if path is None else str(path),
        "kind": "field",
        "format_version": version,
        "nfit_version": writer,  # the nfit that wrote the file (None: older than 0.1.0's metadata)
        "modality": nf.modality,
        "shape": list(nf.shape),
        "channels": nf.channels,
        "rate": nf.rate,
        "duration": None if nf.rate is None else round(nf.shape[0] / nf.rate, 6),
        "bit_depth": nf.bit_depth,
        "source": nf.source,
        "source_bytes": nf.source_bytes,
        # the samples as the source holds them, uncompressed: the size to beat
        "raw_bytes": samples * nf.channels * max(1, nf.bit_depth // 8),
        "field": {"name": nf.field_name, "config": field_config_dict(nf.field)},
        "tiling": None if nf.tiling is None else {**nf.tiling.to_json(), "grid": list(nf.tiling.grid(nf.shape)),
                                                  "count": nf.tiles},
        "parameters": nf.n_params,
        "values": sparse["values"] if sparse else nf.n_params,
        "density": sparse["density"] if sparse else 1.0,
        "dtype": storage["dtype"],
        # coder, bits, what the integers are relative to, and (read from a file) the payload's bytes
        "coding": None if storage["coding"] is None else {
            **{k: v for k, v in storage["coding"].items() if k != "tensors"},
            "latents": _latent_model(storage["coding"])},
        "mask": None if not sparse else sparse["mask"],
        "bytes": nbytes,
        "bits_per_sample": None if nbytes is None else round(nbytes * 8 / samples, 4),
        "coords": nf.coords,
        "init": nf.init,
        "fit": nf.summary,
    }


def _latent_model(coding: dict[str, Any]) -> str | None:
    """How a coded file's latents are modelled: "arm" (an autoregressive model of their decoded neighbours,
    format 6), "contexts" (a table of scales by their neighbours' magnitudes, format 5), or None."""
    scales = [entry[2] for entry in coding.get("tensors", [])]
    return "arm" if ARM in scales else "contexts" if any(isinstance(s, list) for s in scales) else None


def meta_train(
    data: str | Path | None,
    run: str | Path | None = None,
    *,
    resume: bool | str | Path = False,
    steps: int | None = None,
    train: TrainConfig | None = None,
    data_config: DataConfig | None = None,
    field_options: FieldOptions | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Learn an initialisation over a folder into the run directory ``run``; see :func:`nfit.train.meta_train`
    for ``algo_options``, ``val_dir``, ``init_from``, ``nan_policy``, ``on_event`` and ``force``.

    ``resume``: True continues ``run``; a path continues that run (``run`` then may only repeat it),
    with ``steps`` as its new target. ``steps`` overrides ``train.steps``. ``--algo sparse`` takes its
    field, grid and length from the dense run, so giving them is an error.
    """
    if resume is not False and resume is not None:
        path = Path(run) if resume is True else Path(resume)
        if resume is not True and run is not None and Path(run) != path:
            raise ConfigError(None, "--resume RUN continues RUN: drop -o")
        target = train if train is not None else (None if steps is None else TrainConfig(steps=steps))
        return _meta_train(data, path, target, resume=True, **kwargs)
    if run is None:
        raise ConfigError(None, "give the run directory with -o RUN")
    train, data_config, field_options = train or TrainConfig(), data_config or DataConfig(), field_options or FieldOptions()
    _check_shared_field(field_options)
    if train.algo == "sparse":
        given = [n for n, v in (("--steps", steps), ("--res", data_config.res), ("--channels", data_config.channels),
                                ("--width", field_options.width), ("--depth", field_options.depth),
                                ("--w0", field_options.w0), ("--field-config", field_options.extra)) if v is not None]
        if given or field_options.name != FieldOptions.name:
            raise ConfigError(given[0] if given else "--field", "--algo sparse takes this from the dense run "
                              "(--from); the length is --rounds x --steps-per-round")
    if steps is not None:
        train = dataclasses.replace(train, steps=steps)
    return _meta_train(data, run, train, data_config, field_options, **kwargs)


def evaluate(init: str | Path, data: str | Path, **kwargs) -> EvalReport:
    """PSNR/SSIM after 0..K steps from an initialisation over a folder: see :func:`nfit.evaluation.evaluate_folder`."""
    return evaluate_folder(init, data, **kwargs)


def compare(
    inits: Sequence[str | Path],
    data: str | Path,
    *,
    field_options: FieldOptions | None = None,
    density: float | None = None,
    on_start: Callable[[str], Callable[[int], None]] | None = None,
    **kwargs: Any,
) -> list[EvalReport]:
    """``nfit eval``: :func:`evaluate` for each of ``inits`` ("random" is the baseline) on the same files.

    ``field_options`` set the random baseline's field, so they need "random" among ``inits``;
    ``density`` picks a level of each sparse run among them (dense ones are taken whole).
    ``on_start(init)`` returns the ``on_batch`` callback of that initialisation's evaluation.
    """
    field_options = field_options or FieldOptions()
    _check_shared_field(field_options)
    if all(str(i) != "random" for i in inits) and field_options != FieldOptions():
        raise ConfigError(None, "--field/--width/--depth/--w0 apply to the random baseline only")
    dcfg = kwargs.pop("data_config", None) or DataConfig()
    if dcfg.tile is None and any(str(i) == "random" for i in inits):  # beside a tile init: random tiles of its size
        tiled = [m for m in (load_init(i) for i in inits if str(i) != "random" and not _is_sparse_run(i))
                 if m.tiling is not None]
        if tiled:
            t = tiled[0].tiling
            dcfg = dataclasses.replace(dcfg, tile=t.tile[-1], tile_frames=t.tile[0] if len(t.tile) == 3 else None,
                                       overlap=t.overlap[-1])
    reports = []
    for init in inits:
        on_batch = on_start(str(init)) if on_start is not None else None
        reports.append(evaluate_folder(init, data, field_options=field_options, on_batch=on_batch, data_config=dcfg,
                                       density=density if _is_sparse_run(init) else None, **kwargs))
    return reports


def _is_sparse_run(init: str | Path) -> bool:
    return str(init) != "random" and Path(init).is_dir() and bool(level_files(Path(init)))


def render_file(
    file: str | Path,
    output: str | Path | None = None,
    config: RenderConfig | None = None,
    *,
    init: str | Path | None = None,
    force: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, tuple[int, ...], str]:
    """``nfit render``: decode a .nf file into ``output`` (default: ``FILE_render.png`` / ``.wav`` / ``.mp4``
    beside it), never over the .nf or its initialisation, nor over a file nfit did not write unless
    ``force``. Returns the path, the grid rendered and the modality."""
    file = Path(file)
    nf = load(file, init)
    target = Path(output) if output is not None else default_output(file, nf.modality)
    protect = [file] + ([Path(init)] if init is not None and Path(init).is_file() else [])
    path, shape = render_to_file(nf, target, config or RenderConfig(), protect=protect, force=force,
                                 on_progress=on_progress)
    return path, shape, nf.modality


__all__ = ["FileOutcome", "FitPlan", "adapt_config", "compare", "evaluate", "fit", "fit_files", "fit_paths", "fit_plan",
           "fit_signals", "info", "load", "meta_train", "plan_fit", "reading_options", "render", "render_file",
           "render_to_file", "save"]
