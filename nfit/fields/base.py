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
import math
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from nfit.errors import ConfigError
from nfit.signals.grid import grid_coords

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
        """Evaluate B fields at the coordinates of N units.

        params: batched ``[B, ...]``; coords: ``[N, in_dim]`` (shared by all
        signals) or ``[B, N, in_dim]``. Returns values ``[B, N, out_dim]`` and,
        with ``features=True``, also the input of the last layer ``[B, N, F]``,
        which GradNCP's score needs.
        """
        ...

    # How a signal on a grid is presented to the field. A *unit* is what one
    # coordinate yields: one grid sample for pointwise fields (SIREN), a whole
    # frame for NeRV. Fitting, meta-learning and context pruning work on units,
    # so GradNCP prunes points for SIREN and frames for NeRV with the same code.

    def grid_error(self, shape: tuple[int, ...], channels: int) -> str | None:
        """Why this field cannot represent signals of grid ``shape`` and ``channels``, or None."""
        ...

    def unit_count(self, shape: tuple[int, ...]) -> int:
        """Units in a signal of grid ``shape``."""
        ...

    def unit_size(self, shape: tuple[int, ...]) -> int:
        """Grid samples per unit."""
        ...

    def unit_coords(
        self, shape: tuple[int, ...], start: int = 0, stop: int | None = None, *, device=None
    ) -> Tensor:
        """Coordinates ``[stop - start, in_dim]`` of units start .. stop-1."""
        ...

    def to_units(self, values: Tensor) -> Tensor:
        """Targets ``[B, *shape, C]`` -> ``[B, N, out_dim]``."""
        ...

    def from_units(self, out: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Outputs of n consecutive units ``[B, n, out_dim]`` -> their grid samples ``[B, n * unit_size, C]``
        on a grid of ``shape`` (which may differ from the one the field was fitted on)."""
        ...

    def unit_scores(self, err: Tensor, h: Tensor) -> Tensor:
        """GradNCP's score of each unit: the norm of the last layer's gradient of that unit's loss
        0.5 ||f - y||^2, from the errors ``[B, n, out_dim]`` and the last layer's input ``[B, n, F]``: -> [B, n]."""
        ...


class Pointwise:
    """The unit interface of fields evaluated sample by sample: one unit per grid sample."""

    samples_per_unit = 1  # grid samples one unit yields: sizes chunks of work in samples

    def grid_error(self, shape: tuple[int, ...], channels: int) -> str | None:
        c = self.config
        if c.in_dim != len(shape) or c.out_dim != channels:
            return f"field maps {c.in_dim}-D to {c.out_dim} channels, signal is {len(shape)}-D with {channels}"
        return None

    def unit_count(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape)

    def unit_size(self, shape: tuple[int, ...]) -> int:
        return 1

    def unit_coords(self, shape, start=0, stop=None, *, device=None) -> Tensor:
        return grid_coords(shape, start, stop, device=device)  # [n, len(shape)]

    def to_units(self, values: Tensor) -> Tensor:
        return values.reshape(values.shape[0], -1, values.shape[-1])  # [B, N, C]

    def from_units(self, out: Tensor, shape: tuple[int, ...]) -> Tensor:
        return out

    def unit_scores(self, err: Tensor, h: Tensor) -> Tensor:
        # For one point the last layer (W, b) gets the gradient (f - y) [h; 1]^T: an outer
        # product whose Frobenius norm is the product of the two vector norms, so it is never formed.
        return err.norm(dim=-1) * torch.sqrt(h.pow(2).sum(dim=-1) + 1.0)


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
