"""The coordinate convention shared by every modality.

A signal sampled on a grid of ``shape`` (e.g. ``(H, W)``) lives on the cube
[-1, 1]^d. Sample i along an axis of n samples sits at the *centre* of its cell:

    x_i = (2 i + 1) / n - 1        i = 0 .. n-1

so the grid of any other size covers the same cube and renders at other
resolutions stay aligned (a 2x render puts two samples inside each original
cell, symmetric about its centre). Axes come in array order: (y, x) for images.
The convention is stored in every file as :data:`CONVENTION`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CONVENTION = {"name": "pixel_center", "range": [-1.0, 1.0], "order": "array"}


def grid_coords(
    shape: tuple[int, ...],
    start: int = 0,
    stop: int | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Coordinates of the flat (row-major) samples ``start .. stop-1`` of a grid.

    Returns ``[stop - start, len(shape)]``. Computed from the flat indices, so a
    chunk of a huge grid never needs the whole grid in memory.
    """
    total = math.prod(shape)
    stop = total if stop is None else min(stop, total)
    idx = torch.arange(start, stop, device=device, dtype=torch.int64)  # [n]
    cols = []
    stride = total
    for n in shape:
        stride //= n
        i = (idx // stride) % n
        cols.append((2 * i + 1).to(dtype) / n - 1)
    return torch.stack(cols, dim=-1)  # [n, d]


def fit_shape(shape: tuple[int, ...], longest: int) -> tuple[int, ...]:
    """Scale ``shape`` so its longest side is ``longest``, keeping the aspect ratio."""
    scale = longest / max(shape)
    return tuple(max(1, round(s * scale)) for s in shape)
