"""Inner-loop primitives shared by the meta-learning strategies and test-time fitting,
and the two ways (:class:`InnerOps`: eager autograd, torch.func) a strategy's outer loss
is differentiated.

Everything works on *batched* per-signal parameters ``[B, ...]`` (see
:mod:`nfit.fields.base`). The loss handed to ``torch.autograd.grad`` is the SUM of
per-signal losses, so the gradient with respect to the batched parameters is,
slice by slice, each signal's own gradient: one call serves the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torch.func import grad
from torch.utils.checkpoint import checkpoint

from nfit.fields import Field, Params

CHECKPOINT_CHUNK = 1 << 16  # grid samples x signals per recomputed piece of a checkpointed loss (maml)


def expand_params(theta: Params, batch: int) -> Params:
    """One shared initialisation viewed as a batch: [*s] -> [B, *s], no copy.

    Unlike :func:`nfit.fields.batch_params` this keeps the graph to ``theta``, so an
    outer loss on the adapted parameters backpropagates into the initialisation
    (summed over the batch by the expand's backward).
    """
    return {k: v.unsqueeze(0).expand(batch, *v.shape) for k, v in theta.items()}


def per_signal_mse(field: Field, params: Params, coords: Tensor, targets: Tensor) -> Tensor:
    """coords [N, d] or [B, N, d], targets [B, N, C] -> mean squared error per signal [B]."""
    return (field(params, coords) - targets).pow(2).mean(dim=(1, 2))


def context_pieces(field: Field, coords: Tensor, targets: Tensor, chunk: int) -> list[tuple[slice, Tensor, Tensor]]:
    """The context in pieces of about ``chunk`` grid samples x signals, so that a pass over
    it holds one piece's activations at a time: (units, coords [n, d] or [B, n, d],
    targets [B, n, C]) for each piece, in order."""
    batch, n, _ = targets.shape
    step = max(1, chunk // (batch * field.samples_per_unit))
    units = (slice(lo, min(lo + step, n)) for lo in range(0, n, step))
    return [(u, coords[u] if coords.dim() == 2 else coords[:, u], targets[:, u]) for u in units]


def checkpointed_mse(field: Field, params: Params, coords: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """:func:`per_signal_mse` that keeps no activations: [B].

    Each piece of the context (:func:`context_pieces`) has its forward recomputed in the
    backward pass (torch.utils.checkpoint) instead of kept. A full-context loss then holds
    one piece's activations, not the whole signal's, for the price of one more forward.
    Same value and gradient.
    """
    _, n, channels = targets.shape
    names = list(params)

    def sse(c: Tensor, t: Tensor, *values: Tensor) -> Tensor:  # params as arguments: checkpoint saves only its inputs
        return (field(dict(zip(names, values)), c) - t).pow(2).sum(dim=(1, 2))

    pieces = context_pieces(field, coords, targets, chunk)
    total = sum(checkpoint(sse, c, t, *params.values(), use_reentrant=False) for _, c, t in pieces)
    return total / (n * channels)


def inner_step(field: Field, params: Params, coords: Tensor, targets: Tensor, lr: float, second_order: bool,
               recompute: bool = False) -> Params:
    """One SGD step of every signal on its MSE over ``coords``, ``targets`` [B, k, C].

    ``recompute`` (second order only) keeps none of the step's graph: its forward and
    backward are run again when the outer backward reaches them (torch.utils.checkpoint;
    autograd.grad inside the region is supported by the non-reentrant variant). A
    meta-step of K steps then holds K parameter sets and one step's activations instead
    of K steps' activations, for one more forward and backward per step. Same result.
    """
    if not (recompute and second_order):  # a first-order step keeps no activations anyway
        return sgd_step(params, inner_grads(per_signal_mse(field, params, coords, targets), params, second_order), lr)
    names = list(params)

    def step(c: Tensor, t: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
        return tuple(inner_step(field, dict(zip(names, values)), c, t, lr, True).values())

    return dict(zip(names, checkpoint(step, coords, targets, *params.values(), use_reentrant=False)))


def _per_signal(lr: float | Tensor, like: Tensor) -> float | Tensor:
    """A scalar, or one step size per signal [B] broadcast against a batched parameter."""
    return lr if not isinstance(lr, Tensor) else lr.view(-1, *([1] * (like.dim() - 1)))


def sgd_step(params: Params, grads: dict[str, Tensor] | list[Tensor], lr: float | Tensor) -> Params:
    """theta - lr * g, with ``lr`` a scalar or one value per signal [B]."""
    grads = list(grads.values()) if isinstance(grads, dict) else grads
    return {k: v - _per_signal(lr, v) * g for (k, v), g in zip(params.items(), grads)}


def inner_grads(loss_per_signal: Tensor, params: Params, second_order: bool) -> list[Tensor]:
    """Per-signal gradients of a [B] loss. ``second_order`` keeps their graph, so the outer
    loss differentiates through the update (MAML); without it the update is a constant
    shift and the outer gradient is first-order (FOMAML)."""
    return list(torch.autograd.grad(loss_per_signal.sum(), list(params.values()), create_graph=second_order))


def global_norm(grads: list[Tensor] | dict[str, Tensor]) -> Tensor:
    """The norm of each signal's gradient over ALL its parameters together: -> [B]."""
    grads = list(grads.values()) if isinstance(grads, dict) else grads
    return torch.sqrt(sum(g.pow(2).flatten(1).sum(dim=1) for g in grads))


def param_distance(a: Params, b: Params) -> Tensor:
    """||a - b||_2 per signal over all parameters concatenated (not squared, not normalised): [B].

    The clamp keeps the gradient finite (zero) where a == b; sqrt's is infinite at 0.
    """
    return torch.sqrt(sum((a[k] - b[k]).pow(2).flatten(1).sum(dim=1) for k in a).clamp_min(1e-30))


# -- GradNCP's context pruning ------------------------------------------------------


@torch.no_grad()
def context_scores(field: Field, params: Params, coords: Tensor, targets: Tensor, chunk: int = 1 << 18) -> Tensor:
    """Score of every unit (a point, or a NeRV frame): the norm of the last layer's
    gradient of that unit's loss, from one forward pass (``field.unit_scores``).

    coords [N, d] or [B, N, d], targets [B, N, C] -> scores [B, N]. Evaluated over
    chunks of ``chunk`` grid samples x signals, so its memory stays below the graph it prunes.
    """
    scores = targets.new_empty(targets.shape[:2])
    for units, c, t in context_pieces(field, coords, targets, chunk):
        pred, h = field(params, c, features=True)
        scores[:, units] = field.unit_scores(pred - t, h)
    return scores


def context_size(n: int, gamma: float) -> int:
    """Points kept out of ``n``: floor(gamma * n), at least one."""
    return max(1, math.floor(gamma * n))


def top_context(scores: Tensor, gamma: float) -> Tensor:
    """Indices [B, k] of each signal's top floor(gamma * N) scores (topk: no full sort)."""
    return scores.topk(context_size(scores.shape[1], gamma), dim=1, sorted=False).indices


def gather_context(coords: Tensor, targets: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Per-signal subsets: coords [N, d], targets [B, N, C], index [B, k] -> [B, k, d], [B, k, C].

    Gather rather than boolean masks: every signal keeps the same number of points,
    so the result stays one dense batch.
    """
    rows = torch.arange(targets.shape[0], device=index.device).unsqueeze(1)  # [B, 1]
    # advanced indexing, not gather: gather's index would be as large as the result (a NeRV
    # unit is a whole frame), this one is [B, k]
    return coords[index], targets[rows, index]


def full_pass(
    field: Field,
    params: Params,
    coords: Tensor,
    targets: Tensor,
    chunk: int,
    *,
    grads: bool = True,
    scores: bool = False,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor | None]:
    """Gradient of the per-signal MSE over a whole context, accumulated over chunks of points.

    params: leaf tensors [B, ...]; coords [N, d] or [B, N, d]; targets [B, N, C] (N units).
    Returns (per-signal gradients, MSE [B], MSE of clamped predictions [B], and with
    ``scores`` GradNCP's per-unit score [B, N] from the same forward pass). With
    ``grads=False`` only the forward runs, without a graph, and the gradient list is empty.
    """
    batch, n, channels = targets.shape
    names = list(params)
    total = [torch.zeros_like(params[k]) for k in names] if grads else []
    sse = targets.new_zeros(batch)
    sse_clamped = targets.new_zeros(batch)
    score = targets.new_empty(batch, n) if scores else None
    for units, c, t in context_pieces(field, coords, targets, chunk):  # chunk counts grid samples x signals
        with torch.set_grad_enabled(grads):
            pred, h = field(params, c, features=True)  # [B, n, C], [B, n, width]
            err = pred - t
            per_signal = err.pow(2).sum(dim=(1, 2))  # [B]
        if grads:
            for g, part in zip(total, torch.autograd.grad(per_signal.sum() / (n * channels), [params[k] for k in names])):
                g += part
        with torch.no_grad():
            sse += per_signal
            sse_clamped += (pred.clamp(0.0, 1.0) - t).pow(2).sum(dim=(1, 2))
            if score is not None:
                score[:, units] = field.unit_scores(err, h)
    return total, sse.detach() / (n * channels), sse_clamped / (n * channels), score


# -- the differentiation primitives a strategy's outer loss is written against ----------


class InnerOps(Protocol):
    """How an outer loss differentiates: the three primitives MAML and GradNCP need.

    A strategy states its outer loss once, against these, and runs it two ways:
    :class:`EagerOps` (``torch.autograd.grad``, the reference, with optional gradient
    checkpointing) for the ordinary step, and :class:`FunctionalOps` (``torch.func.grad``)
    for ``--compile`` (nfit.meta.compiled), where no autograd may run through compiled code.
    """

    def step(self, field: Field, params: Params, coords: Tensor, targets: Tensor, lr: float,
             second_order: bool) -> Params:
        """One SGD step of every signal on its MSE over coords [k, d] or [B, k, d], targets [B, k, C]:
        params [B, ...] -> [B, ...], with a graph through the gradient iff ``second_order``."""
        ...

    def mse(self, field: Field, params: Params, coords: Tensor, targets: Tensor, chunk: int) -> Tensor:
        """Per-signal MSE [B] over the whole context, differentiable to ``params`` (the outer loss);
        ``chunk``: grid samples x signals per recomputed piece where the implementation checkpoints."""
        ...

    def context_grad(self, field: Field, params: Params, coords: Tensor, targets: Tensor,
                     chunk: int) -> list[Tensor]:
        """First-order gradient [B, ...] per parameter of each signal's full-context MSE, with no
        graph, accumulated over pieces of ``chunk`` grid samples x signals (GradNCP's bootstrap)."""
        ...


@dataclass(frozen=True)
class EagerOps:
    """The primitives in eager autograd: ``create_graph`` for second order; with ``checkpointing``,
    inner steps and the outer MSE recompute their activations in the backward pass (same values)."""

    checkpointing: bool = False

    def step(self, field: Field, params: Params, coords: Tensor, targets: Tensor, lr: float,
             second_order: bool) -> Params:
        return inner_step(field, params, coords, targets, lr, second_order, self.checkpointing)

    def mse(self, field: Field, params: Params, coords: Tensor, targets: Tensor, chunk: int) -> Tensor:
        if self.checkpointing:
            return checkpointed_mse(field, params, coords, targets, chunk)  # [B]
        return per_signal_mse(field, params, coords, targets)  # [B]: one full forward kept in the graph

    def context_grad(self, field: Field, params: Params, coords: Tensor, targets: Tensor,
                     chunk: int) -> list[Tensor]:
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():  # also under an outer no_grad: this gradient is the point
            return full_pass(field, leaves, coords, targets, chunk)[0]


@dataclass(frozen=True)
class FunctionalOps:
    """The primitives in torch.func: every gradient a ``torch.func.grad``, so that the whole outer
    loss can be differentiated by ``torch.func.grad_and_value`` and traced by Dynamo (the inner
    steps unrolled into one graph). No checkpointing: under torch.compile the compiler decides
    what to keep."""

    def step(self, field: Field, params: Params, coords: Tensor, targets: Tensor, lr: float,
             second_order: bool) -> Params:
        g = grad(lambda p: per_signal_mse(field, p, coords, targets).sum())(params)  # per-signal gradients [B, ...]
        return sgd_step(params, g if second_order else {k: v.detach() for k, v in g.items()}, lr)

    def mse(self, field: Field, params: Params, coords: Tensor, targets: Tensor, chunk: int) -> Tensor:
        return per_signal_mse(field, params, coords, targets)  # [B]

    def context_grad(self, field: Field, params: Params, coords: Tensor, targets: Tensor,
                     chunk: int) -> list[Tensor]:
        leaves = {k: v.detach() for k, v in params.items()}
        n, channels = targets.shape[1], targets.shape[2]
        total = [torch.zeros_like(v) for v in leaves.values()]
        for _units, c, t in context_pieces(field, coords, targets, chunk):  # as full_pass: a piece at a time

            def sse(p: Params, c: Tensor = c, t: Tensor = t) -> Tensor:
                return (field(p, c) - t).pow(2).sum() / (n * channels)

            total = [a + b.detach() for a, b in zip(total, grad(sse)(leaves).values())]
        return total


EAGER = EagerOps()
EAGER_CHECKPOINTED = EagerOps(checkpointing=True)
FUNCTIONAL = FunctionalOps()


def eager_ops(checkpointing: bool) -> InnerOps:
    """The eager primitives, with or without gradient checkpointing (a strategy's default)."""
    return EAGER_CHECKPOINTED if checkpointing else EAGER
