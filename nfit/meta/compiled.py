"""``--compile``: the whole outer step (loss and its gradient to theta) as one torch.compile'd function.

torch.compile cannot sit under the eager second-order path: ``autograd.grad(...,
create_graph=True)`` through a compiled region needs the compiled backward to be
differentiable again, which AOTAutograd does not support (it fails at the first
inner step). So the compiled path restates the outer loss functionally, with
``torch.func.grad`` for every inner gradient and ``torch.func.grad_and_value``
for the outer one, and compiles that: Dynamo traces the nested transforms into one
forward graph (the K inner steps unrolled), and no autograd runs through compiled
code. The eager strategies (nfit.meta.maml, nfit.meta.gradncp) stay the reference;
tests/test_compile.py checks the two agree.

Supported: maml and gradncp on any field (second or first order). The graph is
specialised to the batch and grid sizes (``dynamic=False``): a smaller last
micro-batch compiles once more.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, grad_and_value

from nfit.errors import ConfigError
from nfit.fields import Field, Params
from nfit.meta.inner import (
    context_pieces,
    context_scores,
    expand_params,
    gather_context,
    param_distance,
    per_signal_mse,
    top_context,
)

COMPILABLE = ("maml", "gradncp")
StepFn = Callable[[Params, Tensor, Tensor], tuple[dict[str, Tensor], tuple[Tensor, Tensor]]]


def _inner_grad(field: Field, params: Params, coords: Tensor, targets: Tensor, first_order: bool) -> Params:
    g = grad(lambda p: per_signal_mse(field, p, coords, targets).sum())(params)  # per-signal gradients [B, ...]
    return {k: v.detach() for k, v in g.items()} if first_order else g


def _sgd(params: Params, g: Params, lr: float) -> Params:
    return {k: v - lr * g[k] for k, v in params.items()}


def functional_outer_loss(strategy, field: Field) -> Callable[[Params, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(theta, coords, targets) -> (mean outer loss, per-signal MSE detached)``, the same value as
    ``strategy.outer_loss``, written with torch.func so that it can be differentiated (and compiled) whole."""
    c = strategy.config
    if strategy.name == "maml":

        def maml(theta: Params, coords: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
            params = expand_params(theta, targets.shape[0])
            for _ in range(c.inner_steps):
                params = _sgd(params, _inner_grad(field, params, coords, targets, c.first_order), c.inner_lr)
            mse = per_signal_mse(field, params, coords, targets)
            return mse.mean(), mse.detach()

        return maml
    if strategy.name == "gradncp":

        def gradncp(theta: Params, coords: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
            chunk = strategy._chunk(field, targets)
            params = expand_params(theta, targets.shape[0])
            for _ in range(c.inner_steps):
                scores = context_scores(field, {k: v.detach() for k, v in params.items()}, coords, targets, chunk)
                sub_coords, sub_targets = gather_context(coords, targets, top_context(scores, c.gamma))
                params = _sgd(params, _inner_grad(field, params, sub_coords, sub_targets, c.first_order), c.inner_lr)
            mse = per_signal_mse(field, params, coords, targets)
            loss = mse
            if c.lam > 0 and c.boot_steps > 0:
                boot = {k: v.detach() for k, v in params.items()}
                n = targets.shape[1]
                pieces = context_pieces(field, coords, targets, chunk)
                for _ in range(c.boot_steps):  # first order, over chunks of points like nfit.fit.full_pass
                    total = {k: torch.zeros_like(v) for k, v in boot.items()}
                    for _units, part, sub in pieces:

                        def sse(p, part=part, sub=sub):
                            return (field(p, part) - sub).pow(2).sum() / (n * sub.shape[2])

                        g = grad(sse)(boot)
                        total = {k: total[k] + g[k].detach() for k in total}
                    boot = _sgd(boot, total, c.boot_lr)
                loss = mse + c.lam * param_distance(boot, params)
            return loss.mean(), mse.detach()

        return gradncp
    raise ConfigError("--compile", f"applies to {' and '.join(COMPILABLE)}, not --algo {strategy.name}")


def outer_step(strategy, field: Field, compile: bool = True, backend: str = "inductor") -> StepFn:
    """``(theta, coords, targets) -> (gradients to theta, (loss, per-signal MSE))``; ``theta`` plain tensors."""
    step = grad_and_value(functional_outer_loss(strategy, field), has_aux=True)
    return torch.compile(step, dynamic=False, backend=backend) if compile else step


__all__ = ["COMPILABLE", "functional_outer_loss", "outer_step"]
