"""The Python API: the same jobs as the CLI, as functions.

    import nfit
    nf = nfit.fit("photo.png", steps=300)          # a NeuralField
    nf.save("photo.nf")
    big = nfit.render("photo.nf", res=1024)          # float tensor [H, W, C] in [0, 1]
    nfit.render_to_file(nf, "big.png", res=1024)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfit import metrics
from nfit.atomic import guard_output
from nfit.config import INIT_SIZE_TOLERANCE, AdaptConfig, FieldOptions, FitConfig, RenderConfig, SignalOptions, StoreConfig
from nfit.device import flush_denormals, resolve_device
from nfit.errors import ConfigError, NfitError, NfitWarning, OutputError
from nfit.evaluation import EvalReport, evaluate_folder
from nfit.fieldfile import (
    INIT_FORMAT,
    MetaInit,
    NeuralField,
    is_field_file,
    load_field,
    read_field_header,
    read_format,
    save_field,
)
from nfit.fields import build_field, count_params, field_config, field_config_dict, unbatch_params
from nfit.fit import StepInfo, fit_adam, fit_sgd, random_init, split_batches
from nfit.inits import DEFAULT, default_init, trained_channels
from nfit.runs import find_init, load_init
from nfit.render import evaluate as evaluate_grid
from nfit.render import render_to_file, render_values
from nfit.signals import Signal, read_signal

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
) -> list[NeuralField]:
    """Fit one field per signal. Signals of equal grid and channels are fitted in batches.

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
    if store.standalone and (init is None or default or init.mask is None):
        raise ConfigError("--standalone", "applies to fields fitted from a sparse initialisation (they alone have a mask)")
    device = resolve_device(adapt.device if init is not None else config.device)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(signals):
        if init is not None and not default:
            _check_init_fits(init, s)
        groups[(s.modality, s.shape, s.channels)].append(i)
    fitted: list[NeuralField | None] = [None] * len(signals)
    given = init
    for (modality, shape, channels), members in groups.items():
        init = default_init(modality, channels) if default else given
        if init is None:
            field_name, config_dict = field.name, field_config(field, modality, shape, channels)
            net = build_field(field_name, config_dict)
            start, batch_size = random_init(net, config.seed), config.batch_size
            init_meta = {"name": "random", "seed": config.seed, "sha256": None}
        else:
            field_name, config_dict, net, start = init.field_name, init.field_config, init.field, init.params
            batch_size = adapt.batch_size
            _warn_init_size(init, modality, shape)
            init_meta = {"name": f"default:{modality}" if default else "meta", "algo": init.algo.get("name"),
                         "sha256": init.sha256}
            if default and channels != trained_channels(modality):
                init_meta["channels_adapted"] = channels
            if init.sparsity is not None:
                init_meta["density"] = init.sparsity.get("density")
        for part in split_batches(len(members), batch_size):
            idx = [members[j] for j in part]
            label = signals[idx[0]].source.name if len(idx) == 1 else f"{len(idx)} x {'x'.join(map(str, shape))}"
            grid = torch.from_numpy(np.stack([signals[i].values for i in idx])).to(device)  # [B, *shape, C]
            params, method, seconds = _fit_batch(net, start, net.to_units(grid), shape, config, adapt,
                                                 init is not None, lambda n: progress(label, n) if progress else None)
            if store.dtype != "float32":
                params = {k: v.to(getattr(torch, store.dtype)).float() for k, v in params.items()}
            values = evaluate_grid(net, params, shape).view(grid.shape)  # clamped
            psnr = metrics.psnr(values, grid).tolist()
            ssim = metrics.signal_ssim(values, grid)
            ssim = ssim.tolist() if ssim is not None else [None] * len(idx)
            for b, i in enumerate(idx):
                fitted[i] = NeuralField(
                    field_name=field_name,
                    field_config=config_dict,
                    params={k: v.cpu() for k, v in unbatch_params(params, b).items()},
                    modality=modality,
                    shape=shape,
                    channels=channels,
                    bit_depth=signals[i].bit_depth,
                    source=signals[i].source.name,
                    source_bytes=_file_size(signals[i].source),
                    rate=signals[i].rate,
                    summary={
                        **method[b],
                        "psnr": round(psnr[b], 4),
                        "ssim": None if ssim[b] is None else round(ssim[b], 5),
                        "seconds": round(seconds, 3),
                        "batch": len(idx),
                        "device": device.type,
                    },
                    init=init_meta,
                    dtype=store.dtype,
                    mask=None if init is None else init.mask,
                    standalone=store.standalone,
                )
    return fitted  # type: ignore[return-value]


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


def _fit_batch(net, start, targets, shape, config: FitConfig, adapt: AdaptConfig, learned: bool, progress):
    """One batch: (batched params, per-signal method summary, seconds)."""
    batch = targets.shape[0]
    if learned and adapt.optimizer == "sgd":
        result = fit_sgd(net, start, targets, shape, adapt, progress(adapt.steps))
        method = {"method": "sgd-rescaled" if adapt.rescale else "sgd", "steps": adapt.steps, "lr": adapt.lr}
        if adapt.rescale:
            method["gamma"] = adapt.gamma
        if config.target_psnr is None or bool((result.psnr[-1] >= config.target_psnr).all()):
            return result.params, [method] * batch, result.seconds
        # Refine with Adam up to the target: signals already there are frozen at once.
        refine = dataclasses.replace(config, lr=adapt.adam_lr, chunk=adapt.chunk)
        more = fit_adam(net, result.params, targets, shape, refine, progress(refine.steps), batched=True)
        methods = [{**method, "method": method["method"] + "+adam", "steps": adapt.steps + s, "adam_steps": s,
                    "adam_lr": refine.lr, "target_psnr": config.target_psnr} for s in more.steps]
        return more.params, methods, result.seconds + more.seconds
    if learned:  # Adam from the learned initialisation
        config = dataclasses.replace(config, steps=adapt.adam_steps, lr=adapt.adam_lr, chunk=adapt.chunk)
    result = fit_adam(net, start, targets, shape, config, progress(config.steps))
    methods = [{"method": "adam", "steps": s, "lr": config.lr, "seed": config.seed, "target_psnr": config.target_psnr}
               for s in result.steps]
    return result.params, methods, result.seconds


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
    dtype: str = StoreConfig.dtype,
    standalone: bool = StoreConfig.standalone,
    options: SignalOptions | None = None,
    **fit_options: Any,
) -> NeuralField | list[NeuralField]:
    """Fit one file (returns a NeuralField) or several (returns a list).

    ``field_config`` sets any other option of the field, e.g. NeRV's ``{"strides": [2, 2]}``.
    ``fit_options`` are the fields of :class:`nfit.config.FitConfig` (steps, lr, seed,
    target_psnr, batch_size, device, ...), or with ``init`` (an init file from
    ``nfit meta-train``, or "default" for the one nfit ships) those of
    :class:`nfit.config.AdaptConfig`, plus ``target_psnr`` and ``refine_steps`` (Adam
    refinement after the SGD steps). ``density`` picks the level of a sparse run
    directory given as ``init``. ``options`` say how files are read (modality, audio
    sample rate and duration, video frames, stride and size).
    """
    single = isinstance(inputs, (str, Path, Signal))
    items = [inputs] if single else list(inputs)
    meta = None
    if init is not None:
        meta = init if isinstance(init, MetaInit) or init == DEFAULT else load_init(init, density)
    opts = reading_options(options, meta)
    signals = [x if isinstance(x, Signal) else read_signal(x, opts) for x in items]
    store = StoreConfig(dtype, standalone)
    if meta is not None:
        refine = FitConfig(steps=fit_options.pop("refine_steps", FitConfig.steps),
                           target_psnr=fit_options.pop("target_psnr", None))
        result = fit_signals(signals, refine, progress=progress, init=meta, adapt=AdaptConfig(**fit_options), store=store)
    else:
        if density is not None:
            raise ConfigError("--density", "applies to fitting from a sparse run (--init RUN)")
        result = fit_signals(signals, FitConfig(**fit_options), FieldOptions(field, width, depth, w0, field_config), progress,
                             store=store)
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
    seen: set[Path] = set()
    for out in outputs:
        if out in seen:
            raise ConfigError(None, f"two inputs would write the same output {out}")
        seen.add(out)
        if out.suffix.lower() != ".nf":
            raise OutputError(out, "a fitted field is written as a .nf file: give an output name ending in .nf")
        if not (skip_existing and out.exists()):
            guard_output(out, inputs, ours=is_field_file, force=force)
    meta = init if init is None or init == DEFAULT or isinstance(init, MetaInit) else load_init(init)
    opts = reading_options(options, meta)
    config = config or FitConfig()
    batch_size = (adapt or AdaptConfig()).batch_size if meta is not None else config.batch_size
    outcomes: list[FileOutcome | None] = [None] * len(inputs)

    def done(i: int, outcome: FileOutcome) -> None:
        outcomes[i] = outcome
        if on_outcome is not None:
            on_outcome(outcome)

    def failed(i: int, error: NfitError) -> None:
        if not keep_going:
            raise error
        done(i, FileOutcome(inputs[i], outputs[i], "failed", error))

    # Decoded signals waiting for a batch, by (modality, grid, channels). At most
    # batch_size of them are held at once: past that the biggest group is fitted
    # as it is, so a folder of all-different shapes still runs in bounded memory.
    pending: dict[tuple, list[tuple[int, Signal]]] = defaultdict(list)

    def flush(key: tuple) -> None:
        members = pending.pop(key)
        idx = [i for i, _ in members]
        try:
            fitted = fit_signals([sig for _, sig in members], config, field, progress, init=meta, adapt=adapt,
                                 store=store)
        except NfitError as err:
            for i in idx:
                failed(i, err)
            return
        except (torch.cuda.OutOfMemoryError, MemoryError):
            for i in idx:
                failed(i, NfitError(inputs[i], f"out of memory fitting a batch of {len(idx)} (try a smaller --batch-size)"))
            return
        del members  # the decoded signals: free before writing
        for i, nf in zip(idx, fitted):
            try:
                save_field(nf, outputs[i])
            except NfitError as err:
                failed(i, err)
                continue
            done(i, FileOutcome(inputs[i], outputs[i], "fitted", None, nf.summary, nf.shape,
                                outputs[i].stat().st_size))

    for i, (src, out) in enumerate(zip(inputs, outputs)):
        if skip_existing and out.exists():
            done(i, FileOutcome(src, out, "skipped"))
            continue
        try:
            signal = read_signal(src, opts)
            if isinstance(meta, MetaInit):
                _check_init_fits(meta, signal)
        except NfitError as err:
            failed(i, err)
            continue
        key = (signal.modality, signal.shape, signal.channels)
        pending[key].append((i, signal))
        del signal  # pending's reference is the only one, so flushing frees it
        if len(pending[key]) >= batch_size:
            flush(key)
        elif sum(map(len, pending.values())) >= batch_size:
            flush(max(pending, key=lambda k: len(pending[k])))
    while pending:
        flush(min(pending, key=lambda k: pending[k][0][0]))  # oldest first
    return outcomes  # type: ignore[return-value]


@flush_denormals()
def save_context_maps(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    init: MetaInit | str = DEFAULT,
    adapt: AdaptConfig | None = None,
) -> list[Path]:
    """GradNCP's selected context at each test-time step of fitting each input from ``init``
    (a learned initialisation, or "default"), drawn as PNGs and an animated GIF in ``out_dir``."""
    from nfit.viz import context_frames, selected_context, write_context_maps

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
        _check_init_fits(meta, signal)
        targets = torch.from_numpy(signal.values.reshape(1, -1, signal.channels)).to(device)
        maps = selected_context(meta.field, meta.params, targets, signal.shape, adapt)  # [K, 1, N]
        written += write_context_maps(Path(out_dir), Path(path).stem, context_frames(signal.values, maps[:, 0]))
    return written


def load(path: str | Path, init: str | Path | MetaInit | None = None) -> NeuralField:
    """Read and validate a .nf file. A sparse field stored without its mask needs ``init``:
    the initialisation it was fitted from, or a run directory holding it (found by SHA-256)."""
    if init is None or isinstance(init, MetaInit):
        return load_field(path, init)
    nf, _ = read_field_header(path)
    sha = nf.init.get("sha256")
    return load_field(path, find_init(init, sha) if sha else load_init(init))


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
    from nfit.signals import MODALITIES

    nf = nf if isinstance(nf, NeuralField) else load(nf, init)
    cfg = RenderConfig(res=res, width=width, height=height, sample_rate=sample_rate, fps=fps)
    shape, _ = MODALITIES[nf.modality].target_shape(nf.shape, nf.rate, cfg)
    return render_values(nf, shape, device=device)


def info(nf: NeuralField | str | Path) -> dict[str, Any]:
    """What a .nf (or init) file holds, as plain JSON-ready data. Needs no initialisation,
    even for a sparse field: sizes come from the file itself."""
    from nfit.fields.masked import narrow_width

    path = None if isinstance(nf, NeuralField) else Path(nf)
    if path is not None and (path.is_dir() or read_format(path) == INIT_FORMAT):
        init = load_init(path)
        data = {"file": str(path), "kind": "init", **init.metadata(), "parameters": count_params(init.field),
                "sha256": init.sha256}
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
        "parameters": nf.n_params,
        "values": sparse["values"] if sparse else nf.n_params,
        "density": sparse["density"] if sparse else 1.0,
        "dtype": storage["dtype"],
        "mask": None if not sparse else sparse["mask"],
        "bytes": nbytes,
        "bits_per_sample": None if nbytes is None else round(nbytes * 8 / samples, 4),
        "coords": nf.coords,
        "init": nf.init,
        "fit": nf.summary,
    }


def meta_train(data: str | Path | None, run: str | Path, **kwargs: Any):
    """Learn an initialisation over a folder: see :func:`nfit.train.meta_train` (``train=``,
    ``data_config=``, ``field_options=``, ``algo_options=``, ``val_dir=``, ``resume=``, ``on_event=``)."""
    from nfit.train import meta_train as _meta_train

    return _meta_train(data, run, **kwargs)


def evaluate(init: str | Path, data: str | Path, **kwargs) -> EvalReport:  # noqa: F811
    """PSNR/SSIM after 0..K steps from an initialisation over a folder: see :func:`nfit.evaluation.evaluate_folder`."""
    return evaluate_folder(init, data, **kwargs)


__all__ = ["FileOutcome", "evaluate", "fit", "fit_files", "fit_signals", "info", "load", "meta_train", "reading_options",
           "render", "render_to_file", "save"]
