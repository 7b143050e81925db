"""Analytic matmul FLOP counts of nfit's SIREN and of one meta-learning outer step.

Pure functions of the sizes: they count the FLOPs of the matrix products only
(``baddbmm``/``bmm``), 2 x M x N x K per product, which is what
``torch.utils.flop_counter.FlopCounterMode`` counts too (it ignores the bias add,
sines, losses, the SGD updates and everything elementwise); tests/test_flops.py
checks these counts against it exactly.

The counting rule. A layer of width ``d_in -> d_out`` evaluated at N points for B
signals is one product of ``c = 2 B N d_in d_out`` FLOPs. Differentiating a product
costs one product of the same size per operand that needs a gradient: the weight
always does (it depends on theta), the layer's input does except at the first
layer (the coordinates). So

* forward: ``c`` per layer;
* backward (first order, e.g. an inner gradient or a bootstrap step): ``2c``
  per layer, ``c`` at the first layer;
* a second-order inner step (``create_graph=True``) keeps the forward and the
  backward products in the graph, and the outer backward differentiates all of
  them again, each product's two operands now both depending on theta (the
  gradient dY depends on theta through the forward): per layer
  forward ``c`` + inner backward ``2c`` + outer backward of the forward ``2c`` and of
  the two backward products ``4c`` = ``9c`` (first layer: ``c + c + c + c = 4c``);
* the final full-context loss: forward plus outer backward, ``3c`` (first layer ``2c``).

GradNCP (nfit.meta.gradncp): every inner step first scores all N points (a
forward without a graph, ``c(N)``), then takes a second-order step on the kept
``floor(gamma N)`` points; the bootstrap target is L first-order full-context
steps (forward + backward, no graph kept), and the outer loss is one full-context
forward with its backward. With ``first_order`` an inner step costs forward +
backward only (its gradient is a constant to the outer backward).
"""

from __future__ import annotations

import math


def siren_dims(in_dim: int = 2, out_dim: int = 3, width: int = 256, depth: int = 5) -> list[int]:
    """Layer sizes of nfit's SIREN: depth linear layers."""
    return [in_dim] + [width] * (depth - 1) + [out_dim]


def _layers(dims: list[int], points: int, batch: int) -> list[int]:
    """FLOPs ``c`` of each layer's product at ``points`` points x ``batch`` signals."""
    return [2 * batch * points * a * b for a, b in zip(dims[:-1], dims[1:])]


def forward_flops(dims: list[int], points: int, batch: int = 1) -> int:
    """One forward pass of an MLP with layer sizes ``dims`` over N points x B signals."""
    return sum(_layers(dims, points, batch))


def backward_flops(dims: list[int], points: int, batch: int = 1) -> int:
    """One first-order backward (gradients of the parameters): 2c per layer, c at the first."""
    c = _layers(dims, points, batch)
    return 2 * sum(c) - c[0]


def inner_step_flops(dims: list[int], points: int, batch: int = 1, second_order: bool = True) -> int:
    """One inner SGD step, including what the outer backward spends on it: 9c / 4c (second
    order), or forward + backward (first order: the outer backward does not enter it)."""
    c = _layers(dims, points, batch)
    if not second_order:
        return forward_flops(dims, points, batch) + backward_flops(dims, points, batch)
    return 9 * sum(c) - 5 * c[0]


def outer_final_flops(dims: list[int], points: int, batch: int = 1) -> int:
    """The full-context outer loss: its forward and its backward."""
    return forward_flops(dims, points, batch) + backward_flops(dims, points, batch)


def maml_step_flops(dims: list[int], points: int, batch: int, inner_steps: int, first_order: bool = False) -> int:
    """One MAML outer step (loss + backward to theta): K full-context inner steps, then the outer loss."""
    return (inner_steps * inner_step_flops(dims, points, batch, not first_order)
            + outer_final_flops(dims, points, batch))


def gradncp_step_flops(dims: list[int], points: int, batch: int, inner_steps: int, gamma: float, boot_steps: int,
                       lam: float = 100.0, first_order: bool = False) -> int:
    """One GradNCP outer step: K x (score pass over N + pruned step at floor(gamma N)),
    the outer loss over N, and (when lam > 0) L first-order bootstrap steps over N."""
    kept = max(1, math.floor(gamma * points))
    score = forward_flops(dims, points, batch)
    total = inner_steps * (score + inner_step_flops(dims, kept, batch, not first_order))
    total += outer_final_flops(dims, points, batch)
    if lam > 0 and boot_steps > 0:
        total += boot_steps * (forward_flops(dims, points, batch) + backward_flops(dims, points, batch))
    return total


def meta_step_flops(algo: str, dims: list[int], points: int, batch: int, config) -> int:
    """Dispatch on a strategy's name and config (MamlConfig or GradNCPConfig)."""
    if algo == "maml":
        return maml_step_flops(dims, points, batch, config.inner_steps, config.first_order)
    if algo == "gradncp":
        return gradncp_step_flops(dims, points, batch, config.inner_steps, config.gamma, config.boot_steps,
                                  config.lam, config.first_order)
    raise ValueError(f"no FLOP count for {algo!r}")


def fit_step_flops(dims: list[int], points: int, batch: int = 1) -> int:
    """One full-context fitting step (Adam or SGD): forward + backward."""
    return forward_flops(dims, points, batch) + backward_flops(dims, points, batch)


__all__ = ["backward_flops", "fit_step_flops", "forward_flops", "gradncp_step_flops", "inner_step_flops",
           "maml_step_flops", "meta_step_flops", "outer_final_flops", "siren_dims"]
