"""Decoding fields on grids of any size, in chunks of coordinates.

Memory is bounded by the chunk, not the grid: coordinates are generated per
chunk from flat indices, evaluated without autograd, and written straight into
the (quantised) output, so an 8192x8192 render holds its 8-bit output plus one
chunk's activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nfit.atomic import atomic_frames_dir, atomic_output, guard_output
from nfit.config import RenderConfig
from nfit.device import flush_denormals, resolve_device, tune_cpu_allocator
from nfit.errors import ConfigError
from nfit.fields import Field, Params
from nfit.fields.base import Pointwise
from nfit.signals import MODALITIES, frames_of
from nfit.signals.image import quantize
from nfit.tiling import RenderPlan, Tiling

DEFAULT_CHUNK = 1 << 16  # coordinates per forward: ~64 MB of activations per layer at width 256
MAX_RENDER_SAMPLES = 1 << 32


def evaluate_chunks(
    field: Field, params: Params, shape: tuple[int, ...], *, chunk: int = DEFAULT_CHUNK
) -> Iterator[tuple[int, int, Tensor]]:
    """Yield ``(start, stop, values [B, stop - start, C])`` over the flat grid, clamped to [0, 1].

    params: batched ``[B, ...]`` on the device to compute on. Chunks hold whole units
    (points, or NeRV's frames), about ``chunk`` grid samples each.
    """
    device = next(iter(params.values())).device
    grid_rows = getattr(field, "grid_rows", None)  # a field that decodes whole rows of a grid at once, faster
    if grid_rows is not None:
        row = math.prod(shape[1:])
        step = max(1, chunk // row)
        with torch.inference_mode():
            for lo in range(0, shape[0], step):
                hi = min(lo + step, shape[0])
                yield lo * row, hi * row, grid_rows(params, shape, lo, hi).clamp_(0.0, 1.0)
        return
    units, size = field.unit_count(shape), field.unit_size(shape)  # size: grid samples per unit
    step = max(1, chunk // size)
    with torch.inference_mode():
        for lo in range(0, units, step):
            hi = min(lo + step, units)
            coords = field.unit_coords(shape, lo, hi, device=device)  # [n, d]
            yield lo * size, hi * size, field.from_units(field(params, coords), shape).clamp_(0.0, 1.0)


def evaluate_tiles(
    field: Field, params: Params, tiling: Tiling, shape: tuple[int, ...], out_shape: tuple[int, ...], *,
    chunk: int = DEFAULT_CHUNK,
) -> Iterator[tuple[int, int, Tensor]]:
    """Yield ``(start, stop, values [stop - start, C])`` of a tiled field, blended (see :mod:`nfit.tiling`)
    and clamped to [0, 1], in order over the flat grid ``out_shape``.

    params: one set per tile ``[n_tiles, ...]`` of a signal of grid ``shape``, on the device to compute on.
    Tiles are evaluated a row of the tile grid at a time (in batches of about ``chunk`` samples), and
    rows of the render are yielded as soon as every tile that touches them is in: memory holds about
    one row of tiles of the render, whatever its size.
    """
    device = next(iter(params.values())).device
    plan = RenderPlan(tiling, shape, out_shape)
    contributions = _point_contributions if isinstance(field, Pointwise) else _frame_contributions
    acc_lo, acc = 0, None  # acc: [rows, plan.row, C], output rows acc_lo .. acc_lo + len(acc) - 1
    with torch.inference_mode():
        for lo, hi, done, tiles in plan.rows():
            for index, values in contributions(field, params, plan, tiles, lo, chunk, device):
                if acc is None:
                    acc = torch.zeros(0, plan.row, values.shape[-1], device=device)
                if acc_lo + acc.shape[0] < hi:  # grow the block down to this tile row's last row
                    acc = torch.cat([acc, acc.new_zeros(hi - acc_lo - acc.shape[0], *acc.shape[1:])])
                acc.view(-1, acc.shape[-1]).index_add_(0, index + (lo - acc_lo) * plan.row, values)
            if done > acc_lo:
                yield acc_lo * plan.row, done * plan.row, acc[:done - acc_lo].reshape(-1, acc.shape[-1]).clamp_(0.0, 1.0)
                acc, acc_lo = acc[done - acc_lo:], done


def _point_contributions(field: Field, params: Params, plan: RenderPlan, tiles: list[int], block_lo: int,
                         chunk: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """What ``tiles`` of a point-wise field add to the block of rows from ``block_lo``: flat indices ``[N]``
    into the block and weighted values ``[N, C]``, in batches of tiles of about ``chunk`` samples."""
    per = max(1, chunk // plan.points(tiles[:1]))
    for i in range(0, len(tiles), per):
        batch = plan.batch(tiles[i:i + per], block_lo, device)
        index = torch.tensor(batch.tiles, device=device)
        values = field({k: v[index] for k, v in params.items()}, batch.coords)  # [B, P, C]
        yield batch.index.flatten(), (values * batch.weights.unsqueeze(-1)).flatten(0, 1)


def _frame_contributions(field: Field, params: Params, plan: RenderPlan, tiles: list[int], block_lo: int,
                         chunk: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """The same for a field that decodes whole frames (NeRV), cut along time only: each chunk of frames
    decodes the output frames it covers at its own times, resized to the render's frame size, weighted
    by its blend along time, about ``chunk`` samples at a time."""
    (k,) = tiles  # one tile per row of the tile grid: a chunk covers the whole frame
    span = plan.spans[0][k]
    one = {name: v[k:k + 1] for name, v in params.items()}
    frame_shape = plan.out_shape[1:]
    per = max(1, chunk // plan.row)
    for a in range(0, span.hi - span.lo, per):
        b = min(a + per, span.hi - span.lo)
        frames = field.from_units(field(one, span.coords[a:b, None].to(device)), (b - a, *frame_shape))[0]
        weights = span.weights[a:b].to(device).repeat_interleave(plan.row)  # [n * row]
        lo = (span.lo - block_lo + a) * plan.row
        yield torch.arange(lo, lo + frames.shape[0], device=device), frames * weights[:, None]


def decode(field: Field, params: Params, shape: tuple[int, ...], *, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """All values of B fields on a grid: ``[B, prod(shape), C]``, on the parameters' device."""
    parts = [values for _, _, values in evaluate_chunks(field, params, shape, chunk=chunk)]
    return torch.cat(parts, dim=1)


def field_chunks(nf, shape: tuple[int, ...], device: torch.device, chunk: int = DEFAULT_CHUNK
                 ) -> Iterator[tuple[int, int, Tensor]]:
    """``(start, stop, values [stop - start, C])`` of one field (whole or tiled) on a grid, in order."""
    if nf.tiling is not None:
        params = {k: v.to(device) for k, v in nf.params.items()}  # one set per tile
        yield from evaluate_tiles(nf.field, params, nf.tiling, nf.shape, shape, chunk=chunk)
        return
    params = {k: v.to(device).unsqueeze(0) for k, v in nf.params.items()}  # batch of one
    for start, stop, values in evaluate_chunks(nf.field, params, shape, chunk=chunk):
        yield start, stop, values[0]


def _check_shape(shape: tuple[int, ...], nf) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(nf.shape) or min(shape) < 1:
        raise ConfigError(None, f"render shape {shape} does not fit a {len(nf.shape)}-D {nf.modality}")
    if math.prod(shape) > MAX_RENDER_SAMPLES:
        raise ConfigError(None, f"render shape {shape} is too large")
    return shape


@flush_denormals()
def render_values(
    nf, shape: tuple[int, ...] | None = None, *, device: str | torch.device = "cpu", chunk: int = DEFAULT_CHUNK
) -> Tensor:
    """Float values ``[*shape, C]`` in [0, 1] on the CPU; ``shape`` defaults to the native grid."""
    shape = _check_shape(nf.shape if shape is None else shape, nf)
    out = torch.empty(math.prod(shape), nf.channels)
    for start, stop, values in field_chunks(nf, shape, resolve_device(device), chunk):
        out[start:stop] = values.cpu()
    return out.reshape(*shape, nf.channels)


def render_pixels(
    nf, shape: tuple[int, ...], bit_depth: int = 8, *, device: str | torch.device = "cpu", chunk: int = DEFAULT_CHUNK,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Quantised values ``[*shape, C]`` (uint8 or uint16), quantised chunk by chunk."""
    shape = _check_shape(shape, nf)
    out = np.empty((math.prod(shape), nf.channels), dtype=np.uint8 if bit_depth == 8 else np.uint16)
    for start, stop, samples in _quantized_chunks(nf, shape, bit_depth, device, chunk, on_progress):
        out[start:stop] = samples
    return out.reshape(*shape, nf.channels)


def render_frames(
    nf, shape: tuple[int, ...], bit_depth: int = 8, *, device: str | torch.device = "cpu", chunk: int = DEFAULT_CHUNK,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Quantised slices along the first axis (video frames ``[H, W, C]``), one at a time:
    memory holds one frame and one chunk, whatever the length of the render."""
    shape = _check_shape(shape, nf)
    yield from frames_of(_quantized_chunks(nf, shape, bit_depth, device, chunk, on_progress), shape, nf.channels)


def _quantized_chunks(nf, shape, bit_depth, device, chunk, on_progress=None) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, samples [stop - start, C])`` of one field on a checked grid, quantised on the CPU;
    ``on_progress(stop, total)`` after each chunk."""
    total = math.prod(shape)
    for start, stop, values in field_chunks(nf, shape, resolve_device(device), chunk):
        yield start, stop, quantize(values.float().cpu().numpy(), bit_depth)
        if on_progress is not None:
            on_progress(stop, total)


def default_output(nf_path: Path, modality: str) -> Path:
    """Where ``nfit render X.nf`` writes without -o: beside it, as ``X_render.png`` (.wav,
    .mp4). Never ``X.png``: that is most often the very file the field was fitted from."""
    return nf_path.with_name(f"{nf_path.stem}_render{MODALITIES[modality].default_suffix}")


@flush_denormals()
def render_to_file(
    nf,
    output: str | Path,
    config: RenderConfig | None = None,
    *,
    chunk: int = DEFAULT_CHUNK,
    protect: Iterable[str | Path] = (),
    force: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    **options,
) -> tuple[Path, tuple[int, ...]]:
    """Render ``nf`` into a media file chosen by ``output``'s extension (a folder of PNG
    frames for video given a path without one). ``config`` (or its fields as keywords:
    res, width, height, sample_rate, fps, bit_depth, quality, device) sets the grid.
    Returns the path and grid.

    ``output`` must not be any file in ``protect`` (the .nf and its initialisation), and
    an existing file there is replaced only when nfit rendered it (the mark every render
    carries) or with ``force``. ``on_progress(done, total)`` follows the grid samples
    rendered."""
    output = Path(output)
    cfg = config or RenderConfig(**options)
    modality = MODALITIES[nf.modality]
    fmt = modality.output_format(output)
    folder = fmt == "frames"  # video as a folder of PNG frames
    if not folder:  # before the (possibly long) render; a frames folder must be new or empty anyway
        guard_output(output, protect, ours=modality.written_by_nfit, force=force)
    bit_depth = cfg.bit_depth
    if bit_depth is None:
        bit_depth = 16 if nf.bit_depth >= 16 and fmt in ("png", "wav", "flac") else 8
    if bit_depth not in (8, 16):
        raise ConfigError("--bit-depth", f"must be 8 or 16, not {bit_depth}")
    if bit_depth == 16 and fmt not in ("png", "wav", "flac"):
        raise ConfigError("--bit-depth", f"16-bit output needs PNG, WAV or FLAC, not {output.suffix or 'frames'}")
    shape, rate = modality.target_shape(nf.shape, nf.rate, cfg)
    tune_cpu_allocator(resolve_device(cfg.device))  # chunk after chunk of activations: keep freed memory
    if modality.streams:
        frames = render_frames(nf, shape, bit_depth, device=cfg.device, chunk=chunk, on_progress=on_progress)
        with (atomic_frames_dir if folder else atomic_output)(output) as tmp:
            modality.write(tmp, frames, fmt, rate, quality=cfg.quality)
    else:
        samples = render_pixels(nf, shape, bit_depth, device=cfg.device, chunk=chunk, on_progress=on_progress)
        with atomic_output(output) as tmp:
            modality.write(tmp, samples, fmt, rate, quality=cfg.quality)
    return output, shape
