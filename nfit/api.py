"""The Python API: the same jobs as the CLI, as functions.

    import nfit
    nf = nfit.fit("photo.png", steps=300)          # a NeuralField
    nf.save("photo.nf")
    big = nfit.render("photo.nf", res=1024)          # float tensor [H, W, C] in [0, 1]
    nfit.render_to_file(nf, "big.png", res=1024)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfit import metrics
from nfit.atomic import check_writable
from nfit.config import FieldOptions, FitConfig
from nfit.device import resolve_device
from nfit.errors import ConfigError
from nfit.fieldfile import NeuralField, load_field, save_field
from nfit.fields import build_field, field_config_dict, unbatch_params
from nfit.fit import StepInfo, fit_adam, random_init, split_batches
from nfit.render import evaluate, render_to_file, render_values
from nfit.signals import Signal, read_signal

ProgressFactory = Callable[[str, int], Callable[[StepInfo], None]]
"""Called once per batch with a label and its number of steps; returns the per-step callback."""


def _field_config(opts: FieldOptions, signal: Signal) -> dict[str, Any]:
    return opts.field_config(len(signal.shape), signal.channels)


def fit_signals(
    signals: Sequence[Signal],
    config: FitConfig | None = None,
    field: FieldOptions | None = None,
    progress: ProgressFactory | None = None,
) -> list[NeuralField]:
    """Fit one field per signal. Signals of equal grid and channels are fitted in batches."""
    config = config or FitConfig()
    field = field or FieldOptions()
    device = resolve_device(config.device)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(signals):
        groups[(s.modality, s.shape, s.channels)].append(i)
    fitted: list[NeuralField | None] = [None] * len(signals)
    for (modality, shape, channels), members in groups.items():
        field_config = _field_config(field, signals[members[0]])
        net = build_field(field.name, field_config)
        init = random_init(net, config.seed)
        for part in split_batches(len(members), config.batch_size):
            idx = [members[j] for j in part]
            label = signals[idx[0]].source.name if len(idx) == 1 else f"{len(idx)} x {'x'.join(map(str, shape))}"
            targets = torch.from_numpy(np.stack([signals[i].values.reshape(-1, channels) for i in idx])).to(device)
            result = fit_adam(net, init, targets, shape, config, progress(label, config.steps) if progress else None)
            values = evaluate(net, result.params, shape)  # [B, N, C], clamped
            psnr = metrics.psnr(values, targets).tolist()
            ssim = metrics.ssim(values.view(len(idx), *shape, channels), targets.view(len(idx), *shape, channels))
            ssim = ssim.tolist() if ssim is not None and len(shape) == 2 else [None] * len(idx)
            for b, i in enumerate(idx):
                fitted[i] = NeuralField(
                    field_name=field.name,
                    field_config=field_config,
                    params={k: v.cpu() for k, v in unbatch_params(result.params, b).items()},
                    modality=modality,
                    shape=shape,
                    channels=channels,
                    bit_depth=signals[i].bit_depth,
                    source=signals[i].source.name,
                    summary={
                        "method": "adam",
                        "steps": result.steps[b],
                        "lr": config.lr,
                        "seed": config.seed,
                        "target_psnr": config.target_psnr,
                        "psnr": round(psnr[b], 4),
                        "ssim": None if ssim[b] is None else round(ssim[b], 5),
                        "seconds": round(result.seconds, 3),
                        "batch": len(idx),
                        "device": device.type,
                    },
                    init={"name": "random", "seed": config.seed, "sha256": None},
                )
    return fitted  # type: ignore[return-value]


def fit(
    inputs: str | Path | Signal | Sequence[str | Path | Signal],
    *,
    field: str = FieldOptions.name,
    width: int | None = None,
    depth: int | None = None,
    w0: float | None = None,
    progress: ProgressFactory | None = None,
    **fit_options: Any,
) -> NeuralField | list[NeuralField]:
    """Fit one file (returns a NeuralField) or several (returns a list).

    ``fit_options`` are the fields of :class:`nfit.config.FitConfig` (steps, lr, seed,
    target_psnr, batch_size, device, ...).
    """
    single = isinstance(inputs, (str, Path, Signal))
    items = [inputs] if single else list(inputs)
    signals = [x if isinstance(x, Signal) else read_signal(x) for x in items]
    result = fit_signals(signals, FitConfig(**fit_options), FieldOptions(field, width, depth, w0), progress)
    return result[0] if single else result


def fit_files(
    inputs: Sequence[str | Path],
    outputs: Sequence[str | Path],
    config: FitConfig | None = None,
    field: FieldOptions | None = None,
    progress: ProgressFactory | None = None,
) -> list[tuple[Path, NeuralField]]:
    """Fit ``inputs[i]`` into ``outputs[i]``. Every input is read and every output checked first,
    so a bad file fails the run before any work and before any file is written."""
    if len(inputs) != len(outputs):
        raise ConfigError(None, "need one output per input")
    outputs = [Path(o) for o in outputs]
    dupes = {o for o in outputs if outputs.count(o) > 1}
    if dupes:
        raise ConfigError(None, f"two inputs would write the same output {sorted(map(str, dupes))[0]}")
    for out in outputs:
        check_writable(out)
    signals = [read_signal(p) for p in inputs]
    fitted = fit_signals(signals, config, field, progress)
    for out, nf in zip(outputs, fitted):
        save_field(nf, out)
    return list(zip(outputs, fitted))


def load(path: str | Path) -> NeuralField:
    """Read and validate a .nf file."""
    return load_field(path)


def save(nf: NeuralField, path: str | Path) -> Path:
    """Write a .nf file atomically."""
    return save_field(nf, path)


def render(
    nf: NeuralField | str | Path,
    *,
    res: int | None = None,
    width: int | None = None,
    height: int | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Decode a field at its native size, longest side ``res``, or ``width`` x ``height``: [*shape, C]."""
    from nfit.signals import MODALITIES

    nf = nf if isinstance(nf, NeuralField) else load_field(nf)
    shape = MODALITIES[nf.modality].target_shape(nf.shape, res=res, width=width, height=height)
    return render_values(nf, shape, device=device)


def info(nf: NeuralField | str | Path) -> dict[str, Any]:
    """What a .nf file holds, as plain JSON-ready data."""
    path = None if isinstance(nf, NeuralField) else Path(nf)
    nf = nf if isinstance(nf, NeuralField) else load_field(nf)
    samples = int(np.prod(nf.shape))
    nbytes = path.stat().st_size if path is not None else None
    return {
        "file": None if path is None else str(path),
        "format_version": nf.metadata()["format_version"],
        "modality": nf.modality,
        "shape": list(nf.shape),
        "channels": nf.channels,
        "bit_depth": nf.bit_depth,
        "source": nf.source,
        "field": {"name": nf.field_name, "config": field_config_dict(nf.field)},
        "parameters": nf.n_params,
        "bytes": nbytes,
        "bits_per_sample": None if nbytes is None else round(nbytes * 8 / samples, 4),
        "coords": nf.coords,
        "init": nf.init,
        "fit": nf.summary,
    }


__all__ = ["fit", "fit_files", "fit_signals", "info", "load", "render", "render_to_file", "save"]
