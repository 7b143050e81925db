"""SIREN: a sine-activated MLP (Sitzmann et al. 2020), batched per signal.

``depth`` counts linear layers: depth - 1 sine layers, then a linear output. At
width 256 and depth 5 with 2-D input and 3 channels this is GradNCP's image field:
198,915 parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from nfit.fields.base import Params, Pointwise, linear, mlp_param_shapes, register_field, uniform


@dataclass(frozen=True)
class SirenConfig:
    in_dim: int = 2
    out_dim: int = 3
    width: int = 256
    depth: int = 5
    w0: float = 30.0  # frequency of the hidden sine layers
    w0_first: float | None = None  # first layer's frequency; None: same as w0
    out_offset: float = 0.5  # a zero-mean net then predicts mid-range for targets in [0, 1]
    # Coordinates are multiplied by this before the first layer. GradNCP's audio uses 50:
    # a second of sound holds thousands of periods, which [-1, 1] at w0 = 30 cannot reach.
    coord_scale: float = 1.0

    def __post_init__(self):
        if self.depth < 2:
            raise ValueError("depth must be at least 2 (one sine layer and the output layer)")
        if min(self.in_dim, self.out_dim, self.width) < 1:
            raise ValueError("in_dim, out_dim and width must be positive")
        if self.w0 <= 0 or (self.w0_first is not None and self.w0_first <= 0):
            raise ValueError("w0 must be positive")
        if not 0 < self.coord_scale < float("inf"):
            raise ValueError("coord_scale must be positive")


@register_field
class Siren(Pointwise):
    name: ClassVar[str] = "siren"
    Config: ClassVar[type] = SirenConfig

    def __init__(self, config: SirenConfig):
        self.config = config
        c = config
        self.dims = [c.in_dim] + [c.width] * (c.depth - 1) + [c.out_dim]
        first = c.w0 if c.w0_first is None else c.w0_first
        self.w0s = [first] + [c.w0] * (c.depth - 2)  # one per sine layer

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return mlp_param_shapes(self.dims)

    def init_params(self, generator: torch.Generator) -> Params:
        params: Params = {}
        for i, (d_in, d_out) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            # SIREN's rule: the first layer spans a few periods of its sine; later
            # layers are scaled by their w0 so pre-activations stay ~N(0, 1) in depth.
            # The output layer divides by the hidden w0 too, as in the reference code.
            bound = 1.0 / d_in if i == 0 else math.sqrt(6.0 / d_in) / self.config.w0
            params[f"l{i}.weight"] = uniform((d_out, d_in), bound, generator)
            params[f"l{i}.bias"] = uniform((d_out,), bound, generator)
        return params

    def __call__(self, params: Params, coords: Tensor, *, features: bool = False):
        h = coords if self.config.coord_scale == 1 else coords * self.config.coord_scale  # [N, in] or [B, N, in]
        for i, w0 in enumerate(self.w0s):
            h = torch.sin(linear(h, params[f"l{i}.weight"], params[f"l{i}.bias"], w0))  # [B, N, width]
        last = len(self.w0s)
        out = linear(h, params[f"l{last}.weight"], params[f"l{last}.bias"]) + self.config.out_offset
        return (out, h) if features else out  # [B, N, out_dim], [B, N, width]
