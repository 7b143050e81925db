"""Meta-SparseINR (Lee et al. 2021): meta-learning with global pruning and one shared mask.

Training alternates rounds: each removes ``prune_fraction`` of the remaining
weights (globally over every weight matrix, biases never), then meta-trains the
surviving ones with the mask applied in the inner and the outer loop. The mask
belongs to the initialisation, not to a signal, so a fitted file needs to store
only the surviving values. Masks are nested: a weight pruned in round r stays
pruned, and every round's result is kept as a level a user can fit at.

The mask is applied by :class:`Masked`, a field that multiplies each weight by its
mask in the forward pass. Every gradient of a pruned weight is then exactly zero,
so SGD and Adam leave a pruned weight where it is (at zero) without any special
case in the inner loop, the outer loop or test-time fitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from nfit.errors import ConfigError
from nfit.fields import Field, Params
from nfit.meta.base import OuterResult, Strategy, register_strategy

Mask = dict[str, Tensor]
"""Weight name -> bool tensor of the weight's shape (True: kept). Biases have no entry."""

PRUNE_METHODS = ("magnitude", "random")


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


def level_alive(total: int, fraction: float, level: int) -> int:
    """Weights that survive ``level`` rounds: round(total * (1 - fraction)^level).

    Computed from the total, not round by round, so rounding never accumulates:
    the density after k rounds is (1 - fraction)^k to within half a weight.
    """
    return max(1, round(total * (1.0 - fraction) ** level))


def prune(mask: Mask, scores: dict[str, Tensor], keep: int) -> Mask:
    """Keep the ``keep`` surviving weights with the largest scores, over all matrices at once.

    Already-pruned weights are never revived (the masks are nested). Ties are broken
    by position (a stable sort), so the result is deterministic.
    """
    names = list(mask)
    alive = torch.cat([mask[k].flatten() for k in names])
    s = torch.cat([scores[k].detach().flatten().float().cpu() for k in names])
    s = torch.where(alive.cpu(), s, torch.tensor(-math.inf))
    if keep > int(alive.sum()):
        raise ValueError(f"cannot keep {keep} of {int(alive.sum())} surviving weights")
    order = torch.sort(s, descending=True, stable=True).indices[:keep]
    kept = torch.zeros_like(alive, device="cpu")
    kept[order] = True
    out, start = {}, 0
    for k in names:
        n = mask[k].numel()
        out[k] = kept[start : start + n].view_as(mask[k]).to(mask[k].device)
        start += n
    return out


def prune_scores(theta: Params, mask: Mask, method: str, generator: torch.Generator) -> dict[str, Tensor]:
    """What pruning ranks by: |theta| (Meta-SparseINR), or uniform noise (the random-pruning baseline)."""
    if method == "magnitude":
        return {k: theta[k].detach().abs() for k in mask}
    if method == "random":
        return {k: torch.rand(mask[k].shape, generator=generator) for k in mask}
    raise ConfigError("--prune", f"unknown pruning method {method!r} (known: {', '.join(PRUNE_METHODS)})")


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
    import dataclasses

    from nfit.fields import build_field, count_params, field_config_dict

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


# -- the strategy: an inner strategy run on the masked field, plus the round schedule --


@dataclass(frozen=True)
class SparseConfig:
    rounds: int = 20
    prune_fraction: float = 0.2  # of the REMAINING weights, each round
    steps_per_round: int = 500  # the paper: 30k (on a GPU, for days)
    prune: str = "magnitude"  # or "random": the random-pruning baseline
    inner: str = "maml"  # the strategy run inside each round: maml (as the paper) or gradncp

    def __post_init__(self):
        if self.rounds < 1:
            raise ConfigError("--rounds", "must be >= 1")
        if not 0 < self.prune_fraction < 1:
            raise ConfigError("--prune-fraction", "must be in (0, 1)")
        if self.steps_per_round < 1:
            raise ConfigError("--steps-per-round", "must be >= 1")
        if self.prune not in PRUNE_METHODS:
            raise ConfigError("--prune", f"must be one of {', '.join(PRUNE_METHODS)}, not {self.prune!r}")
        if self.inner == "sparse":
            raise ConfigError("--inner", "must be a dense strategy (maml or gradncp)")

    @property
    def steps(self) -> int:
        return self.rounds * self.steps_per_round


@register_strategy
class Sparse:
    """Meta-SparseINR: rounds of global pruning, each followed by meta-training with the mask.

    ``outer_loss`` is the inner strategy's, on whatever field it is given: the outer
    loop hands it the :class:`Masked` field, whose mask :meth:`begin_round` narrows.
    """

    name: ClassVar[str] = "sparse"
    Config: ClassVar[type] = SparseConfig

    def __init__(self, config: SparseConfig, inner: Strategy):
        self.config, self.inner = config, inner

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Sparse:
        """Sparse options go to :class:`SparseConfig`; the rest to the inner strategy."""
        from nfit.meta.base import build_strategy

        own = {k: options[k] for k in SparseConfig.__dataclass_fields__ if k in options}
        config = SparseConfig(**own)
        return cls(config, build_strategy(config.inner, {k: v for k, v in options.items() if k not in own}))

    def outer_loss(self, field: Field, theta: Params, coords: Tensor, targets: Tensor) -> OuterResult:
        return self.inner.outer_loss(field, theta, coords, targets)

    def round_starts(self, step: int) -> int | None:
        """The round (1-based) that begins before outer step ``step`` (0-based), or None."""
        spr = self.config.steps_per_round
        return step // spr + 1 if step % spr == 0 and step < self.config.steps else None

    def round_ends(self, done: int) -> int | None:
        """The round completed by ``done`` outer steps, or None."""
        spr = self.config.steps_per_round
        return done // spr if done % spr == 0 and 0 < done <= self.config.steps else None

    @torch.no_grad()
    def begin_round(self, level: int, theta: Params, mask: Mask, adam_state: dict[str, dict[str, Tensor]],
                    seed: int) -> None:
        """Prune to ``level``'s density, in place: the mask, theta and Adam's moments of the pruned weights.

        Zeroing the moments makes every later Adam update of a pruned weight exactly
        zero (0 / (0 + eps)); the survivors keep their state (no rewinding).
        """
        total = mask_size(mask)[1]
        generator = torch.Generator().manual_seed(seed * 1000 + level)  # random pruning: one draw per round
        new = prune(mask, prune_scores(theta, mask, self.config.prune, generator), level_alive(total, self.config.prune_fraction, level))
        for k, m in new.items():
            mask[k].copy_(m)
            theta[k].mul_(m)
            for moment in adam_state.get(k, {}).values():
                if moment.shape == m.shape:
                    moment.mul_(m)


__all__ = [
    "Mask",
    "Masked",
    "Sparse",
    "SparseConfig",
    "apply_mask",
    "density",
    "full_mask",
    "level_alive",
    "mask_size",
    "narrow_width",
    "pack_mask",
    "prunable",
    "prune",
    "stored_values",
    "unpack_mask",
]
