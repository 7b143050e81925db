"""Latent grids: multi-resolution grids of latent values and a small synthesis MLP (Cool-chic,
Ladune et al. 2023; C3, Kim et al. 2024), the field nfit codes compactly.

A signal on a grid of ``size`` gets ``levels`` grids of one latent value per cell, level l
with ``ceil(n / 2**l)`` cells per axis (so about 1.33 latents per sample for an image, most of
them on the finest level). At a coordinate, each level is interpolated (linearly, as
``grid_sample`` with the pixel-centre convention) and scaled by its gain (finer integer steps for
the coarse levels a smooth signal rests on: see GridConfig), and the ``levels`` values are mapped to the
signal's channels by an MLP of ``depth`` layers of ``hidden`` (leaky) ReLU units. Then, as Cool-chic's
synthesis ends, a 3x3 (3^d) convolution mixes each output with its neighbours one sample of the
signal's own grid away, added to it: worth 1.1-1.7 dB at equal rate on a held-out photo
(BENCHMARKS.md, "Latent grids"), because one latent per level and sample carries no colour or
edge context alone. Written as a field, the convolution is a sum over coordinates shifted by that spacing, so it
stays continuous; on the signal's own grid it is an ordinary convolution with replicated borders,
which is how it is fitted (:meth:`LatentGrid.on_grid`). Fitted with a rate
term (:mod:`nfit.latent`), most latents end near zero and the rest near integers, which an
entropy coder stores, each under the Laplace its neighbours predict (:mod:`nfit.arm`, whose small
MLP is part of the field's parameters), in far fewer bits than a SIREN's weights: measured on held-out photos,
4-10x fewer than coded SIREN tiles at 29-30 dB; against JPEG, 0.8-1.6 dB above it at 0.3-0.5 bpp
and level near 1 bpp on photos where JPEG is weak, about level at 0.3 bpp and 0.75-3.6 dB under at
1 bpp on photos of Kodak's difficulty (BENCHMARKS.md, "Latent grids").

The field is continuous (linear interpolation), so it renders at any size, but one field
covers the whole signal: it is never cut into tiles, and its parameters grow with the signal.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nfit import arm
from nfit.fields.base import Params, Pointwise, linear, mlp_param_shapes, register_field, uniform


@dataclass(frozen=True)
class GridConfig:
    in_dim: int = 2
    out_dim: int = 3
    size: tuple[int, ...] = (64, 64)  # cells of the finest level: the signal's own grid
    levels: int = 7
    hidden: int = 16
    depth: int = 3  # linear layers of the synthesis MLP
    out_offset: float = 0.5  # zero latents predict mid-range for targets in [0, 1]
    # The MLP sees level l's latents times max(gain_floor, min(1, 2**(1 - l))): 1, 1, 1/2, 1/4, ... down to
    # gain_floor, each level's integer step in the MLP's units; 1 (every gain 1) as the first files were written
    gain_floor: float = 1.0
    # Hidden units of the autoregressive model that codes the latents (nfit.arm), fitted with them and
    # stored with the field; 0: none, the coder's table of scales by neighbours' magnitudes (format 5)
    arm: int = 0
    # The hidden layers' activation: a leaky ReLU of this negative slope; 0, a ReLU, as the first files were written
    slope: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(n) for n in self.size))  # a JSON list from a file
        if not 1 <= self.in_dim <= 3 or len(self.size) != self.in_dim:
            raise ValueError(f"latent grids are 1-, 2- or 3-D with one size per axis, not {self.in_dim}-D {self.size}")
        if min(self.size) < 1 or self.levels < 1 or self.hidden < 1 or self.out_dim < 1:
            raise ValueError("size, levels, hidden and out_dim must be positive")
        if self.depth < 1:
            raise ValueError("depth must be at least 1 (the output layer)")
        if not 0 < self.gain_floor <= 1:
            raise ValueError(f"gain_floor must be in (0, 1], not {self.gain_floor}")
        if not 0 <= self.slope < 1:
            raise ValueError(f"slope must be in [0, 1), not {self.slope}")
        if not 0 <= self.arm <= 64:  # the exact forward's products stay below 2^53 up to 64 (nfit.arm)
            raise ValueError(f"arm must be in 0..64 hidden units, not {self.arm}")
        if self.arm and self.in_dim == 1:  # one row: decoded a latent at a time
            raise ValueError("a 1-D latent grid has no autoregressive model (arm 0)")

    def level_gains(self) -> list[float]:
        return [max(self.gain_floor, min(1.0, 2.0 ** (1 - level))) for level in range(self.levels)]


@register_field
class LatentGrid(Pointwise):
    name: ClassVar[str] = "grid"
    Config: ClassVar[type] = GridConfig
    whole_signal: ClassVar[bool] = True  # its size is the signal's: never cut into tiles

    def __init__(self, config: GridConfig):
        self.config = config
        c = config
        self.dims = [c.levels] + [c.hidden] * (c.depth - 1) + [c.out_dim]

    def grid_error(self, shape: tuple[int, ...], channels: int) -> str | None:
        if tuple(shape) != self.config.size:
            return f"a latent grid of {self.config.size} cannot hold a signal of {tuple(shape)}"
        return super().grid_error(shape, channels)

    def level_shape(self, level: int) -> tuple[int, ...]:
        return tuple(math.ceil(n / 2**level) for n in self.config.size)

    @property
    def latent_names(self) -> list[str]:
        return [f"z{level}" for level in range(self.config.levels)]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        return {**{f"z{level}": self.level_shape(level) for level in range(c.levels)}, **mlp_param_shapes(self.dims),
                "mix.weight": (c.out_dim, c.out_dim, *[3] * c.in_dim), "mix.bias": (c.out_dim,),
                **(arm.param_shapes(c.arm, c.levels) if c.arm else {})}

    def init_params(self, generator: torch.Generator) -> Params:
        # zero latents (the rate term's cheapest point), the MLP as torch.nn.Linear draws it
        params: Params = {name: torch.zeros(self.level_shape(level)) for level, name in enumerate(self.latent_names)}
        for i, (d_in, d_out) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            bound = 1.0 / math.sqrt(d_in)
            params[f"l{i}.weight"] = uniform((d_out, d_in), bound, generator)
            params[f"l{i}.bias"] = uniform((d_out,), bound, generator)
        params["mix.weight"] = torch.zeros(self.param_shapes()["mix.weight"])  # starts as the MLP alone
        params["mix.bias"] = torch.zeros(self.config.out_dim)
        if self.config.arm:  # drawn last: the rest are drawn as before it
            params.update(arm.init_params(self.config.arm, self.config.levels, generator))
        return params

    def sample(self, params: Params, coords: Tensor) -> Tensor:
        """Every level interpolated at ``coords`` [N, d] or [B, N, d]: -> [B, N, levels]."""
        batch = params["z0"].shape[0]
        if coords.dim() == 2:
            coords = coords.expand(batch, *coords.shape)
        d = self.config.in_dim
        # grid_sample wants x (the last array axis) first, and 2-D or 3-D grids: a 1-D one is a row
        xy = coords.flip(-1) if d > 1 else torch.cat([coords, torch.zeros_like(coords)], -1)
        where = xy.reshape(batch, *([1] * max(d - 1, 1)), coords.shape[1], max(d, 2))  # [B, 1, (1,) N, d]
        out = []
        for name in self.latent_names:
            z = params[name]
            z = z.reshape(batch, 1, *(z.shape[1:] if d > 1 else (1, z.shape[1])))  # [B, 1, *grid]
            out.append(F.grid_sample(z, where, mode="bilinear", padding_mode="border", align_corners=False)
                       .reshape(batch, -1))
        return torch.stack(out, -1) * torch.tensor(self.config.level_gains(), device=coords.device)

    def sample_grid(self, params: Params) -> Tensor:
        """Every level at the sample centres of the field's own grid, as :meth:`sample` there gives
        them (tested), by upsampling: -> [B, levels, *size], levels first."""
        size = self.config.size
        gains = self.config.level_gains()
        return torch.stack([gains[level] * (params[name] if level == 0 else _Upsample.apply(params[name], size))
                            for level, name in enumerate(self.latent_names)], 1)  # level 0 is the grid itself

    def synthesis(self, params: Params, coords: Tensor) -> tuple[Tensor, Tensor]:
        """The MLP's output at ``coords`` [N, d] or [B, N, d], before the mixing: -> [B, N, out_dim],
        and its last hidden layer [B, N, hidden]."""
        h = self.sample(params, coords)  # [B, N, levels]
        last = len(self.dims) - 2
        for i in range(last):
            h = self._activation(linear(h, params[f"l{i}.weight"], params[f"l{i}.bias"]))  # [B, N, hidden]
        return linear(h, params[f"l{last}.weight"], params[f"l{last}.bias"]) + self.config.out_offset, h

    def __call__(self, params: Params, coords: Tensor, *, features: bool = False):
        base, h = self.synthesis(params, coords)  # [B, N, C]
        spacing = torch.tensor([2.0 / n for n in self.config.size], device=coords.device, dtype=coords.dtype)
        kernel = params["mix.weight"].flatten(3)  # [B, C_out, C_in, 3^d]
        out = base + params["mix.bias"].unsqueeze(1)
        for k, offset in enumerate(itertools.product((-1, 0, 1), repeat=self.config.in_dim)):
            # the neighbour one sample away: the border clamps, as grid_sample's does, so on the
            # signal's grid this is the convolution with replicated edges of on_grid
            shifted = base if not any(offset) else self.synthesis(params, _shift(coords, offset, spacing))[0]
            out = out + torch.einsum("boc,bnc->bno", kernel[..., k], shifted)
        return (out, h) if features else out  # [B, N, out_dim]

    def on_grid(self, params: Params, shape: tuple[int, ...]) -> Tensor:
        """The field on its own grid ``shape`` (one MLP evaluation per sample, the levels upsampled, the
        mixing a convolution): the values of ``self(params, grid_coords(shape))``, 3^d times cheaper. -> [B, N, C]"""
        if tuple(shape) != self.config.size:
            raise ValueError(f"on_grid evaluates the field's own grid {self.config.size}, not {tuple(shape)}")
        # channels first, [B, features, N]: each layer is one matrix product along rows of N samples and
        # the mixing a convolution of the same memory; on a CPU the MLP's forward and backward take half
        # the time they take with the samples first (BENCHMARKS.md, "Latent grids")
        h = self._mlp_channels_first(params, self.sample_grid(params).flatten(2))  # [B, C, N]
        batch, channels = h.shape[:2]
        image = h.reshape(1, batch * channels, *shape)  # signals as groups of channels
        padded = F.pad(image, [1] * (2 * len(shape)), mode="replicate")
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(shape) - 1]
        mixed = conv(padded, params["mix.weight"].reshape(batch * channels, channels, *[3] * len(shape)),
                     params["mix.bias"].reshape(-1), groups=batch)
        return (h + mixed.reshape(batch, channels, -1)).transpose(1, 2)  # [B, N, C], a view

    def _mlp_channels_first(self, params: Params, h: Tensor) -> Tensor:
        """The synthesis MLP on levels' values ``h [B, levels, N]``, channels first: -> [B, C, N]."""
        last = len(self.dims) - 2
        for i in range(last + 1):
            h = torch.baddbmm(params[f"l{i}.bias"].unsqueeze(2), params[f"l{i}.weight"], h)  # [B, hidden, N]
            h = self._activation(h) if i < last else h + self.config.out_offset
        return h

    def _activation(self, h: Tensor) -> Tensor:
        slope = self.config.slope
        return F.leaky_relu(h, slope) if slope else torch.relu(h)

    def grid_rows(self, params: Params, shape: tuple[int, ...], lo: int, hi: int) -> Tensor:
        """Rows ``lo .. hi - 1`` (along the first axis) of the field on the sample centres of a grid of
        ``shape`` of any size: the values of ``self(params, grid_coords(shape))`` there, ``[B, N, C]``.

        Each output needs the MLP at 3^d points, itself and its neighbours one sample of the field's
        own grid away. Those points lie on a product of per-axis coordinate sets, so the levels are
        interpolated axis by axis and the MLP runs once per distinct point, channels first as in
        :meth:`on_grid`. At the native size, or an integer multiple of it, the neighbours are other
        outputs' points and each point is computed once: about one MLP evaluation per output
        instead of 3^d. Coordinates are kept as integers over a common denominator, so coinciding
        points are found exactly."""
        axes = [_shifted_axis(n, cells, *((lo, hi) if axis == 0 else (0, n)))
                for axis, (n, cells) in enumerate(zip(shape, self.config.size))]
        device, dtype = params["z0"].device, params["z0"].dtype
        points = [(values / scale).to(device, dtype) for values, _, scale in axes]  # each axis's distinct points
        base = self._synthesis_on_axes(params, points)  # [B, C, *distinct]
        inverses = [inverse.to(device) for _, inverse, _ in axes]  # [3, outputs] per axis

        def at(offset: tuple[int, ...]) -> Tensor:  # the synthesis at every output's neighbour ``offset`` away
            out = base
            for axis, inverse in enumerate(inverses):
                out = out.index_select(2 + axis, inverse[offset[axis] + 1])
            return out  # [B, C, *outputs]

        centre = at((0,) * len(shape))
        out = centre + params["mix.bias"].reshape(*centre.shape[:2], *[1] * len(shape))
        kernel = params["mix.weight"].flatten(3)  # [B, C_out, C_in, 3^d]
        for k, offset in enumerate(itertools.product((-1, 0, 1), repeat=len(shape))):
            shifted = centre if not any(offset) else at(offset)
            out = out + torch.einsum("boc,bc...->bo...", kernel[..., k], shifted)
        return out.flatten(2).transpose(1, 2)  # [B, N, C]

    def _synthesis_on_axes(self, params: Params, points: list[Tensor]) -> Tensor:
        """The MLP's output (before the mixing) on the product of per-axis coordinates ``points``
        (d tensors [n_a]): -> [B, C, *n]."""
        gains = self.config.level_gains()
        levels = []
        for level, name in enumerate(self.latent_names):
            z = params[name]  # [B, *cells]
            for axis, coords in enumerate(points):  # linear, grid_sample's pixel centres and border clamp
                cells = z.shape[1 + axis]
                x = (((coords + 1) * cells - 1) / 2).clamp(0, cells - 1)
                low = x.floor().long().clamp_max(cells - 1)
                frac = (x - low).reshape(-1, *[1] * (len(points) - 1 - axis))
                z = torch.lerp(z.index_select(1 + axis, low), z.index_select(1 + axis, (low + 1).clamp_max(cells - 1)),
                               frac)
            levels.append(gains[level] * z)
        h = self._mlp_channels_first(params, torch.stack(levels, 1).flatten(2))  # [B, C, N]
        return h.reshape(*h.shape[:2], *[len(p) for p in points])


def _shifted_axis(n: int, cells: int, lo: int, hi: int) -> tuple[Tensor, Tensor, int]:
    """The coordinates one axis of a render needs, as integers over a common denominator ``scale``:
    samples ``lo .. hi - 1`` of ``n`` (centres (2i + 1) / n - 1) moved by -1, 0 and +1 samples of the
    field's grid of ``cells`` (2 / cells) and clamped to its outermost centres, as :func:`_shift` does.
    Returns the distinct values [U], where each sample's three points are among them [3, hi - lo],
    and ``scale`` (n * cells)."""
    i = torch.arange(lo, hi, dtype=torch.int64)
    edge = n * cells - n  # 1 - 1 / cells, times the scale
    wanted = torch.stack([((2 * i + 1) * cells - n * cells + 2 * o * n).clamp(-edge, edge) for o in (-1, 0, 1)])
    values, inverse = torch.unique(wanted, return_inverse=True)
    return values.double(), inverse, n * cells


class _Upsample(torch.autograd.Function):
    """One level's latents ``[B, *cells]`` linearly upsampled to ``size`` ``[B, *size]``, as F.interpolate
    computes it (align_corners=False), with the backward written out: the transposed interpolation, axis
    by axis. F.interpolate's own backward runs one channel per thread, and a level is one channel: at
    768x512 it took 7.5 ms a level, 20% of a latent fit's step, against about 2 ms here (BENCHMARKS.md,
    "Latent grids"). Tested against autograd through F.interpolate."""

    @staticmethod
    def forward(ctx, z: Tensor, size: tuple[int, ...]) -> Tensor:
        ctx.cells = tuple(z.shape[1:])
        mode = ("linear", "bilinear", "trilinear")[len(size) - 1]
        return F.interpolate(z.unsqueeze(1), size=size, mode=mode, align_corners=False).squeeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        out = grad
        for axis, cells in enumerate(ctx.cells, start=1):
            moved = out.movedim(axis, 1)  # [B, n, ...]: this axis's samples next to the batch
            sources, weights = _interpolation_taps(cells, moved.shape[1], grad.dtype, grad.device)
            weights = weights.reshape(2, 1, -1, *[1] * (moved.dim() - 2))
            summed = moved.new_zeros(moved.shape[0], cells, *moved.shape[2:])
            for which in range(2):  # each sample's value came from two cells: give each its share back
                summed.index_add_(1, sources[which], moved * weights[which])
            out = summed.movedim(1, axis)
        return out, None


def _interpolation_taps(cells: int, samples: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The two cells [2, samples] that linear interpolation (align_corners=False, to a given size) reads
    for each sample, and their weights [2, samples], computed as torch computes them (in ``dtype``)."""
    scale = torch.tensor(cells / samples, dtype=dtype)
    x = ((torch.arange(samples, dtype=dtype) + 0.5) * scale - 0.5).clamp_min(0)  # source coordinate
    low = x.floor().long().clamp_max(cells - 1)
    high = (low + 1).clamp_max(cells - 1)
    frac = x - low
    return torch.stack([low, high]).to(device), torch.stack([1 - frac, frac]).to(device)


def _shift(coords: Tensor, offset: tuple[int, ...], spacing: Tensor) -> Tensor:
    """Coordinates moved by ``offset`` samples of a grid of ``spacing`` per axis, clamped to the outermost
    sample centres (where grid_sample's border padding would clamp the latents' interpolation)."""
    edge = 1 - spacing / 2
    return torch.maximum(torch.minimum(coords + spacing * torch.tensor(offset, device=coords.device), edge), -edge)
