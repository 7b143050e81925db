"""Fitting fields to signals, B signals at once: Adam (from any initialisation) and
GradNCP's test-time SGD with gradient re-scaling (Algorithm 2, from a learned one).

The loss of a batch is the *sum* of per-signal mean squared errors, so the
gradient with respect to the batched parameters is, slice by slice, each signal's
own gradient; Adam is element-wise and the SGD step sizes are per signal, so every
signal follows exactly the path it would follow if fitted alone.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import torch
from torch import Tensor

from nfit.config import AdaptConfig, FitConfig
from nfit.fields import Field, Params, batch_params
from nfit.meta.inner import full_pass, gather_context, global_norm, sgd_step, top_context
from nfit.metrics import psnr_from_mse


@dataclass
class StepInfo:
    """What a progress display needs after each optimisation step."""

    step: int
    steps: int
    loss: float  # mean over the batch of the per-signal MSE
    psnr: float  # mean over the batch of the per-signal PSNR (clamped predictions)
    done: int  # signals that reached the target PSNR
    seconds_left: float | None = None  # until the wall-time budget runs out, when there is one
    tiles: tuple[int, int, int] | None = None  # tiled fits: the tiles at work (first, last + 1) of how many
    bound: bool = False  # ``steps`` is at most: a target PSNR may end the fit sooner


@dataclass
class FitResult:
    params: Params  # batched [B, ...], detached: each signal's best parameters
    steps: list[int]  # optimisation steps that led to each signal's kept parameters
    seconds: float
    psnr: list[Tensor] = dataclass_field(default_factory=list)  # PSNR [B] of each iterate 0..K (clamped predictions)
    stopped: str = "steps"  # what ended the fit: "steps", "target_psnr" or "seconds"


def fit_adam(
    field: Field,
    init: Params,
    targets: Tensor,
    shape: tuple[int, ...],
    config: FitConfig,
    on_step: Callable[[StepInfo], None] | None = None,
    observe: Callable[[int, Params], None] | None = None,
    *,
    batched: bool = False,
    deadline: float | None = None,
    pooled: bool = False,
) -> FitResult:
    """Fit B signals on one grid from a shared unbatched initialisation (or, with
    ``batched``, from one set of parameters per signal ``[B, ...]``).

    ``deadline`` (a ``time.perf_counter()`` value) stops the fit at the first step that
    ends after it. ``pooled``: the B signals are parts of one signal (tiles of equal size),
    so ``config.target_psnr`` is reached when the PSNR of their mean MSE is, and stops them
    all together.

    targets: [B, N, out_dim] (``field.to_units`` of the signals on grid ``shape``) on the device to compute on. Each signal keeps the
    parameters with its best PSNR seen (Adam on SIRENs has occasional loss spikes,
    and the last iterate can land in one); a signal that reaches
    ``config.target_psnr`` is frozen at the parameters that reached it.
    ``FitResult.psnr`` is the PSNR of every iterate (not just the kept one), and
    ``observe(step, params)`` sees the parameters after each step 0..K, as in :func:`fit_sgd`.
    """
    device = targets.device
    batch = targets.shape[0]
    coords = field.unit_coords(shape, device=device)  # [N, d]
    start = {k: v.clone() for k, v in init.items()} if batched else batch_params(init, batch)
    params = {k: v.to(device).requires_grad_(True) for k, v in start.items()}
    opt = torch.optim.Adam(params.values(), lr=config.lr)
    kept = {k: v.detach().clone() for k, v in params.items()}
    best = torch.full((batch,), -float("inf"), device=device)
    best_step = torch.zeros(batch, dtype=torch.long, device=device)
    frozen = torch.zeros(batch, dtype=torch.bool, device=device)
    history: list[Tensor] = []

    def keep_best(psnr: Tensor, step: int) -> None:
        better = (psnr > best) & ~frozen
        if better.any():
            for k, v in params.items():
                kept[k][better] = v.detach()[better]
            best[better] = psnr[better]
            best_step[better] = step

    start = time.perf_counter()
    stopped = "steps"
    for step in range(1, config.steps + 1):
        if observe is not None:
            with torch.no_grad():
                observe(step - 1, params)
        grads, mse, mse_clamped, _ = full_pass(field, params, coords, targets, config.chunk)
        for p, g in zip(params.values(), grads):
            p.grad = g
        psnr = psnr_from_mse(mse_clamped)  # [B], of the parameters before this update
        history.append(psnr)
        keep_best(psnr, step - 1)
        if config.target_psnr is not None:
            reached = psnr >= config.target_psnr
            frozen |= reached if not pooled else reached.new_full(reached.shape, float(
                psnr_from_mse(mse_clamped.mean())) >= config.target_psnr)
        if config.warmup:
            for group in opt.param_groups:
                group["lr"] = config.lr * min(1.0, step / config.warmup)
        now = time.perf_counter()
        if on_step is not None:
            on_step(StepInfo(step, config.steps, mse.mean().item(), _mean_psnr(psnr, mse_clamped, pooled),
                             int(frozen.sum()), None if deadline is None else max(0.0, deadline - now),
                             bound=config.target_psnr is not None))
        if frozen.all():
            stopped = "target_psnr"
            break
        if deadline is not None and now >= deadline:
            stopped = "seconds"
            break
        opt.step()
    else:  # the last update has not been measured yet
        if observe is not None:
            with torch.no_grad():
                observe(config.steps, params)
        mse_clamped = full_pass(field, params, coords, targets, config.chunk, grads=False)[2]
        history.append(psnr_from_mse(mse_clamped))
        keep_best(history[-1], config.steps)
    return FitResult(kept, best_step.tolist(), time.perf_counter() - start, history, stopped)


def _mean_psnr(psnr: Tensor, mse: Tensor, pooled: bool) -> float:
    """What a progress display shows of a batch: the mean of the signals' PSNRs, or for the tiles
    of one signal the PSNR of their mean MSE (the signal's own, near enough: overlaps count twice)."""
    return float(psnr_from_mse(mse.mean())) if pooled else psnr.mean().item()


@dataclass
class AdaptResult:
    params: Params  # batched [B, ...], detached: the parameters after the last step
    psnr: list[Tensor]  # PSNR [B] of the clamped predictions before step 1, ..., after the last step
    seconds: float


def fit_sgd(
    field: Field,
    init: Params,
    targets: Tensor,
    shape: tuple[int, ...],
    config: AdaptConfig,
    on_step: Callable[[StepInfo], None] | None = None,
    observe: Callable[[int, Params], None] | None = None,
    on_context: Callable[[int, Tensor], None] | None = None,
    *,
    pooled: bool = False,
) -> AdaptResult:
    """GradNCP's test-time adaptation (Algorithm 2) of B signals from a shared initialisation.

    At each step the full-context gradient g_full is taken with the step size of the
    pruned one: theta <- theta - lr * (||g_high|| / ||g_full||) * g_full, where g_high is
    the gradient on each signal's top ``gamma`` fraction of points (scored as in
    meta-training) and both norms run over all of that signal's parameters. The
    pruned gradient is what the initialisation was meta-trained to follow; its norm
    is larger than the full one (it averages over the hard points only), and the full
    gradient's direction uses every point. ``config.rescale=False`` is plain SGD.

    targets [B, N, out_dim] (``field.to_units`` of the signals on grid ``shape``) on the compute device. ``observe(step, params)`` is
    called with the parameters after each step 0..K (0: the initialisation), and
    ``on_context(step, index)`` with the points [B, k] that set step ``step + 1``'s size.
    ``pooled``: the B signals are the tiles of one, and ``on_step`` reports the PSNR of their mean
    MSE, as :func:`fit_adam` does (the mean of their PSNRs flatters: flat tiles score 50 dB and more).
    """
    device = targets.device
    coords = field.unit_coords(shape, device=device)  # [N, d]
    params = {k: v.to(device).unsqueeze(0).expand(targets.shape[0], *v.shape).clone() for k, v in init.items()}
    history: list[Tensor] = []
    start = time.perf_counter()
    for step in range(config.steps + 1):
        params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        if observe is not None:
            with torch.no_grad():
                observe(step, params)
        last = step == config.steps  # measured only: no gradient, no scores
        with torch.enable_grad():
            g_full, mse, mse_clamped, score = full_pass(
                field, params, coords, targets, config.chunk, grads=not last, scores=config.rescale and not last
            )
        psnr = psnr_from_mse(mse_clamped)
        history.append(psnr)
        if on_step is not None and step > 0:
            on_step(StepInfo(step, config.steps, mse.mean().item(), _mean_psnr(psnr, mse_clamped, pooled), 0))
        if last:
            break
        lr: float | Tensor = config.lr
        if config.rescale:
            index = top_context(score, config.gamma)  # [B, k]
            if on_context is not None:
                on_context(step, index)
            sub_coords, sub_targets = gather_context(coords, targets, index)
            with torch.enable_grad():
                g_high = full_pass(field, params, sub_coords, sub_targets, config.chunk)[0]
            lr = config.lr * global_norm(g_high) / global_norm(g_full).clamp_min(1e-30)  # [B]
        with torch.no_grad():
            params = sgd_step(params, g_full, lr)
    return AdaptResult({k: v.detach() for k, v in params.items()}, history, time.perf_counter() - start)


def fit_batch(
    field: Field, start: Params, targets: Tensor, shape: tuple[int, ...], config: FitConfig, adapt: AdaptConfig,
    learned: bool, progress: Callable[[int], Callable[[StepInfo], None] | None], *, refine: bool = False,
    deadline: float | None = None, pooled: bool = False,
) -> tuple[Params, list[dict[str, Any]], float, str]:
    """Fit a batch the way nfit fits: Adam from random (``config``); from a learned initialisation
    (``learned``), ``adapt``'s steps: GradNCP's re-scaled SGD then, for signals below
    ``config.target_psnr`` (or always, with ``refine``), Adam (``adapt.adam_lr``, at most
    ``config.steps``), or Adam alone. ``progress(steps)`` gives each phase's step callback;
    ``deadline`` and ``pooled`` are :func:`fit_adam`'s. Returns the batched parameters, each
    signal's method summary, the seconds and what stopped the fit."""
    batch = targets.shape[0]
    if learned and adapt.optimizer == "sgd":
        result = fit_sgd(field, start, targets, shape, adapt, progress(adapt.steps), pooled=pooled)
        method: dict[str, Any] = {"method": "sgd-rescaled" if adapt.rescale else "sgd", "steps": adapt.steps,
                                  "lr": adapt.lr}
        if adapt.rescale:
            method["gamma"] = adapt.gamma
        last = result.psnr[-1]
        reached = config.target_psnr is not None and bool(
            (last >= config.target_psnr).all() if not pooled else _pooled_psnr(last) >= config.target_psnr)
        if reached or (not refine and config.target_psnr is None) or config.steps == 0:
            return result.params, [method] * batch, result.seconds, "target_psnr" if reached else "steps"
        # Adam from where SGD left each signal: those already at the target are frozen at once.
        more_config = dataclasses.replace(config, lr=adapt.adam_lr, chunk=adapt.chunk)
        more = fit_adam(field, result.params, targets, shape, more_config, progress(more_config.steps), batched=True,
                        deadline=deadline, pooled=pooled)
        methods = [{**method, "method": method["method"] + "+adam", "steps": adapt.steps + s, "adam_steps": s,
                    "adam_lr": more_config.lr, "target_psnr": config.target_psnr} for s in more.steps]
        return more.params, methods, result.seconds + more.seconds, more.stopped
    if learned:  # Adam from the learned initialisation
        config = dataclasses.replace(config, steps=adapt.adam_steps, lr=adapt.adam_lr, chunk=adapt.chunk)
    result = fit_adam(field, start, targets, shape, config, progress(config.steps), deadline=deadline, pooled=pooled)
    methods = [{"method": "adam", "steps": s, "lr": config.lr, "seed": config.seed, "target_psnr": config.target_psnr}
               for s in result.steps]
    return result.params, methods, result.seconds, result.stopped


def _pooled_psnr(psnr: Tensor) -> float:
    """The PSNR of the mean MSE of signals with PSNRs ``psnr`` [B] (tiles of one signal)."""
    return float(psnr_from_mse(torch.pow(10.0, -psnr / 10).mean()))


def random_init(field: Field, seed: int) -> Params:
    """The initialisation every signal starts from, for a given seed (drawn on the CPU)."""
    return field.init_params(torch.Generator().manual_seed(seed))


def split_batches(n: int, batch_size: int) -> list[range]:
    return [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


__all__ = ["AdaptResult", "FitResult", "StepInfo", "fit_adam", "fit_batch", "fit_sgd", "random_init", "split_batches"]
