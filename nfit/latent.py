"""Fitting latent-grid fields (:mod:`nfit.fields.grid`) for their coded size: Adam on
``MSE + lam * bits / samples``, B signals of one grid at once.

The latents are stored as integers (:func:`nfit.rate.store_latents`), so the fit learns them
through rounding, as C3 does (Kim et al. 2024): first through soft rounding plus uniform noise,
sharper as the fit goes on (a differentiable stand-in for rounding), then, for the last
``LATENT_FIT["hard"]`` of the budget (steps or seconds), rounded in the forward pass with the
gradient passed straight through, at a lower step size. On a held-out 768x512 photo in 300 steps
this scored 0.7 dB more than plain noise (Cool-chic's first recipe) with 7% fewer bits at lambda
1e-3, and it does not collapse at high lambda (see :func:`_stand_ins`). The synthesis MLP is stored at
12 bits or more and fitted as floats (its rounding costs under 0.01 dB).

The rate is estimated by the field's autoregressive model (:mod:`nfit.arm`, fitted with the latents
by the same loss and stored with them): each latent costs ``-log2`` of the mass its predicted
Laplace puts on [q - 1/2, q + 1/2], the prediction made from its rounded, decoded neighbours, as
the coder makes it. Fields without one (``arm`` 0: 1-D grids, and files of format 5) use a Laplace per
level and signal (mean 0, a learned scale), and their coder a table of scales by the context of a
latent's decoded neighbours. Steering measures the rate the file will have (:func:`_measure`).

``lam`` trades quality for size. It is given, or steered during the fit toward a goal: a rate
in bits (a file size) or a PSNR. Every ``LATENT_FIT["every"]`` steps the rounded field is
measured and ``lam`` multiplied by a bounded factor, up when the rate is heading over its goal
or the PSNR above its goal, down otherwise, starting from :func:`lambda_for` the goal and, for a
rate, re-aimed once early in the fit (:func:`_aim`). The rate answers ``lam`` late, and more
slowly as the step size falls, so the first lambda matters most and steering follows where the
rate is heading, not where it is (:func:`_heading`). Under a budget the latents aim a little
below it, and the file is then held to it exactly (:func:`nfit.rate.store_latents`).

The step size falls along a cosine over the fit (to ``LATENT_FIT["decay"]`` of its peak), so the
latents and the MLP settle: at a constant step size more steps bought nothing, with the decay
800 steps scored about 2 dB more than 400 at equal rate (BENCHMARKS.md, "Latent grids"). Its peak
follows a rate goal (:func:`lr_share`): a high rate needs latents that grow fast enough to spend
it, a low one scored more at a smaller step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nfit import arm
from nfit.coding import LEAK_BITS, rows, tensor_model
from nfit.config import LATENT_FIT, FitConfig
from nfit.fields import Params, batch_params
from nfit.fields.grid import LatentGrid
from nfit.fit import StepInfo
from nfit.metrics import psnr_from_mse


@dataclass(frozen=True)
class RateGoal:
    """What ``lam`` is steered toward: at most ``bits`` per signal, or a PSNR (dB); neither: ``lam`` fixed."""

    lam: float = LATENT_FIT["lambda"]
    bits: float | None = None
    psnr: float | None = None


@dataclass
class LatentFit:
    params: Params  # batched [B, ...], detached; latents as fitted, near integers (a file rounds them)
    lam: list[float]  # each signal's final lambda
    psnr: list[float]  # each signal's PSNR with rounded latents (and float MLP), at the last measurement
    bits: list[float]  # each signal's estimated latent bits, at the last measurement
    steps: int
    seconds: float
    stopped: str  # "steps" or "seconds"


def lambda_for(bits_per_sample: float) -> float:
    """A first lambda for a rate goal, log-log between lambdas measured on two held-out 768x512 photos
    (LATENT_FIT["lambda_rates"]), beyond them along the nearest segment: steering starts
    near the goal instead of climbing to it (from 1e-3, a 0.3 bpp goal overshot to lambda 0.06,
    where every latent rounds to zero)."""
    pts = sorted(LATENT_FIT["lambda_rates"], key=lambda p: -p[1])  # (lambda, bpp), falling bpp
    for (l0, r0), (l1, r1) in zip(pts, pts[1:]):
        if bits_per_sample >= r1 or (l1, r1) == pts[-1]:
            break
    slope = math.log(l1 / l0) / math.log(r1 / r0)
    lam = l0 * (bits_per_sample / r0) ** slope
    return min(max(lam, LATENT_FIT["lambda_range"][0]), LATENT_FIT["lambda_range"][1])


def lr_share(bits_per_sample: float) -> float:
    """The share of the peak step size a fit toward this rate goal takes, log-linear in the rate between
    the points LATENT_FIT["lr_rates"] (share, latents' bpp) measured on four held-out 768x512 photos, held
    at the nearer one beyond them (no measurement says how it goes on)."""
    (s0, r0), (s1, r1) = sorted(LATENT_FIT["lr_rates"], key=lambda p: p[1])
    t = math.log(max(bits_per_sample, 1e-12) / r0) / math.log(r1 / r0)
    return s0 + (s1 - s0) * min(max(t, 0.0), 1.0)


def laplace_bits(q: Tensor, log_scale: Tensor) -> Tensor:
    """Bits of integers (or noisy stand-ins) ``q [B, ...]`` under a Laplace(0, exp(log_scale [B])) model
    of each signal, integrated over unit bins: -> [B]."""
    scale = log_scale.exp().reshape(-1, *([1] * (q.dim() - 1)))

    def cdf(v: Tensor) -> Tensor:
        return 0.5 + 0.5 * torch.sign(v) * -torch.expm1(-v.abs() / scale)

    mass = (cdf(q + 0.5) - cdf(q - 0.5)).clamp_min(2.0**-LEAK_BITS)  # as the coder floors it: 24 bits at most
    return -torch.log2(mass).flatten(1).sum(1)


def fit_latents(
    field: LatentGrid,
    init: Params,
    targets: Tensor,
    shape: tuple[int, ...],
    config: FitConfig,
    goal: RateGoal,
    on_step: Callable[[StepInfo], None] | None = None,
    *,
    deadline: float | None = None,
    generator: torch.Generator | None = None,
) -> LatentFit:
    """Fit B signals ``targets [B, N, C]`` (on the compute device) on grid ``shape`` from ``init``
    (unbatched): ``config.steps`` Adam steps at ``config.lr`` (fewer if ``deadline``, a
    ``time.perf_counter()`` value, comes first; the noise-to-rounding switch then follows the time).
    The whole grid is evaluated at once (:meth:`LatentGrid.on_grid`): memory grows with the signal."""
    device, batch, samples = targets.device, targets.shape[0], math.prod(shape)
    names = field.latent_names
    params = {k: v.to(device).requires_grad_(True) for k, v in batch_params(init, batch).items()}
    log_scale = torch.zeros(batch, len(names), device=device, requires_grad=True)  # the rate model's, per level
    # each level's steps in the MLP's units are lr whatever its gain: lr / gain in its own
    levels = [{"params": [params[k]], "lr": config.lr / g} for k, g in zip(names, field.config.level_gains())]
    opt = torch.optim.Adam([*levels, {"params": [log_scale]},
                            {"params": [v for k, v in params.items() if k not in names]}], lr=config.lr)
    peaks = [group["lr"] for group in opt.param_groups]
    lam = torch.full((batch,), float(goal.lam), device=device)
    generator = generator or torch.Generator(device=device).manual_seed(config.seed)
    began = time.perf_counter()
    budget = None if deadline is None else deadline - began
    hard, step, stopped, aimed = False, 0, "steps", False
    psnr_r = bits_r = torch.zeros(batch, device=device)
    predicted: list[tuple[Tensor, Tensor]] | None = None  # the autoregressive model's last predictions, detached
    while step < config.steps:
        now = time.perf_counter()
        if deadline is not None and now >= deadline:
            stopped = "seconds"
            break
        done = max(step / config.steps, 0.0 if budget is None else (now - began) / budget)
        hard = hard or done >= 1 - LATENT_FIT["hard"]  # the last stretch on the values that will be stored
        share = _decay(done) * (LATENT_FIT["hard_lr"] if hard else 1.0)  # of each group's peak step size
        for group, peak in zip(opt.param_groups, peaks):
            group["lr"] = peak * share
        step += 1
        # what the decoder sees of the latents this step, and what the rate counts: see the module's notes
        shown, counted = _stand_ins({k: params[k] for k in names}, done, hard, generator)
        net = {k: v for k, v in params.items() if k not in names}
        mse = (field.on_grid({**net, **shown}, shape) - targets).pow(2).flatten(1).mean(1)  # [B]
        if not field.config.arm:
            bits = sum(laplace_bits(counted[k], log_scale[:, i]) for i, k in enumerate(names))  # [B]
        elif predicted is None or step % LATENT_FIT["arm_every"] == 0:  # the model, and its gradient, this step
            fresh = _predict(field, net, {k: params[k].round() for k in names})
            bits = _arm_bits(field, counted, fresh)
            predicted = [(mean.detach(), log_s.detach()) for mean, log_s in fresh]
        else:  # the last predictions: their inputs, the rounded latents and the model, move slowly
            bits = _arm_bits(field, counted, predicted)
        # log_scale is unused where the field's autoregressive model gives the scales: no gradient, Adam skips it
        grads = torch.autograd.grad((mse + lam * bits / samples).sum(), list(params.values()) + [log_scale],
                                    allow_unused=True)
        for p, g in zip(list(params.values()) + [log_scale], grads):
            p.grad = g
        opt.step()
        if step % LATENT_FIT["every"] == 0 or step == config.steps:
            before, (psnr_r, bits_r) = bits_r, _measure(field, params, shape, targets)
            if goal.bits is not None and not aimed and LATENT_FIT["aim_at"] <= done:
                lam, aimed = _aim(lam, goal.bits, bits_r), True
            if LATENT_FIT["steer_from"] <= done:  # once the latents have found their scale
                steered = _steer(lam, goal, psnr_r, _heading(bits_r, before))
                lam = torch.maximum(lam, steered) if hard else steered  # rounded stretch: only up, not to end over
        if on_step is not None:
            left = None if deadline is None else max(0.0, deadline - time.perf_counter())
            reported = psnr_r if step >= LATENT_FIT["every"] else psnr_from_mse(mse.detach())
            on_step(StepInfo(step, config.steps, mse.mean().item(), float(reported.mean()), 0, left))
    if step % LATENT_FIT["every"] and step:
        psnr_r, bits_r = _measure(field, params, shape, targets)
    out = {k: v.detach() for k, v in params.items()}
    return LatentFit(out, lam.tolist(), psnr_r.tolist(), bits_r.tolist(), step, time.perf_counter() - began, stopped)


def _decay(done: float) -> float:
    """The step size's share of its peak when ``done`` of the fit is done: a cosine from 1 down to
    LATENT_FIT["decay"] (see the module's notes)."""
    floor = LATENT_FIT["decay"]
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def _noise(like: Tensor, generator: torch.Generator) -> Tensor:
    return torch.rand(like.shape, generator=generator, device=like.device) - 0.5


def soft_round(y: Tensor, alpha: float) -> Tensor:
    """Agustsson and Theis's soft rounding: the identity as ``alpha`` -> 0, rounding as it grows; smooth."""
    m = torch.floor(y) + 0.5
    return m + 0.5 * torch.tanh(alpha * (y - m)) / math.tanh(alpha / 2)


def _stand_ins(latents: Params, done: float, hard: bool, generator: torch.Generator) -> tuple[Params, Params]:
    """The latents as the decoder sees them and as the rate counts them, differentiable in ``latents``.
    Hard: both rounded, the gradient straight through. Before: C3's soft rounding (Kim et al. 2024),
    its sharpness rising with ``done`` from LATENT_FIT["alpha"][0] to [1]; the rate counts
    ``soft(y) + u`` and the decoder sees ``soft(soft(y) + u)``, u uniform in [-1/2, 1/2]. Plain noise
    (``y + u`` for both, as Cool-chic first did) let a high lambda park latents inside (-1/2, 1/2),
    where noise still carries them and rounding zeroes them: a 0.3 bpp budget decoded to 14 dB."""
    if hard:
        rounded = {k: v + (v.round() - v).detach() for k, v in latents.items()}
        return rounded, rounded
    lo, hi = LATENT_FIT["alpha"]
    alpha = lo * (hi / lo) ** min(1.0, done / (1 - LATENT_FIT["hard"]))
    counted = {k: soft_round(v, alpha) + _noise(v, generator) for k, v in latents.items()}
    return {k: soft_round(v, alpha) for k, v in counted.items()}, counted


def _predict(field: LatentGrid, net: Params, rounded: Params) -> list[tuple[Tensor, Tensor]]:
    """The field's autoregressive model (:mod:`nfit.arm`, its weights in ``net``): each level's means and log
    scales [B, N] from the neighbours in ``rounded``, the latents rounded as the coder has them.
    Predicting from the stand-ins' neighbours instead, the model learned noise the coder never sees:
    measured on rounded latents its rate fell ~14% when the fit's rounded stretch began, and steering,
    misled, ended 7-11% under budgets on a held-out photo."""
    return [arm.predict(net, rounded[k].reshape(-1, *rows(tuple(rounded[k].shape[1:]))), level)
            for level, k in enumerate(field.latent_names)]


def _arm_bits(field: LatentGrid, latents: Params, predicted: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Bits [B] of ``latents`` (or their stand-ins) under each level's predicted means and log scales."""
    return sum(arm.bits(latents[k].flatten(1), mean, log_s)
               for k, (mean, log_s) in zip(field.latent_names, predicted))


@torch.no_grad()
def _measure(field: LatentGrid, params: Params, shape: tuple[int, ...], targets: Tensor) -> tuple[Tensor, Tensor]:
    """PSNR [B] and estimated latent bits [B] of the field with its latents rounded: the coder's (its table of
    scales by context), or the autoregressive model's estimate where the field has one."""
    names = field.latent_names
    rounded = {k: (v.round() if k in names else v) for k, v in params.items()}
    mse = (field.on_grid(rounded, shape).clamp(0, 1) - targets).pow(2).flatten(1).mean(1)
    if field.config.arm:
        return psnr_from_mse(mse), _arm_bits(field, rounded, _predict(field, rounded, rounded))
    return psnr_from_mse(mse), sum(coder_bits(rounded[k]) for k in names)


def coder_bits(q: Tensor) -> Tensor:
    """Bits [B] the coder spends on each signal's latents ``q [B, ...]`` (integers) with the model it will
    use (:func:`nfit.coding.tensor_model`: by context of their decoded neighbours where that is smaller)."""
    shape = rows(tuple(q.shape[1:]))
    return torch.tensor([tensor_model(one.detach().to("cpu", torch.int32).numpy().reshape(shape), True)[1]
                         for one in q], device=q.device)


def _aim(lam: Tensor, goal_bits: float, bits: Tensor) -> Tensor:
    """``lam`` for a rate goal, re-aimed once early in the fit from the rate its latents have then: a
    fixed lambda's rate settles at about LATENT_FIT["early_rate"] times that, and falls about as
    lambda's inverse (LATENT_FIT["lambda_rates"]). A photo's lambda for a given rate varies 3-5x
    from photo to photo (wayne's at 0.93 bpp ~4x pool's), and steering later, once the latents
    have formed, moves the rate too slowly to make up for a first lambda that far off."""
    settles = bits.clamp_min(1.0) * LATENT_FIT["early_rate"]
    return (lam * settles / goal_bits).clamp(*LATENT_FIT["lambda_range"])


def _heading(bits: Tensor, before: Tensor) -> Tensor:
    """Where the rate is heading [B]: ``bits`` carried on for LATENT_FIT["steer_ahead"] more measurements
    at its last rate of change (from ``before``, the last measurement's). The rate answers lambda
    late, so steering on the rate itself kept pushing lambda while the rate was already on its way:
    on a held-out photo it overshot a 0.93 bpp goal by 6%."""
    change = (bits.clamp_min(1.0) / before.clamp_min(1.0)).clamp(0.5, 2.0)
    return bits * change ** LATENT_FIT["steer_ahead"]


def _steer(lam: Tensor, goal: RateGoal, psnr: Tensor, bits: Tensor) -> Tensor:
    """``lam`` moved toward the goal by a bounded factor: up when over the bit goal or above the PSNR one."""
    if goal.bits is not None:
        log_factor = LATENT_FIT["steer_rate"] * torch.log(bits.clamp_min(1.0) / goal.bits)
    elif goal.psnr is not None:
        log_factor = LATENT_FIT["steer_psnr"] * (psnr - goal.psnr)
    else:
        return lam
    most = math.log(LATENT_FIT["steer_most"])
    return (lam * log_factor.clamp(-most, most).exp()).clamp(*LATENT_FIT["lambda_range"])


__all__ = ["LatentFit", "RateGoal", "fit_latents", "lambda_for", "laplace_bits", "lr_share"]
