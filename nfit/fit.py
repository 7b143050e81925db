"""Fitting fields to signals: Adam from a random initialisation, B signals at once.

The loss of a batch is the *sum* of per-signal mean squared errors, so the
gradient with respect to the batched parameters is, slice by slice, each signal's
own gradient; Adam is element-wise, so every signal follows exactly the path it
would follow if fitted alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nfit.config import FitConfig
from nfit.fields import Field, Params, batch_params
from nfit.metrics import psnr_from_mse
from nfit.signals import grid_coords


@dataclass
class StepInfo:
    """What a progress display needs after each optimisation step."""

    step: int
    steps: int
    loss: float  # mean over the batch of the per-signal MSE
    psnr: float  # mean over the batch of the per-signal PSNR (clamped predictions)
    done: int  # signals that reached the target PSNR


@dataclass
class FitResult:
    params: Params  # batched [B, ...], detached
    steps: list[int]  # optimisation steps each signal took
    seconds: float


def mse_and_grad(
    field: Field, params: Params, coords: Tensor, targets: Tensor, chunk: int
) -> tuple[Tensor, Tensor]:
    """Backpropagate the summed per-signal MSE over the whole grid, in chunks of coordinates.

    coords [N, d], targets [B, N, C]. Gradients accumulate into ``params[*].grad``;
    returns the per-signal MSE [B] of the raw and of the clamped predictions.
    """
    batch, n, channels = targets.shape
    step = max(1, chunk // batch)
    sse = targets.new_zeros(batch)
    sse_clamped = targets.new_zeros(batch)
    for start in range(0, n, step):
        pred = field(params, coords[start : start + step])  # [B, n, C]
        err = pred - targets[:, start : start + step]
        per_signal = err.pow(2).sum(dim=(1, 2))  # [B]
        (per_signal.sum() / (n * channels)).backward()
        with torch.no_grad():
            sse += per_signal.detach()
            sse_clamped += (pred.detach().clamp(0.0, 1.0) - targets[:, start : start + step]).pow(2).sum(dim=(1, 2))
    return sse / (n * channels), sse_clamped / (n * channels)


def fit_adam(
    field: Field,
    init: Params,
    targets: Tensor,
    shape: tuple[int, ...],
    config: FitConfig,
    on_step: Callable[[StepInfo], None] | None = None,
) -> FitResult:
    """Fit B signals on one grid from a shared unbatched initialisation.

    targets: [B, prod(shape), C] on the device to compute on. A signal that reaches
    ``config.target_psnr`` is frozen at the parameters that reached it.
    """
    device = targets.device
    batch = targets.shape[0]
    coords = grid_coords(shape, device=device)  # [N, d]
    params = {k: v.to(device).requires_grad_(True) for k, v in batch_params(init, batch).items()}
    opt = torch.optim.Adam(params.values(), lr=config.lr)
    frozen = torch.zeros(batch, dtype=torch.bool, device=device)
    kept = {k: torch.zeros_like(v) for k, v in params.items()} if config.target_psnr is not None else None
    steps_taken = [config.steps] * batch
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        opt.zero_grad(set_to_none=True)
        mse, mse_clamped = mse_and_grad(field, params, coords, targets, config.chunk)
        psnr = psnr_from_mse(mse_clamped)  # [B], of the parameters before this update
        if kept is not None:
            newly = (psnr >= config.target_psnr) & ~frozen
            if newly.any():
                for k, v in params.items():
                    kept[k][newly] = v.detach()[newly]
                for i in newly.nonzero().flatten().tolist():
                    steps_taken[i] = step - 1
                frozen |= newly
        if on_step is not None:
            on_step(StepInfo(step, config.steps, mse.mean().item(), psnr.mean().item(), int(frozen.sum())))
        if frozen.all():
            break
        opt.step()
    result = {k: v.detach() for k, v in params.items()}
    if kept is not None and frozen.any():
        for k in result:
            result[k] = torch.where(frozen.view(-1, *[1] * (result[k].dim() - 1)), kept[k], result[k])
    return FitResult(result, steps_taken, time.perf_counter() - start)


def random_init(field: Field, seed: int) -> Params:
    """The initialisation every signal starts from, for a given seed (drawn on the CPU)."""
    return field.init_params(torch.Generator().manual_seed(seed))


def split_batches(n: int, batch_size: int) -> list[range]:
    return [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


__all__ = ["FitResult", "StepInfo", "fit_adam", "mse_and_grad", "random_init", "split_batches"]
