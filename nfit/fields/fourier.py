"""Fourier-feature ReLU MLP (Tancik et al. 2020), batched per signal.

Coordinates go through a fixed Gaussian projection, ``[sin(2 pi B x), cos(2 pi B x)]``,
then a ReLU MLP. The projection B is not a parameter: it is drawn from
``feature_seed`` on the CPU in float64, so the config alone rebuilds the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from nfit.fields.base import Params, Pointwise, linear, mlp_param_shapes, register_field, uniform


@dataclass(frozen=True)
class FourierConfig:
    in_dim: int = 2
    out_dim: int = 3
    width: int = 256
    depth: int = 5  # linear layers after the feature map
    n_freqs: int = 128  # features = 2 * n_freqs
    sigma: float = 10.0  # std of the Gaussian frequencies, in cycles per unit coordinate
    feature_seed: int = 0
    out_offset: float = 0.5

    def __post_init__(self):
        if self.depth < 2:
            raise ValueError("depth must be at least 2")
        if min(self.in_dim, self.out_dim, self.width, self.n_freqs) < 1:
            raise ValueError("in_dim, out_dim, width and n_freqs must be positive")
        if self.sigma <= 0:
            raise ValueError("sigma must be positive")


@register_field
class FourierMLP(Pointwise):
    name: ClassVar[str] = "fourier"
    Config: ClassVar[type] = FourierConfig

    def __init__(self, config: FourierConfig):
        self.config = config
        c = config
        gen = torch.Generator().manual_seed(c.feature_seed)
        self.freqs = (torch.randn(c.n_freqs, c.in_dim, generator=gen, dtype=torch.float64) * c.sigma).float()
        self.dims = [2 * c.n_freqs] + [c.width] * (c.depth - 1) + [c.out_dim]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return mlp_param_shapes(self.dims)

    def init_params(self, generator: torch.Generator) -> Params:
        params: Params = {}
        for i, (d_in, d_out) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            bound = 1.0 / math.sqrt(d_in)  # PyTorch's nn.Linear default
            params[f"l{i}.weight"] = uniform((d_out, d_in), bound, generator)
            params[f"l{i}.bias"] = uniform((d_out,), bound, generator)
        return params

    def __call__(self, params: Params, coords: Tensor, *, features: bool = False):
        freqs = self.freqs.to(device=coords.device, dtype=coords.dtype)
        proj = (2 * math.pi) * coords @ freqs.T  # [N, F] or [B, N, F]
        h = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
        n_hidden = len(self.dims) - 2
        for i in range(n_hidden):
            h = torch.relu(linear(h, params[f"l{i}.weight"], params[f"l{i}.bias"]))  # [B, N, width]
        out = linear(h, params[f"l{n_hidden}.weight"], params[f"l{n_hidden}.bias"]) + self.config.out_offset
        return (out, h) if features else out
