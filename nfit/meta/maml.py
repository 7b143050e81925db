"""Learnit / MAML: K inner SGD steps on the full context, then the full-context MSE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from nfit.fields import Field, Params
from nfit.meta.base import OuterResult, Phases, check_positive, register_strategy
from nfit.meta.inner import CHECKPOINT_CHUNK, InnerOps, eager_ops, expand_params


@dataclass(frozen=True)
class MamlConfig:
    inner_steps: int = 4  # K (GradNCP's baseline; Learnit and Meta-SparseINR use 2)
    inner_lr: float = 1e-2  # alpha
    first_order: bool = False
    # Recompute activations in the backward pass instead of keeping them (see GradNCPConfig).
    gradient_checkpointing: bool = False

    def __post_init__(self):
        check_positive(inner_steps=self.inner_steps, inner_lr=self.inner_lr)


@register_strategy
class Maml(Phases):
    name: ClassVar[str] = "maml"
    Config: ClassVar[type] = MamlConfig

    def __init__(self, config: MamlConfig):
        self.config = config

    def adapt(self, field: Field, theta: Params, coords: Tensor, targets: Tensor, ops: InnerOps | None = None) -> Params:
        """theta_K for every signal: [B, ...], differentiable to theta (to first order if asked).

        theta: unbatched; coords [N, d] or [B, N, d]; targets [B, N, C]. ``ops``: how to
        differentiate (default: eager, checkpointed as the config says; nfit.meta.compiled
        passes torch.func's).
        """
        c = self.config
        ops = ops if ops is not None else eager_ops(c.gradient_checkpointing)
        params = expand_params(theta, targets.shape[0])
        for _ in range(c.inner_steps):
            params = ops.step(field, params, coords, targets, c.inner_lr, not c.first_order)
        return params

    def outer_loss(self, field: Field, theta: Params, coords: Tensor, targets: Tensor,
                   ops: InnerOps | None = None) -> OuterResult:
        """The full-context MSE [B] of theta_K, averaged over the batch; ``ops`` as in :meth:`adapt`."""
        ops = ops if ops is not None else eager_ops(self.config.gradient_checkpointing)
        params = self.adapt(field, theta, coords, targets, ops)
        mse = ops.mse(field, params, coords, targets, CHECKPOINT_CHUNK)  # [B]
        return OuterResult(mse.mean(), mse.detach())
