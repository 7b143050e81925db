"""Learnit / MAML: K inner SGD steps on the full context, then the full-context MSE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from nfit.fields import Field, Params
from nfit.meta.base import OuterResult, check_positive, register_strategy
from nfit.meta.inner import CHECKPOINT_CHUNK, checkpointed_mse, expand_params, inner_step, per_signal_mse


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
class Maml:
    name: ClassVar[str] = "maml"
    Config: ClassVar[type] = MamlConfig

    def __init__(self, config: MamlConfig):
        self.config = config

    def adapt(self, field: Field, theta: Params, coords: Tensor, targets: Tensor) -> Params:
        """theta_K for every signal: [B, ...], differentiable to theta (to first order if asked)."""
        c = self.config
        params = expand_params(theta, targets.shape[0])
        for _ in range(c.inner_steps):
            params = inner_step(field, params, coords, targets, c.inner_lr, not c.first_order, c.gradient_checkpointing)
        return params

    def outer_loss(self, field: Field, theta: Params, coords: Tensor, targets: Tensor) -> OuterResult:
        params = self.adapt(field, theta, coords, targets)
        if self.config.gradient_checkpointing:
            mse = checkpointed_mse(field, params, coords, targets, CHECKPOINT_CHUNK)  # [B]
        else:
            mse = per_signal_mse(field, params, coords, targets)  # [B]
        return OuterResult(mse.mean(), mse.detach())
