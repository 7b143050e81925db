"""How a fitted field is stored: its bit width chosen for a size budget or a quality (rate control).

The fit itself is not repeated: the field is fitted once (to its target PSNR raised by
``CODING_MARGIN_DB`` when the bit width is left to nfit), then coded at the bit width the
rule picks. Both what a file costs and what it scores grow with the bit width, so each rule
is a bisection over ``CODING_BITS``, measuring the coded field itself:

* ``bits`` given: that width.
* a budget (``max_bytes``, or ``bpp`` per sample): the most bits whose file fits in it, sized
  exactly as it will be written (header and metadata included).
* a target PSNR the float field reached: the fewest bits whose coded field reaches it.
* otherwise: the fewest bits within ``CODING_LOSS_DB`` of the float field's PSNR.

Then a short quantisation-aware fine-tuning (:func:`finetune`, ``CODING_FINETUNE`` Adam steps
on the coded field, straight through the rounding) at that width, or for a PSNR goal at one
bit fewer (when rounding alone misses the goal by at most ``CODING_FINETUNE["reach_db"]``),
kept when it still meets the rule: measured on held-out photos it adds 0.7-1 dB in 10 steps
at 6 bits, and 0.6-3.5 dB in 20 at 4-6 bits (the fewer the bits, the more), so a goal is
often met one bit lower (BENCHMARKS.md "Compact files").

Field width and steps are not searched: they are the initialisation's (or ``--width``) and
the fit's stopping rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from nfit import metrics
from nfit.coding import INT, MAX_BITS, Quantised, dequantise, quantise, rounded, step_for
from nfit.config import (
    CODING_BITS,
    CODING_FINETUNE,
    CODING_LOSS_DB,
    LATENT_NET_BITS,
    LATENT_NET_MIN_BITS,
    MAX_SSIM_SAMPLES,
    TILE_BATCH_SAMPLES,
    FitConfig,
    StoreConfig,
)
from nfit.device import release_cpu_memory
from nfit.errors import ConfigError
from nfit.fieldfile import NeuralField, field_bytes
from nfit.fields import Field, Params
from nfit.fields.grid import LatentGrid
from nfit.fields.masked import Masked
from nfit.fit import StepInfo, fit_adam, split_batches
from nfit.render import field_chunks, render_values
from nfit.tiled import StepFactory
from nfit.tiling import extract


def measure(nf: NeuralField, values: torch.Tensor, device: torch.device,
            ssim: bool = True) -> tuple[float, float | None]:
    """PSNR of ``nf`` rendered at its own grid against ``values [*shape, C]``, and SSIM, from one render;
    above ``MAX_SSIM_SAMPLES`` (or without ``ssim``), PSNR alone, accumulated block by block (no second
    copy of a large signal)."""
    if ssim and values.numel() <= MAX_SSIM_SAMPLES:  # small enough to render whole: one render serves both
        rendered, target = render_values(nf, device=device).unsqueeze(0), values.unsqueeze(0)
        score = metrics.signal_ssim(rendered, target)
        return float(metrics.psnr(rendered, target)[0]), None if score is None else float(score[0])
    flat = values.reshape(-1, values.shape[-1])
    squared = 0.0
    for start, stop, block in field_chunks(nf, nf.shape, device):
        squared += float((block.cpu().double() - flat[start:stop].double()).pow(2).sum())
    return float(metrics.psnr_from_mse(torch.tensor(squared / flat.numel()))), None


def coded(nf: NeuralField, reference: Params | None, bits: int) -> NeuralField:
    """``nf`` as a file at ``bits`` bits decodes it: its values quantised relative to ``reference``
    (the initialisation's parameters when ``nf`` was fitted from one, else None)."""
    q = quantise(nf.params, reference, bits)
    return dataclasses.replace(nf, params=dequantise(q, reference), quantised=q)


class _Rounded:
    """A field evaluated at its parameters as a file at fixed ``steps`` decodes them, its gradients
    passed straight through the rounding (quantisation-aware fine-tuning)."""

    def __init__(self, base: Field, reference: Params | None, bits: int, steps: dict[str, float]):
        self.base, self.reference, self.bits, self.steps = base, reference, bits, steps

    def __call__(self, params: Params, coords: torch.Tensor, *, features: bool = False):
        return self.base(rounded(params, self.reference, self.bits, self.steps), coords, features=features)

    def __getattr__(self, name: str):  # the unit interface (unit_coords, to_units, ...) is the base field's
        return getattr(self.base, name)


def finetune(nf: NeuralField, reference: Params | None, values: torch.Tensor, bits: int, device: torch.device,
             steps: int | None = None, lr: float | None = None, progress: StepFactory | None = None) -> NeuralField:
    """``nf`` coded at ``bits`` after ``steps`` Adam steps on the coded field itself (straight-through
    rounding, the quantisation steps fixed from ``nf``): each tile keeps its best coded iterate, the
    first being plain rounding, so it never scores worse than :func:`coded`. ``progress(total)``
    gives the callback of one bar over every batch of tiles."""
    steps = CODING_FINETUNE["steps"] if steps is None else steps
    lr = CODING_FINETUNE["lr"] if lr is None else lr
    fixed = quantise(nf.params, reference, bits).steps
    base = nf.field if nf.mask is None else Masked(nf.field, nf.mask)
    net = _Rounded(base, None if reference is None else {k: v.to(device) for k, v in reference.items()}, bits, fixed)
    config = FitConfig(steps=steps, lr=lr)
    q = {k: torch.empty(v.shape, dtype=INT) for k, v in nf.params.items()}  # filled a batch of tiles at a time
    if nf.tiling is None:
        parts, grid = [None], nf.shape
    else:
        grid = nf.tiling.tile
        parts = split_batches(nf.tiles, max(1, TILE_BATCH_SAMPLES // math.prod(grid)))
    on_step = None if progress is None else progress(steps * len(parts))
    for i, part in enumerate(parts):
        if part is None:  # one field over the whole signal: a batch of one
            where, targets = slice(None), values.unsqueeze(0)
            start = {k: v.unsqueeze(0) for k, v in nf.params.items()}
        else:
            where, targets = slice(part.start, part.stop), extract(values, nf.tiling, part)
            start = {k: v[where] for k, v in nf.params.items()}
        result = fit_adam(net, {k: v.to(device) for k, v in start.items()}, base.to_units(targets.to(device)), grid,
                          config, None if on_step is None else _offset(on_step, i * steps, steps * len(parts)),
                          batched=True, pooled=part is not None)  # batched: copies the start, nf keeps its values
        tuned = {k: (v[0] if part is None else v).cpu() for k, v in result.params.items()}
        for k, v in quantise(tuned, reference, bits, fixed).q.items():
            q[k][where] = v
        del result, tuned
        release_cpu_memory()  # as between the fit's batches (nfit.tiled)
    quantised = Quantised(bits, q, fixed)
    return dataclasses.replace(nf, params=dequantise(quantised, reference), quantised=quantised)


def _offset(on_step: Callable[[StepInfo], None], base: int, total: int) -> Callable[[StepInfo], None]:
    return lambda info: on_step(dataclasses.replace(info, step=base + info.step, steps=total))


def _bisect(lo: int, hi: int, good: Callable[[int], bool]) -> int | None:
    """The smallest ``b`` in [lo, hi] with ``good(b)``, for a ``good`` that stays true once true; None if none is."""
    if not good(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if good(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def store(nf: NeuralField, reference: Params | None, values: torch.Tensor, config: StoreConfig,
          target_psnr: float | None, device: torch.device, tune: bool = True,
          progress: StepFactory | None = None) -> NeuralField:
    """``nf`` (float32 values as fitted) as it will be written under ``config``, its values those the file
    decodes to; ``tune``: with quantisation-aware fine-tuning (else rounding alone). Raises ConfigError
    naming the source when a budget cannot be met. ``progress``: a bar for the fine-tuning."""
    if isinstance(nf.field, LatentGrid):
        return store_latents(nf, values, config, device)
    if not config.coded:
        if config.dtype != "float32":
            half = getattr(torch, config.dtype)
            nf = dataclasses.replace(nf, params={k: v.to(half).float() for k, v in nf.params.items()})
        return nf
    lo, hi = CODING_BITS
    scores: dict[int, float] = {}
    sizes: dict[int, int] = {}

    def at(bits: int) -> NeuralField:  # not kept: on a 50 MP photo each version holds 0.9 GB
        return coded(nf, reference, bits)

    def psnr(bits: int) -> float:
        if bits not in scores:
            scores[bits] = measure(at(bits), values, device, ssim=False)[0]
        return scores[bits]

    def size(bits: int) -> int:
        if bits not in sizes:
            sizes[bits] = field_bytes(at(bits))
        return sizes[bits]

    budget = config.budget(math.prod(nf.shape))
    if config.bits is not None:
        return finetune(nf, reference, values, config.bits, device, progress=progress) if tune else at(config.bits)
    if budget is not None:
        # the most bits that fit: the fewest that do not, less one
        over = _bisect(lo, hi, lambda b: size(b) > budget)
        if over == lo:
            raise ConfigError(nf.source, f"cannot be stored in {budget:,} bytes: at {lo} bits its field takes "
                              f"{size(lo):,} (a smaller field takes less: --init random --width 8, "
                              "or --tile 0 --width W)")
        bits = hi if over is None else over - 1
        if not tune:
            return at(bits)
        tuned = finetune(nf, reference, values, bits, device, progress=progress)
        return tuned if field_bytes(tuned) <= budget else at(bits)  # other integers: its size may differ a little
    floor = measure(nf, values, device, ssim=False)[0]
    goal = target_psnr if target_psnr is not None and floor >= target_psnr else floor - CODING_LOSS_DB
    bits = _bisect(lo, hi, lambda b: psnr(b) >= goal) or hi
    # fine-tuned, one bit fewer may reach the goal too: tried where rounding alone falls short by
    # less than fine-tuning usually gains
    if tune and bits > lo and goal - psnr(bits - 1) <= CODING_FINETUNE["reach_db"]:
        tuned = finetune(nf, reference, values, bits - 1, device, progress=progress)
        if measure(tuned, values, device, ssim=False)[0] >= goal:
            return tuned
    return at(bits)


# Dead zones tried under a budget, in order: a latent within 1/2 + d of zero is stored as zero
LATENT_DEAD_ZONES = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5, 4.0, 8.0, math.inf)


def store_latents(nf: NeuralField, values: torch.Tensor, config: StoreConfig, device: torch.device) -> NeuralField:
    """A latent-grid field (:mod:`nfit.latent`) as written: its latents rounded to integers, and its MLP at
    the precision that costs least at the fit's lambda (:func:`_network_bits`). Under a budget, the first
    dead zone of ``LATENT_DEAD_ZONES`` whose file fits: latents that rounding barely carried away from
    zero go to zero first, those that matter least (coarser steps would not do: most stored latents are
    +-1, and any step under 2 leaves them as they are, any step from 2 zeroes them all). Never a byte
    over; raises ConfigError naming the source when not even all-zero latents fit."""
    names = set(nf.field.latent_names)
    peak = max((int(nf.params[k].abs().max().round()) for k in names if nf.params[k].numel()), default=0)
    bits = min(MAX_BITS, max(LATENT_NET_BITS, peak.bit_length() + 1))  # the coder's range: the latents' and the MLP's

    def at(dead: float, net_bits: int) -> NeuralField:
        kept = {k: torch.where(v.abs() < 0.5 + dead, 0.0, v) if k in names else v for k, v in nf.params.items()}
        steps = {k: 1.0 if k in names else step_for(v, net_bits) for k, v in kept.items()}
        q = quantise(kept, None, bits, steps)
        return dataclasses.replace(nf, params=dequantise(q, None), quantised=q)

    net_bits = _network_bits(lambda b: at(0.0, b), nf.summary.get("lambda"), values, device)
    budget = config.budget(math.prod(nf.shape))
    if budget is None:
        return at(0.0, net_bits)
    for dead in LATENT_DEAD_ZONES:
        coded = at(dead, net_bits)
        if field_bytes(coded) <= budget:
            return coded
    raise ConfigError(nf.source, f"cannot be stored in {budget:,} bytes: with every latent zero its field "
                      f"takes {field_bytes(coded):,}")


def _network_bits(stored: Callable[[int], NeuralField], lam: float | None, values: torch.Tensor,
                  device: torch.device) -> int:
    """The bits of a latent grid's MLP and mixing (each tensor's largest value on the last of 2^(b-1) - 1
    steps) that minimise the fit's own loss, ``MSE + lam * bits / samples`` of the file, from
    LATENT_NET_BITS down to LATENT_NET_MIN_BITS, stopping where fewer bits cost more: on a held-out
    photo 8 bits took 268 bytes off a 13.5 kB file for 0.01 dB (BENCHMARKS.md, "Latent grids").
    LATENT_NET_BITS where the fit had no lambda."""
    if lam is None:
        return LATENT_NET_BITS
    best, best_loss = LATENT_NET_BITS, math.inf
    for net_bits in range(LATENT_NET_BITS, LATENT_NET_MIN_BITS - 1, -1):
        candidate = stored(net_bits)
        psnr, _ = measure(candidate, values, device, ssim=False)
        loss = 10 ** (-psnr / 10) + lam * 8 * field_bytes(candidate) / values[..., 0].numel()
        if loss > best_loss:
            break
        best, best_loss = net_bits, loss
    return best


__all__ = ["LATENT_DEAD_ZONES", "coded", "finetune", "measure", "store", "store_latents"]
