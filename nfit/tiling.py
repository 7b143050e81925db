"""Tiled signals: a grid of any size cut into overlapping tiles of one fixed size.

A large photo, a long recording or a film does not fit in one small field, and fitting it
whole is slow. Cut into tiles of one size, it becomes many small signals of one grid:
exactly what the batched engine fits together and what meta-learning learns an
initialisation for. Each tile gets its own small field over the tile's own coordinates.

Layout (per axis of length L, tile T, overlap O): n = ceil((L - O) / (T - O)) tiles with
starts spread evenly from 0 to L - T, so every tile is whole (no padding, no cropping)
and neighbours share at least O samples. An axis shorter than one tile gets one tile
whose missing samples are the edge repeated (:func:`extract`); only [0, L) is rendered.

Rendering (no seams): a sample at position u (in source samples, the pixel-centre
convention of :mod:`nfit.signals.grid`: sample i sits at u = i + 1/2) takes the values
of the tiles that cover it, blended with weights that sum to one. Along each axis the
weight moves from one tile to the next with a smoothstep across a zone of width O - 1
centred in their shared samples, where both were fitted to the same data; the weight of
a tile is the product over axes, so the weights of all tiles sum to one everywhere. A
render at the native grid evaluates every tile only at samples it was fitted on, and a
render at another size never asks a tile for a value outside its own samples (so no
tile extrapolates, which is what shows as seams). Fitting never sees the blend.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Tiling:
    """Tile size and overlap per axis, in samples (array order, like grid shapes)."""

    tile: tuple[int, ...]
    overlap: tuple[int, ...]

    def __post_init__(self):
        if len(self.tile) != len(self.overlap) or not self.tile:
            raise ValueError("tile and overlap need one entry per axis")
        for t, o in zip(self.tile, self.overlap):
            if t < 1 or o < 0:
                raise ValueError(f"tile {t} and overlap {o} must be >= 1 and >= 0")
            # beyond a quarter, the blend zones of three tiles in a row could meet
            if t > 1 and not o <= t // 4:
                raise ValueError(f"overlap {o} must be at most a quarter of the tile ({t})")

    def starts(self, shape: tuple[int, ...]) -> list[list[int]]:
        """First sample of each tile, per axis."""
        return [axis_starts(n, t, o) for n, t, o in zip(shape, self.tile, self.overlap)]

    def grid(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Tiles per axis."""
        return tuple(len(s) for s in self.starts(shape))

    def count(self, shape: tuple[int, ...]) -> int:
        return math.prod(self.grid(shape))

    def to_json(self) -> dict:
        return {"tile": list(self.tile), "overlap": list(self.overlap), "layout": LAYOUT, "blend": BLEND}


LAYOUT = "even"  # the rule of axis_starts, recorded in every tiled file: it must never change
BLEND = "smoothstep"


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the tiles along one axis: whole tiles from 0 to ``length - tile``, evenly spread, so
    that neighbours share at least ``overlap`` samples (one tile when the axis is no longer than it)."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(k * (length - tile) / (n - 1)) for k in range(n)]


def tile_origins(tiling: Tiling, shape: tuple[int, ...], index: range | list[int]) -> list[tuple[int, ...]]:
    """The start of tiles ``index`` (row-major over the tile grid) on every axis."""
    starts = tiling.starts(shape)
    grid = [len(s) for s in starts]
    out = []
    for i in index:
        origin = []
        for axis in reversed(range(len(grid))):
            i, k = divmod(i, grid[axis])
            origin.append(starts[axis][k])
        out.append(tuple(reversed(origin)))
    return out


def pad_to_tile(values: Tensor, tile: tuple[int, ...]) -> Tensor:
    """``values [*shape, C]`` with every axis shorter than the tile extended by repeating its last sample."""
    for axis, (n, t) in enumerate(zip(values.shape[:-1], tile)):
        if n < t:
            edge = values.narrow(axis, n - 1, 1)
            values = torch.cat([values, edge.expand(*[t - n if a == axis else -1 for a in range(values.dim())])], axis)
    return values


def extract(values: Tensor, tiling: Tiling, index: range | list[int]) -> Tensor:
    """Tiles ``index`` of a signal ``[*shape, C]``: ``[n, *tile, C]`` (a copy). Axes shorter than a
    tile are padded by repeating their last sample."""
    shape = tuple(values.shape[:-1])
    values = pad_to_tile(values, tiling.tile)
    pieces = []
    for origin in tile_origins(tiling, shape, index):
        pieces.append(values[tuple(slice(s, s + t) for s, t in zip(origin, tiling.tile))])
    return torch.stack(pieces)


def _smoothstep(r: Tensor) -> Tensor:
    r = r.clamp(0.0, 1.0)
    return r * r * (3.0 - 2.0 * r)


@dataclass
class AxisSpan:
    """Where one tile contributes along one axis of a render: output samples ``lo .. hi-1``, their
    coordinates in the tile's own frame ``[hi - lo]`` and their blend weights ``[hi - lo]``."""

    lo: int
    hi: int
    coords: Tensor
    weights: Tensor


def axis_spans(length: int, tile: int, overlap: int, out_length: int) -> list[AxisSpan]:
    """For each tile along an axis of ``length`` samples rendered at ``out_length``: its span.

    Output sample j sits at u = (j + 1/2) * length / out_length. Tile k (start s) covers
    [s + 1/2, s + tile - 1/2]; its weight is 1 between the blend zones it shares with its
    neighbours and a smoothstep across them; its coordinate is 2 (u - s) / tile - 1.
    """
    starts = axis_starts(length, tile, overlap)
    half = max(0, overlap - 1) / 2  # half the blend zone: the zone lies inside both tiles' samples
    mids = [(a + b + tile) / 2 for a, b in zip(starts[:-1], starts[1:])]  # centre of each pair's shared samples
    scale = length / out_length
    spans = []
    for k, s in enumerate(starts):
        lo_u = mids[k - 1] - half if k > 0 else -math.inf
        hi_u = mids[k] + half if k < len(mids) else math.inf
        lo = 0 if k == 0 else max(0, math.floor(lo_u / scale - 0.5))
        hi = out_length if k == len(mids) else min(out_length, math.ceil(hi_u / scale - 0.5) + 1)
        u = (torch.arange(lo, hi, dtype=torch.float64) + 0.5) * scale
        w = torch.ones_like(u)
        if k > 0:
            w = w * (_ramp(u, mids[k - 1], half))
        if k < len(mids):
            w = w * (1.0 - _ramp(u, mids[k], half))
        spans.append(AxisSpan(lo, hi, (2 * (u - s) / tile - 1).float(), w.float()))
    return spans


def _ramp(u: Tensor, mid: float, half: float) -> Tensor:
    """0 before the zone [mid - half, mid + half], 1 after it, a smoothstep inside (a step at mid when it has no width)."""
    if half == 0:
        return (u >= mid).to(u.dtype)
    return _smoothstep((u - (mid - half)) / (2 * half))


@dataclass
class TileBatch:
    """What a batch of B tiles contributes to a block of a render: coordinates ``[B, P, d]``, blend
    weights ``[B, P]`` (0 on padding) and flat output indices ``[B, P]`` into the block."""

    tiles: list[int]
    coords: Tensor
    weights: Tensor
    index: Tensor


class RenderPlan:
    """How the tiles of a signal of ``shape`` make a render at ``out_shape``, in blocks of whole
    rows along the first axis, so that memory holds one block, not the render."""

    def __init__(self, tiling: Tiling, shape: tuple[int, ...], out_shape: tuple[int, ...]):
        self.tiling, self.shape, self.out_shape = tiling, shape, out_shape
        self.spans = [axis_spans(n, t, o, m) for n, t, o, m in zip(shape, tiling.tile, tiling.overlap, out_shape)]
        self.grid = tuple(len(s) for s in self.spans)
        self.row = math.prod(out_shape[1:])  # output samples per index of the first axis

    def rows(self) -> Iterator[tuple[int, int, int, list[int]]]:
        """For each tile index k along the first axis: (block_lo, block_hi, done_before, tiles).

        ``tiles`` (row-major indices) write into output rows block_lo .. block_hi-1; once they are in,
        rows before ``done_before`` are final."""
        per_row = math.prod(self.grid[1:])
        first = self.spans[0]
        for k, span in enumerate(first):
            done = first[k + 1].lo if k + 1 < len(first) else self.out_shape[0]
            yield span.lo, span.hi, done, list(range(k * per_row, (k + 1) * per_row))

    def batch(self, tiles: list[int], block_lo: int, device: torch.device | None = None) -> TileBatch:
        """Coordinates, weights and flat indices (into the block of rows starting at ``block_lo``) of ``tiles``."""
        coords, weights, index = [], [], []
        for t in tiles:
            ks = _unravel(t, self.grid)
            spans = [self.spans[a][k] for a, k in enumerate(ks)]
            axes_c = torch.meshgrid(*[s.coords for s in spans], indexing="ij")
            c = torch.stack([a.reshape(-1) for a in axes_c], dim=-1)  # [P, d]
            w = spans[0].weights
            for s in spans[1:]:
                w = (w[..., None] * s.weights)
            rows = [torch.arange(s.lo, s.hi) for s in spans]
            rows[0] = rows[0] - block_lo
            grids = torch.meshgrid(*rows, indexing="ij")
            flat = torch.zeros_like(grids[0])
            for g, n in zip(grids, self.out_shape):
                flat = flat * n + g
            coords.append(c)
            weights.append(w.reshape(-1))
            index.append(flat.reshape(-1))
        size = max(c.shape[0] for c in coords)
        pad = lambda ts, fill: torch.stack([torch.nn.functional.pad(x, (0, 0, 0, size - x.shape[0]) if x.dim() == 2
                                                                    else (0, size - x.shape[0]), value=fill) for x in ts])
        return TileBatch(tiles, pad(coords, 0.0).to(device), pad(weights, 0.0).to(device), pad(index, 0).to(device))

    def points(self, tiles: list[int]) -> int:
        """The most output samples any of ``tiles`` contributes to (the padded size of a batch)."""
        return max(math.prod(self.spans[a][k].hi - self.spans[a][k].lo for a, k in enumerate(_unravel(t, self.grid)))
                   for t in tiles)


def border_pairs(length: int, tile: int, overlap: int, out_length: int) -> Tensor:
    """Which neighbouring samples (j, j + 1) of a render of ``out_length`` lie on either side of
    a border between tiles (the centre of their blend zone): bool ``[out_length - 1]``."""
    starts = axis_starts(length, tile, overlap)
    u = (torch.arange(out_length, dtype=torch.float64) + 0.5) * length / out_length
    mids = torch.tensor([(a + b + tile) / 2 for a, b in zip(starts[:-1], starts[1:])], dtype=torch.float64)
    below = torch.searchsorted(mids, u, right=True)  # zone centres at or before each sample
    return below[1:] > below[:-1]  # a centre in (u_j, u_j+1]


def seam_ratio(values: Tensor, tiling: Tiling, shape: tuple[int, ...], axis: int) -> float:
    """How much a render ``values [*out_shape, C]`` of a tiled signal of grid ``shape`` jumps across tile
    borders along ``axis``: the mean absolute difference of neighbours across a border over that of
    the other neighbours at the same phase of the render grid (j mod its scale, for an integer
    scale: in a 2x render, pairs inside a source sample and pairs across two differ). 1 is seamless;
    upscaling the source with a good filter scores 1.05-1.3; fields that extrapolate at their borders
    score more."""
    n, out = shape[axis], values.shape[axis]
    diffs = (values.narrow(axis, 1, out - 1) - values.narrow(axis, 0, out - 1)).abs()
    d = diffs.movedim(axis, 0).reshape(out - 1, -1).mean(dim=1).double()  # [out - 1]
    border = border_pairs(n, tiling.tile[axis], tiling.overlap[axis], out)
    period = round(out / n) if out % n == 0 else 1
    phase = torch.arange(out - 1) % period
    expected = torch.zeros_like(d)
    for p in range(period):
        others = (phase == p) & ~border
        expected[phase == p] = d[others].mean() if others.any() else float("nan")
    return float(d[border].sum() / expected[border].sum())


def _unravel(i: int, grid: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for n in reversed(grid):
        i, k = divmod(i, n)
        out.append(k)
    return tuple(reversed(out))


__all__ = ["AxisSpan", "BLEND", "LAYOUT", "RenderPlan", "TileBatch", "Tiling", "axis_spans", "axis_starts",
           "border_pairs", "extract", "pad_to_tile", "seam_ratio", "tile_origins"]
