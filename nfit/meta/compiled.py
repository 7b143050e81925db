"""``--compile``: the whole outer step (loss and its gradient to theta) as one torch.compile'd function.

torch.compile cannot sit under the eager second-order path: ``autograd.grad(...,
create_graph=True)`` through a compiled region needs the compiled backward to be
differentiable again, which AOTAutograd does not support (it fails at the first
inner step). So the compiled path runs the strategy's own ``outer_loss`` with the
functional primitives (:data:`nfit.meta.inner.FUNCTIONAL`: ``torch.func.grad`` for
every inner gradient) under ``torch.func.grad_and_value`` for the outer one, and
compiles that: Dynamo traces the nested transforms into one forward graph (the K
inner steps unrolled), and no autograd runs through compiled code. Each algorithm is
stated once, in its strategy; tests/test_compile.py checks the two paths agree.

Supported: maml and gradncp on any field (second or first order). The graph is
specialised to the batch and grid sizes (``dynamic=False``): a smaller last
micro-batch compiles once more.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad_and_value

from nfit.errors import ConfigError
from nfit.fields import Field, Params
from nfit.meta.base import Strategy
from nfit.meta.inner import FUNCTIONAL

COMPILABLE = ("maml", "gradncp")
StepFn = Callable[[Params, Tensor, Tensor], tuple[dict[str, Tensor], tuple[Tensor, Tensor]]]


def functional_outer_loss(strategy: Strategy, field: Field) -> Callable[[Params, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(theta, coords [N, d], targets [B, N, C]) -> (mean outer loss, per-signal MSE [B] detached)``:
    ``strategy.outer_loss`` with the torch.func primitives, differentiable (and compilable) whole."""
    if strategy.name not in COMPILABLE:
        raise ConfigError("--compile", f"applies to {' and '.join(COMPILABLE)}, not --algo {strategy.name}")

    def loss(theta: Params, coords: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        out = strategy.outer_loss(field, theta, coords, targets, FUNCTIONAL)
        return out.loss, out.mse

    return loss


def outer_step(strategy: Strategy, field: Field, compile: bool = True, backend: str = "inductor") -> StepFn:
    """``(theta, coords, targets) -> (gradients to theta, (loss, per-signal MSE))``; ``theta`` plain tensors."""
    step = grad_and_value(functional_outer_loss(strategy, field), has_aux=True)
    return torch.compile(step, dynamic=False, backend=backend) if compile else step


__all__ = ["COMPILABLE", "functional_outer_loss", "outer_step"]
