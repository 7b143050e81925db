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
from nfit.render import evaluate_chunks
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
    params: Params  # batched [B, ...], detached: each signal's best parameters
    steps: list[int]  # optimisation steps that led to each signal's kept parameters
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

    targets: [B, prod(shape), C] on the device to compute on. Each signal keeps the
    parameters with its best PSNR seen (Adam on SIRENs has occasional loss spikes,
    and the last iterate can land in one); a signal that reaches
    ``config.target_psnr`` is frozen at the parameters that reached it.
    """
    device = targets.device
    batch = targets.shape[0]
    coords = grid_coords(shape, device=device)  # [N, d]
    params = {k: v.to(device).requires_grad_(True) for k, v in batch_params(init, batch).items()}
    opt = torch.optim.Adam(params.values(), lr=config.lr)
    kept = {k: v.detach().clone() for k, v in params.items()}
    best = torch.full((batch,), -float("inf"), device=device)
    best_step = torch.zeros(batch, dtype=torch.long, device=device)
    frozen = torch.zeros(batch, dtype=torch.bool, device=device)

    def keep_best(psnr: Tensor, step: int) -> None:
        better = (psnr > best) & ~frozen
        if better.any():
            for k, v in params.items():
                kept[k][better] = v.detach()[better]
            best[better] = psnr[better]
            best_step[better] = step

    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        opt.zero_grad(set_to_none=True)
        mse, mse_clamped = mse_and_grad(field, params, coords, targets, config.chunk)
        psnr = psnr_from_mse(mse_clamped)  # [B], of the parameters before this update
        keep_best(psnr, step - 1)
        if config.target_psnr is not None:
            frozen |= psnr >= config.target_psnr
        if on_step is not None:
            on_step(StepInfo(step, config.steps, mse.mean().item(), psnr.mean().item(), int(frozen.sum())))
        if frozen.all():
            break
        opt.step()
    else:  # the last update has not been measured yet
        sse = torch.zeros(batch, device=device)
        for lo, hi, values in evaluate_chunks(field, params, shape, chunk=max(1, config.chunk // batch)):
            sse += (values - targets[:, lo:hi]).pow(2).sum(dim=(1, 2))
        keep_best(psnr_from_mse(sse / targets[0].numel()), config.steps)
    return FitResult(kept, best_step.tolist(), time.perf_counter() - start)


def random_init(field: Field, seed: int) -> Params:
    """The initialisation every signal starts from, for a given seed (drawn on the CPU)."""
    return field.init_params(torch.Generator().manual_seed(seed))


def split_batches(n: int, batch_size: int) -> list[range]:
    return [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


__all__ = ["FitResult", "StepInfo", "fit_adam", "mse_and_grad", "random_init", "split_batches"]
