"""Masked fields: a field whose weights are multiplied by a fixed binary mask, and how
masks are counted, stored and sized against dense fields.

Meta-SparseINR (nfit.meta.sparse) learns the mask; fitting, rendering and the file
format only apply, count and store it, so it lives with the fields. Every gradient
of a pruned weight is exactly zero under :class:`Masked`, so SGD and Adam leave a
pruned weight where it is (at zero) with no special case anywhere.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nfit.errors import ConfigError
from nfit.fields.base import Field, Params, build_field, count_params, field_config_dict

Mask = dict[str, Tensor]
"""Weight name -> bool tensor of the weight's shape (True: kept). Biases have no entry."""


def prunable(names: Any) -> list[str]:
    """The parameters pruning applies to: every weight matrix, first and last layers included."""
    return [n for n in names if n.endswith(".weight")]


def full_mask(params: Params) -> Mask:
    return {k: torch.ones_like(params[k], dtype=torch.bool) for k in prunable(params)}


def mask_size(mask: Mask) -> tuple[int, int]:
    """(surviving weights, prunable weights)."""
    return sum(int(m.sum()) for m in mask.values()), sum(m.numel() for m in mask.values())


def stored_values(n_params: int, mask: Mask | None) -> int:
    """What a fitted file stores: every parameter, or the surviving weights plus everything unpruned."""
    if mask is None:
        return n_params
    alive, total = mask_size(mask)
    return n_params - total + alive


def density(mask: Mask) -> float:
    alive, total = mask_size(mask)
    return alive / total


def apply_mask(params: Params, mask: Mask) -> Params:
    """Weights times their mask (batched or not: the mask broadcasts over a leading batch dimension)."""
    return {k: v * mask[k] if k in mask else v for k, v in params.items()}


class Masked:
    """A field whose weights are multiplied by a fixed mask in every forward pass.

    It has its base field's name, config and parameter shapes, so everything that
    takes a field takes it; only the values it computes differ.
    """

    def __init__(self, base: Field, mask: Mask):
        self.base, self.mask = base, mask
        self.name, self.config = base.name, base.config

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.base.param_shapes()

    def init_params(self, generator: torch.Generator) -> Params:
        return apply_mask(self.base.init_params(generator), self.mask)

    def __call__(self, params: Params, coords: Tensor, *, features: bool = False):
        mask = {k: m.to(params[k].device) for k, m in self.mask.items()}
        return self.base(apply_mask(params, mask), coords, features=features)

    def __getattr__(self, name: str):  # the unit interface (unit_coords, to_units, ...) is the base field's
        return getattr(self.base, name)


# -- storage: the mask as bits ------------------------------------------------------


def pack_mask(mask: Mask) -> Tensor:
    """All masks, flattened in parameter order and concatenated, as packed bits: uint8 [ceil(total / 8)]."""
    bits = torch.cat([m.flatten().cpu() for m in mask.values()]).numpy()
    return torch.from_numpy(np.packbits(bits))


def unpack_mask(packed: Tensor, shapes: dict[str, tuple[int, ...]]) -> Mask:
    total = sum(math.prod(s) for s in shapes.values())
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (total + 7) // 8:
        raise ValueError(f"packed mask must be uint8 [{(total + 7) // 8}], got {packed.dtype} {list(packed.shape)}")
    bits = torch.from_numpy(np.unpackbits(packed.numpy(), count=total).astype(bool))
    out, start = {}, 0
    for k, s in shapes.items():
        n = math.prod(s)
        out[k] = bits[start : start + n].view(s)
        start += n
    return out


# -- dense-narrow: the dense field with as many values as a sparse one ----------------


def narrow_width(field: Field, values: int) -> int:
    """The hidden width of a dense field like ``field`` (same depth, input, output) whose
    parameter count is closest to ``values`` (surviving weights plus biases of a sparse one)."""
    def count(width: int) -> int:
        config = field_config_dict(field) | {"width": width}
        return count_params(build_field(field.name, config))

    if "width" not in {f.name for f in dataclasses.fields(field.config)}:
        raise ConfigError("--field", f"the {field.name!r} field has no width to narrow")
    lo, hi = 1, field.config.width
    while lo < hi:  # the smallest width with at least ``values`` parameters
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < values else (lo, mid)
    return min((w for w in (lo - 1, lo) if w >= 1), key=lambda w: abs(count(w) - values))


__all__ = ["Mask", "Masked", "apply_mask", "density", "full_mask", "mask_size", "narrow_width", "pack_mask", "prunable",
           "stored_values", "unpack_mask"]
