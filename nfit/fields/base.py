"""What every field shares: batched parameters, the batched linear layer, the registry.

A field is a coordinate network whose parameters are *batched per signal*: each
tensor carries a leading dimension B, one slice per signal, so a batch of B
signals is fitted with one batched matmul per layer. Field objects hold only their
configuration; parameters are passed in explicitly, which keeps the numerical core
a set of pure functions that inner loops (SGD, MAML, GradNCP) can differentiate
through.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from nfit.errors import ConfigError

Params = dict[str, Tensor]
"""Parameter name -> tensor. Batched: ``[B, *shape]``; unbatched: ``[*shape]``."""


class Field(Protocol):
    """The interface every registered field implements."""

    name: ClassVar[str]
    config: Any  # the field's own frozen dataclass

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Unbatched shape of every parameter, in a fixed order."""
        ...

    def init_params(self, generator: torch.Generator) -> Params:
        """A fresh unbatched initialisation (float32, CPU), drawn from ``generator``."""
        ...

    def __call__(
        self, params: Params, coords: Tensor, *, features: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Evaluate B fields at coordinates.

        params: batched ``[B, ...]``; coords: ``[N, in_dim]`` (shared by all
        signals) or ``[B, N, in_dim]``. Returns values ``[B, N, out_dim]`` and,
        with ``features=True``, also the penultimate features ``[B, N, width]``
        (the input of the last linear layer, which GradNCP's score needs).
        """
        ...


FIELDS: dict[str, type] = {}


def register_field(cls: type) -> type:
    """Class decorator: make a field available by its ``name``."""
    FIELDS[cls.name] = cls
    return cls


def build_field(name: str, config: dict[str, Any]) -> Field:
    """Rebuild a field from its registry name and its config as a plain dict."""
    if name not in FIELDS:
        raise ConfigError(None, f"unknown field {name!r} (known: {', '.join(sorted(FIELDS))})")
    cls = FIELDS[name]
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(config) - known
    if unknown:
        raise ConfigError(None, f"field {name!r} has no option(s) {', '.join(sorted(unknown))}")
    try:
        return cls(cls.Config(**config))
    except (TypeError, ValueError) as err:
        raise ConfigError(None, f"invalid {name!r} config: {err}") from None


def field_config_dict(field: Field) -> dict[str, Any]:
    return dataclasses.asdict(field.config)


def mlp_param_shapes(dims: list[int]) -> dict[str, tuple[int, ...]]:
    """Shapes of the linear layers of an MLP with layer sizes ``dims``: l{i}.weight [out, in], l{i}.bias [out]."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        shapes[f"l{i}.weight"] = (d_out, d_in)
        shapes[f"l{i}.bias"] = (d_out,)
    return shapes


def linear(x: Tensor, weight: Tensor, bias: Tensor, scale: float = 1.0) -> Tensor:
    """Per-signal affine map ``scale * (x W^T + b)``: x [B, N, in] or [N, in], weight [B, out, in],
    bias [B, out] -> [B, N, out]. The scale rides in baddbmm's alpha and beta (SIREN's w0), so
    it costs no extra pass over the activations, forward or backward."""
    if x.dim() == 2:  # coordinates shared by every signal: a stride-0 view, no copy
        x = x.expand(weight.shape[0], *x.shape)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2), beta=scale, alpha=scale)


def batch_params(params: Params, batch: int) -> Params:
    """Repeat one unbatched initialisation for B signals: [*s] -> [B, *s] (a real copy)."""
    return {k: v.unsqueeze(0).repeat(batch, *([1] * v.dim())) for k, v in params.items()}


def unbatch_params(params: Params, index: int) -> Params:
    """The parameters of signal ``index`` of a batch: [B, *s] -> [*s]."""
    return {k: v[index] for k, v in params.items()}


def stack_params(many: list[Params]) -> Params:
    """Stack unbatched parameter sets into one batch: B x [*s] -> [B, *s]."""
    return {k: torch.stack([p[k] for p in many]) for k in many[0]}


def count_params(field: Field) -> int:
    n = 0
    for shape in field.param_shapes().values():
        size = 1
        for s in shape:
            size *= s
        n += size
    return n


def uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> Tensor:
    """U(-bound, bound), drawn on the CPU so a seed gives the same field on every device."""
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).mul_(bound).float()
