"""Fitting one signal tile by tile (see :mod:`nfit.tiling`): its tiles are cut out a batch at a
time and fitted as signals of one small grid by the batched engine, from random or from a
tile initialisation, so memory holds one batch of tiles and time grows linearly with the size.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nfit.config import TILE_BATCH_SAMPLES, AdaptConfig, FitConfig
from nfit.device import release_cpu_memory
from nfit.fields import Field, Params
from nfit.fit import StepInfo, fit_batch, split_batches
from nfit.tiling import Tiling, extract

StepFactory = Callable[[int], Callable[[StepInfo], None] | None]
"""Called once per signal with the total number of steps; returns the per-step callback (or None)."""


@dataclass
class TiledFit:
    params: Params  # one set per tile [n_tiles, ...], CPU
    method: dict[str, Any]  # how it was fitted: method, steps, rates, tiles, what stopped it
    seconds: float
    stopped: str  # "steps", "target_psnr" or "seconds"


class _Bar:
    """One progress bar over every tile batch of a signal and every phase of each (SGD, then Adam):
    steps are counted on from one phase to the next, and each step says which tiles are at work."""

    def __init__(self, progress: StepFactory | None, total: int, tiles: int, bound: bool):
        self.on_step = progress(total) if progress is not None else None
        self.total, self.tiles, self.offset, self.last = total, tiles, 0, None
        self.bound = bound  # a target PSNR may end every batch before its last step

    def phases(self, part: range) -> Callable[[int], Callable[[StepInfo], None] | None]:
        def factory(steps: int):
            if self.on_step is None:
                return None
            base, self.offset = self.offset, self.offset + steps

            def on_step(info: StepInfo) -> None:
                self.last = dataclasses.replace(info, step=base + info.step, steps=self.total,
                                                tiles=(part.start, part.stop, self.tiles), bound=self.bound)
                self.on_step(self.last)
            return on_step
        return factory

    def finish(self) -> None:
        """Fill the bar: a target or a time budget may end the fit before its last step."""
        if self.on_step is not None and self.last is not None and self.last.step < self.total:
            self.on_step(dataclasses.replace(self.last, step=self.total, seconds_left=None))


def phase_steps(config: FitConfig, adapt: AdaptConfig, learned: bool) -> int:
    """The most steps one batch of tiles takes: SGD then Adam from an initialisation, or Adam."""
    if not learned:
        return config.steps
    return adapt.steps + config.steps if adapt.optimizer == "sgd" else adapt.adam_steps


def fit_tiles(
    field: Field, start: Params, values: Tensor, tiling: Tiling, config: FitConfig, adapt: AdaptConfig,
    learned: bool, *, device: torch.device, batch: int, progress: StepFactory | None = None,
) -> TiledFit:
    """Fit every tile of one signal ``values [*shape, C]`` (CPU) from the shared initialisation ``start``.

    Tiles are fitted ``batch`` at a time (fewer where that would hold over ``TILE_BATCH_SAMPLES``
    samples) with :func:`nfit.fit.fit_batch` (from a learned
    initialisation: its SGD steps, then Adam up to ``config.steps``). ``config.target_psnr``
    is the signal's: a batch stops when its tiles' mean MSE reaches it. ``config.seconds`` is
    shared out over the batches by their tile counts, each starting from what is left.
    """
    shape = tuple(values.shape[:-1])
    n = tiling.count(shape)
    parts = split_batches(n, max(1, min(batch, TILE_BATCH_SAMPLES // math.prod(tiling.tile))))
    out = {k: torch.empty(n, *s) for k, s in field.param_shapes().items()}
    bar = _Bar(progress, len(parts) * phase_steps(config, adapt, learned), n, config.target_psnr is not None)
    began = time.perf_counter()
    end = None if config.seconds is None else began + config.seconds
    stops, steps, method = [], [], {}
    for part in parts:
        targets = field.to_units(extract(values, tiling, part).to(device))  # [B, prod(tile), C]
        deadline = None if end is None else time.perf_counter() + (end - time.perf_counter()) * len(part) / (n - part.start)
        params, methods, _, stopped = fit_batch(field, start, targets, tiling.tile, config, adapt, learned,
                                                bar.phases(part), refine=True, deadline=deadline, pooled=True)
        for k, v in params.items():
            out[k][part.start:part.stop] = v.detach().cpu()
        del params, targets
        release_cpu_memory()  # the next batch's memory is laid out afresh: holes left kept would add up
        stops.append(stopped)
        steps.append(max(m["steps"] for m in methods))
        method = methods[0]
    bar.finish()
    stopped = "seconds" if "seconds" in stops else "target_psnr" if all(s == "target_psnr" for s in stops) else "steps"
    summary = {**{k: v for k, v in method.items() if k not in ("steps", "adam_steps")}, "steps": max(steps),
               "tiles": n, "tile_batches": len(parts), "stopped": stopped}
    return TiledFit(out, summary, time.perf_counter() - began, stopped)


__all__ = ["TiledFit", "fit_tiles", "phase_steps"]
