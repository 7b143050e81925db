"""GradNCP meta-training (Tack et al. 2023, Algorithm 1).

Inner loop: K second-order SGD steps, each on the top gamma fraction of a signal's
coordinates, re-ranked every step by the last-layer gradient norm (the points the
current field explains worst, weighted by how much the last layer can move them).
Outer loss: the full-context MSE at theta_K plus lambda times the distance from
theta_K to a bootstrapped target, L further first-order full-context steps from
theta_K, detached. The target lets a short pruned inner loop be corrected towards
where a longer full one would have gone, without its memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from nfit.errors import ConfigError
from nfit.fields import Field, Params
from nfit.meta.base import OuterResult, Phases, check_positive, register_strategy
from nfit.meta.inner import (
    EAGER,
    InnerOps,
    context_scores,
    context_size,
    eager_ops,
    expand_params,
    gather_context,
    param_distance,
    top_context,
)

MIN_CHUNK = 1 << 13  # below this many rows, splitting saves little memory and costs launches


@dataclass(frozen=True)
class GradNCPConfig:
    inner_steps: int = 16  # K
    inner_lr: float = 1e-2  # alpha
    gamma: float = 0.25  # fraction of the context kept at each inner step
    boot_steps: int = 5  # L
    boot_lr: float = 5e-2  # 5 x alpha
    lam: float = 100.0  # weight of the bootstrap distance
    first_order: bool = False
    # Points x signals per forward of the passes that keep no graph (scores, bootstrap).
    # None: as many as one pruned inner step, so these passes never hold more
    # activations at once than a step already keeps in its graph.
    chunk: int | None = None
    # Gradient checkpointing: keep no activations of the inner steps or of the outer loss, and
    # recompute them in the backward pass (nfit.meta.inner): same step, a fraction of the memory.
    gradient_checkpointing: bool = False

    def __post_init__(self):
        check_positive(inner_steps=self.inner_steps, inner_lr=self.inner_lr, boot_lr=self.boot_lr)
        if not 0 < self.gamma <= 1:
            raise ConfigError("--gamma", "must be in (0, 1]")
        if self.boot_steps < 0:
            raise ConfigError("--boot-steps", "must be >= 0")
        if not 0 <= self.lam < float("inf"):  # also refuses NaN
            raise ConfigError("--lam", "must be >= 0 and finite")


def bootstrap_target(
    field: Field, params: Params, coords: Tensor, targets: Tensor, steps: int, lr: float, chunk: int = 1 << 18,
    ops: InnerOps = EAGER,
) -> Params:
    """L first-order full-context SGD steps from ``params`` [B, ...]; the result carries no graph.

    The gradients are accumulated over chunks of points, so the bootstrap adds one
    chunk's activations to the peak memory, not a second full-resolution graph.
    """
    boot = {k: v.detach() for k, v in params.items()}
    for _ in range(steps):
        grads = ops.context_grad(field, boot, coords, targets, chunk)
        boot = {k: (v - lr * g).detach() for (k, v), g in zip(boot.items(), grads)}
    return boot


@register_strategy
class GradNCP(Phases):
    name: ClassVar[str] = "gradncp"
    Config: ClassVar[type] = GradNCPConfig

    def __init__(self, config: GradNCPConfig):
        self.config = config

    def context_chunk(self, field: Field, targets: Tensor) -> int:
        """Grid samples x signals per forward of the passes that keep no graph (scores, bootstrap)
        and per recomputed piece of the checkpointed outer loss; targets [B, N, C]."""
        batch, n, _ = targets.shape
        kept = batch * context_size(n, self.config.gamma) * field.samples_per_unit  # grid samples of one pruned step
        return self.config.chunk or max(kept, MIN_CHUNK)

    def adapt(self, field: Field, theta: Params, coords: Tensor, targets: Tensor, ops: InnerOps | None = None) -> Params:
        """theta_K after K pruned-context steps: [B, ...], differentiable to theta.

        theta: unbatched; coords [N, d]; targets [B, N, C]. ``ops``: how to differentiate
        (default: eager, checkpointed as the config says; nfit.meta.compiled passes torch.func's).
        """
        c = self.config
        ops = ops if ops is not None else eager_ops(c.gradient_checkpointing)
        chunk = self.context_chunk(field, targets)
        params = expand_params(theta, targets.shape[0])
        for _ in range(c.inner_steps):
            # the ranking is no part of the graph: scored without one (detached also for torch.func)
            scores = context_scores(field, {k: v.detach() for k, v in params.items()}, coords, targets, chunk)
            index = top_context(scores, c.gamma)  # [B, k]
            sub_coords, sub_targets = gather_context(coords, targets, index)  # [B, k, d], [B, k, C]
            params = ops.step(field, params, sub_coords, sub_targets, c.inner_lr, not c.first_order)
        return params

    def outer_loss(self, field: Field, theta: Params, coords: Tensor, targets: Tensor,
                   ops: InnerOps | None = None) -> OuterResult:
        """Full-context MSE [B] of theta_K plus lambda times its distance to the bootstrap target,
        averaged over the batch; ``ops`` as in :meth:`adapt`."""
        c = self.config
        ops = ops if ops is not None else eager_ops(c.gradient_checkpointing)
        chunk = self.context_chunk(field, targets)
        params = self.adapt(field, theta, coords, targets, ops)
        mse = ops.mse(field, params, coords, targets, chunk)  # [B], the memory floor: one full forward in the graph
        loss = mse
        if c.lam > 0 and c.boot_steps > 0:
            target = bootstrap_target(field, params, coords, targets, c.boot_steps, c.boot_lr, chunk, ops)
            loss = mse + c.lam * param_distance(target, params)
        return OuterResult(loss.mean(), mse.detach())
