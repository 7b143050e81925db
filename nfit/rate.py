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

Field width and steps are not searched: they are the initialisation's (or ``--width``) and
the fit's stopping rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from nfit import metrics
from nfit.coding import dequantise, quantise
from nfit.config import CODING_BITS, CODING_LOSS_DB, MAX_SSIM_SAMPLES, StoreConfig
from nfit.errors import ConfigError
from nfit.fieldfile import NeuralField, field_bytes
from nfit.fields import Params
from nfit.render import field_chunks, render_values


def measure(nf: NeuralField, values: torch.Tensor, device: torch.device, ssim: bool = True) -> tuple[float, float | None]:
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
          target_psnr: float | None, device: torch.device) -> NeuralField:
    """``nf`` (float32 values as fitted) as it will be written under ``config``, its values those the file
    decodes to. Raises ConfigError naming the source when a budget cannot be met."""
    if not config.coded:
        if config.dtype != "float32":
            nf = dataclasses.replace(nf, params={k: v.to(getattr(torch, config.dtype)).float() for k, v in nf.params.items()})
        return nf
    lo, hi = CODING_BITS
    versions: dict[int, NeuralField] = {}
    scores: dict[int, float] = {}

    def at(bits: int) -> NeuralField:
        if bits not in versions:
            versions[bits] = coded(nf, reference, bits)
        return versions[bits]

    def psnr(bits: int) -> float:
        if bits not in scores:
            scores[bits] = measure(at(bits), values, device, ssim=False)[0]
        return scores[bits]

    budget = config.budget(math.prod(nf.shape))
    if config.bits is not None:
        bits = config.bits
    elif budget is not None:
        # the most bits that fit: the fewest that do not, less one
        over = _bisect(lo, hi, lambda b: field_bytes(at(b)) > budget)
        if over == lo:
            raise ConfigError(nf.source, f"cannot be stored in {budget:,} bytes: at {lo} bits its field takes "
                              f"{field_bytes(at(lo)):,} (fit a smaller field: --width, or --tile 0 --width W)")
        bits = hi if over is None else over - 1
    else:
        floor = measure(nf, values, device, ssim=False)[0]
        goal = target_psnr if target_psnr is not None and floor >= target_psnr else floor - CODING_LOSS_DB
        bits = _bisect(lo, hi, lambda b: psnr(b) >= goal) or hi
    return at(bits)


__all__ = ["coded", "measure", "store"]
