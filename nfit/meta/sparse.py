"""Meta-SparseINR (Lee et al. 2021): meta-learning with global pruning and one shared mask.

Training alternates rounds: each removes ``prune_fraction`` of the remaining
weights (globally over every weight matrix, biases never), then meta-trains the
surviving ones with the mask applied in the inner and the outer loop. The mask
belongs to the initialisation, not to a signal, so a fitted file needs to store
only the surviving values. Masks are nested: a weight pruned in round r stays
pruned, and every round's result is kept as a level a user can fit at.

The mask is applied by :class:`nfit.fields.masked.Masked`, a field that multiplies each weight by its
mask in the forward pass. Every gradient of a pruned weight is then exactly zero,
so SGD and Adam leave a pruned weight where it is (at zero) without any special
case in the inner loop, the outer loop or test-time fitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from nfit.errors import ConfigError
from nfit.fields import Field, Params
from nfit.fields.masked import Mask, Masked, density, full_mask, mask_size
from nfit.meta.base import OuterResult, Phases, Strategy, build_strategy, register_strategy
from nfit.meta.inner import InnerOps

PRUNE_METHODS = ("magnitude", "random")


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
class Sparse(Phases):
    """Meta-SparseINR: rounds of global pruning, each followed by meta-training with the mask.

    ``outer_loss`` is the inner strategy's, on whatever field it is given: the outer
    loop hands it the :class:`Masked` field, whose mask :meth:`begin_round` narrows.
    """

    name: ClassVar[str] = "sparse"
    Config: ClassVar[type] = SparseConfig
    keeps_levels: ClassVar[bool] = True  # every round's result, and the dense start as level 0

    def __init__(self, config: SparseConfig, inner: Strategy):
        self.config, self.inner = config, inner

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Sparse:
        """Sparse options go to :class:`SparseConfig`; the rest to the inner strategy."""
        own = {k: options[k] for k in SparseConfig.__dataclass_fields__ if k in options}
        config = SparseConfig(**own)
        return cls(config, build_strategy(config.inner, {k: v for k, v in options.items() if k not in own}))

    def outer_loss(self, field: Field, theta: Params, coords: Tensor, targets: Tensor,
                   ops: InnerOps | None = None) -> OuterResult:
        return self.inner.outer_loss(field, theta, coords, targets, ops)

    def round_starts(self, step: int) -> int | None:
        """The round (1-based) that begins before outer step ``step`` (0-based), or None."""
        spr = self.config.steps_per_round
        return step // spr + 1 if step % spr == 0 and step < self.config.steps else None

    def round_ends(self, done: int) -> int | None:
        """The round completed by ``done`` outer steps, or None."""
        spr = self.config.steps_per_round
        return done // spr if done % spr == 0 and 0 < done <= self.config.steps else None

    # -- the outer loop's hooks (nfit.meta.base.Phases): rounds are its phases

    @property
    def dense(self) -> Strategy:
        return self.inner

    def prepare(self, field: Field, theta: Params) -> tuple[Field, Mask]:
        mask = {k: m.to(next(iter(theta.values())).device) for k, m in full_mask(theta).items()}
        return Masked(field, mask), mask

    def level_at(self, step: int) -> int:
        return -(-step // self.config.steps_per_round)  # rounds begun

    def begin_step(self, step: int, theta: Params, mask: Mask, adam: dict[str, dict[str, Tensor]],
                   seed: int) -> dict[str, Any] | None:
        level = self.round_starts(step)
        if level is None:
            return None
        self.begin_round(level, theta, mask, adam, seed)
        return {"level": level, "rounds": self.config.rounds, "density": round(density(mask), 6),
                "alive": mask_size(mask)[0]}

    def phase_ends(self, done: int) -> bool:
        return self.round_ends(done) is not None

    def progress(self, mask: Mask, level: int) -> dict[str, Any]:
        return {"level": level, "density": round(density(mask), 6)}

    def describe(self, mask: Mask, level: int) -> dict[str, Any]:
        alive, total = mask_size(mask)
        c = self.config
        return {"level": level, "rounds": c.rounds, "density": round(alive / total, 6), "alive": alive, "weights": total,
                "prune": c.prune, "prune_fraction": c.prune_fraction, "steps_per_round": c.steps_per_round}

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


__all__ = ["Sparse", "SparseConfig", "level_alive", "prune"]
