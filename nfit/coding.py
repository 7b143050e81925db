"""Compact storage of a field's values: uniform quantisation and range coding.

A field's parameters ``p`` are stored as integers ``q = round((p - r) / step)``, one step per
tensor, where ``r`` is the reference: the initialisation the field was fitted from (its
parameters, as the fit started from them), or zero. A field fitted from a learned
initialisation moves little in a few steps, so its difference from it takes fewer bits
than the weights themselves (measured, BENCHMARKS.md "Compact files": 2-4 bits per weight).

``step = max|p - r| / L`` with ``L = 2**(bits - 1) - 1``, so every integer lies in [-L, L]
and nothing is clipped. The integers of all tensors, in the order given, are range coded
(the ``constriction`` library) with a Laplace model per tensor of mean 0 and the scale
that codes them in the fewest bits (:func:`laplace_scale`): within 1% of the integers'
empirical entropy on real tiled fits, and 3-10% smaller than lzma on the same integers.
The payload's CRC-32 is checked before decoding, so a corrupted file is refused rather
than decoded into noise.

Pure functions of explicit tensors: :mod:`nfit.fieldfile` frames the result in a .nf file.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nfit.arm import LEAK_BITS, MIN_SCALE, PAD, Exact, context_at, context_of, order, wavefronts
from nfit.arm import PREFIX as ARM_PREFIX
from nfit.arm import param_shapes as arm_shapes

CODER = "laplace-range"  # the only coder; the name is in every coded file so another can follow
MIN_BITS, MAX_BITS = 2, 16
# Context coding (latent grids' integers): one scale per context of already-decoded neighbours (see
# contexts), where that codes smaller, the table counted at about the JSON it takes (8 bytes a scale).
# On latents of held-out photos 9-18% fewer bits than one scale (BENCHMARKS.md, "Latent grids").
CONTEXTS = 8
CONTEXT_TABLE_BITS = CONTEXTS * 64
INT = torch.int16  # the integers: |q| <= 2**15 - 1 at 16 bits; half the memory of int32 on a 50 MP photo


Scale = float | list[float] | str  # one tensor's: one Laplace scale, one per context, or ARM
ARM = "arm"  # a tensor's "scale" when the autoregressive model of nfit.arm codes it


class CodingError(ValueError):
    """A payload that cannot be decoded: its reason, for the caller to attach to a file name."""


@dataclass(frozen=True)
class Quantised:
    """Integers and their steps: ``values = reference + q * step``, per tensor."""

    bits: int
    q: dict[str, Tensor]  # INT (int16), the parameters' shapes
    steps: dict[str, float]


def levels(bits: int) -> int:
    """L: integers lie in [-L, L]."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, not {bits}")
    return 2 ** (bits - 1) - 1


def quantise(params: dict[str, Tensor], reference: dict[str, Tensor] | None, bits: int,
             steps: dict[str, float] | None = None) -> Quantised:
    """``params`` as integers at ``bits`` bits relative to ``reference`` (broadcast: an unbatched
    initialisation serves every tile of a tiled field; None means zero). ``steps``: given (values
    beyond L steps are clipped), else each tensor's largest difference over L."""
    top = levels(bits)
    q, chosen = {}, {}
    for name, value in params.items():
        diff = value.float() - (0.0 if reference is None else reference[name].float())
        step = steps[name] if steps is not None else step_for(diff, bits)
        q[name] = torch.round(diff / step).clamp_(-top, top).to(INT)
        chosen[name] = step
    return Quantised(bits, q, chosen)


def step_for(diff: Tensor, bits: int) -> float:
    """The step that puts a tensor's largest ``diff`` on or just inside the last level: nothing is
    clipped. Rounded up to 3 significant digits, a number the metadata writes short (0.0067, not
    0.0066917613: a latent grid's file holds 14 of them), at most 1% coarser; a float32 value, as
    :func:`dequantise` uses it, so integers come back from the stored values exactly."""
    peak = float(diff.abs().max()) if diff.numel() else 0.0
    if not peak > 0:
        return 1.0
    step = peak / levels(bits)
    short = float(f"{step:.3g}")
    if short < step * (1 - 1e-6):  # up by one in the third digit (written again: no float noise in the sum)
        short = float(f"{short + 10.0 ** (math.floor(math.log10(short)) - 2):.3g}")
    return float(np.float32(short))


def rounded(params: dict[str, Tensor], reference: dict[str, Tensor] | None, bits: int,
            steps: dict[str, float]) -> dict[str, Tensor]:
    """The values a file at these ``steps`` decodes ``params`` to, differentiable straight through the
    rounding (quantisation-aware fine-tuning): forward the rounded values, backward the identity."""
    top = levels(bits)
    out = {}
    for name, value in params.items():
        ref = 0.0 if reference is None else reference[name].to(value.device)
        q = torch.round((value - ref) / steps[name]).clamp(-top, top)
        out[name] = value + (ref + q * steps[name] - value).detach()
    return out


def dequantise(quantised: Quantised, reference: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """The float32 values ``reference + q * step`` that a file coded from ``quantised`` decodes to."""
    out = {}
    for name, q in quantised.q.items():
        value = q.float() * torch.tensor(quantised.steps[name], dtype=torch.float32)
        out[name] = value if reference is None else value + reference[name].float()
    return out


def laplace_scale(q: np.ndarray) -> float:
    """The Laplace scale (mean 0) that codes one tensor's integers in the fewest bits, of a grid of
    2**(1/16) steps from MIN_SCALE and mean|q|, each rounded to 3 significant digits: the encoder
    codes with the number the metadata holds, a short one (a latent grid's file holds 35 of them;
    at 1/1024 steps they took ~300 more bytes of a 14 kB file). Not ``mean|q|`` alone, the
    maximum-likelihood scale of continuous values: on sparse integers (a latent grid's, 95-99.5%
    zeros) it puts nearly all the mass on zero and charges each non-zero ~24 bits; the best
    scale coded the latents of fitted photos in up to 45% fewer bytes, and a tiled SIREN's
    weights (Laplace-like) in the same (BENCHMARKS.md, "Latent grids")."""
    return _best_scale(q)[0]


def _best_scale(q: np.ndarray) -> tuple[float, float]:
    """:func:`laplace_scale` and the bits at it, from one pass over ``q`` (a 50 MP photo's tiles: 10^8 integers)."""
    if not q.size:
        return 1.0, 0.0
    values, counts = np.unique(np.abs(q.astype(np.int64)), return_counts=True)
    grid = _SCALES[:16 * math.ceil(math.log2(float(values[-1]) / MIN_SCALE + 2))]
    grid = np.unique(np.append(grid, _short(float(np.abs(q).mean()))))  # the old choice, mean|q|: never worse
    bits = _bits(values, counts, grid)
    best = int(np.argmin(bits))
    return float(grid[best]), float(bits[best])


def _short(scale: float) -> float:
    """``scale`` to 3 significant digits, no smaller than MIN_SCALE: a number that JSON writes short."""
    return max(float(f"{scale:.3g}"), MIN_SCALE)


# the scales _best_scale tries: 2**(1/16) steps from MIN_SCALE past any integer MAX_BITS allows, rounded
_SCALES = np.array([_short(MIN_SCALE * 2.0 ** (k / 16)) for k in range(16 * (MAX_BITS + 8))])


def _bits(values: np.ndarray, counts: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Bits [S] of ``counts`` integers of each magnitude in ``values`` [V] under each of ``scales`` [S]."""
    s = scales[:, None]  # [S, 1] against the distinct magnitudes [V]
    v = values[None, :].astype(np.float64)
    zero = -np.expm1(-0.5 / s)  # the mass of [-1/2, 1/2]
    side = 0.5 * (np.exp(-(v - 0.5) / s) - np.exp(-(v + 0.5) / s))  # of [v - 1/2, v + 1/2], either sign
    mass = np.maximum(np.where(v == 0, zero, side), 2.0**-LEAK_BITS)  # the coder gives every bin some mass
    return -(counts * np.log2(mass)).sum(1)


def rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor as the coder's contexts see it: rows of its last axis (a 1-D tensor is one row)."""
    columns = shape[-1] if shape else 1
    return (math.prod(shape) // columns if columns else 0), columns


def contexts(q: np.ndarray) -> np.ndarray:
    """Each integer's context [R, C] in [0, CONTEXTS) for integers ``q`` [R, C]: the magnitudes of its
    neighbours in the two rows above, |q[r-1, c-1]| + 2 |q[r-1, c]| + |q[r-1, c+1]| + |q[r-2, c]|
    (zero beyond the edges), capped. Only rows above, so a decoder has them a whole row at a time."""
    a = np.abs(q.astype(np.int64))
    p = np.pad(a, ((2, 0), (1, 1)))  # two zero rows above, a zero column either side
    return np.minimum(p[1:-1, :-2] + 2 * p[1:-1, 1:-1] + p[1:-1, 2:] + p[:-2, 1:-1], CONTEXTS - 1)


def tensor_model(q: np.ndarray, by_context: bool) -> tuple[Scale, float]:
    """The model the coder gives integers ``q`` [R, C] (see :func:`rows`), and the bits it spends on
    them with it: one Laplace scale (the fewest bits: :func:`laplace_scale`), or with ``by_context``
    where it codes smaller with CONTEXT_TABLE_BITS for its table, a list of one scale per context
    (1.0 for a context none has)."""
    one, plain = _best_scale(q)
    if not by_context or not q.size:
        return one, plain
    ctx = contexts(q)
    fits = [_best_scale(q[ctx == k]) for k in range(CONTEXTS)]  # an empty context: scale 1.0, no bits
    by_table = sum(bits for _, bits in fits) + CONTEXT_TABLE_BITS
    return ([scale for scale, _ in fits], by_table) if by_table < plain else (one, plain)


def encode(q: dict[str, Tensor], bits: int, by_context: Collection[str] = (),
           arm: tuple[Exact, list[str]] | None = None) -> tuple[bytes, dict[str, Scale]]:
    """Range-code the integers of every tensor, in order. Returns the payload and each tensor's scale: one
    number, or for a tensor named in ``by_context`` whose integers code smaller so, a list of CONTEXTS
    (:func:`tensor_model`; the integers coded in order, each under its context's scale). ``arm``: a
    model (:class:`nfit.arm.Exact`, its own tensors coded before) and the tensors it codes, level by
    level: each integer under the mean and scale it predicts, in the order of its wavefronts ("arm")."""
    import constriction

    top = levels(bits)
    encoder = constriction.stream.queue.RangeEncoder()
    scales: dict[str, Scale] = {}
    predictor, modelled = arm if arm is not None else (None, [])
    for name, t in q.items():
        symbols = t.reshape(-1).numpy().astype(np.int32)
        by_rows = symbols.reshape(rows(tuple(t.shape)))
        if predictor is not None and name in modelled:
            mean, scale = predictor.predict(context_of(by_rows), modelled.index(name))
            at = order(*by_rows.shape)
            encoder.encode(symbols[at], constriction.stream.model.QuantizedLaplace(-top, top), mean[at], scale[at])
            scales[name] = ARM
            continue
        scales[name], _ = tensor_model(by_rows, name in by_context)
        if isinstance(scales[name], list):
            per_symbol = np.asarray(scales[name])[contexts(by_rows).reshape(-1)]
            encoder.encode(symbols, constriction.stream.model.QuantizedLaplace(-top, top),
                           np.zeros(symbols.size), per_symbol)
        elif symbols.size:
            model = constriction.stream.model.QuantizedLaplace(-top, top, 0.0, scales[name])
            encoder.encode(symbols, model)
    return encoder.get_compressed().tobytes(), scales


def decode(payload: bytes, bits: int, shapes: dict[str, tuple[int, ...]],
           scales: dict[str, Scale], steps: dict[str, float] | None = None) -> dict[str, Tensor]:
    """The integers :func:`encode` wrote for tensors of these ``shapes`` (in order). Tensors coded by the
    autoregressive model (scale "arm") need its tensors decoded before them, and their ``steps``.

    Raises :class:`CodingError` when the payload cannot hold them: the caller checks its CRC first.
    """
    import constriction

    top = levels(bits)
    if len(payload) % 4:
        raise CodingError(f"payload of {len(payload)} bytes is not whole 32-bit words")
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, dtype=np.uint32).copy())
    out: dict[str, Tensor] = {}
    model, level = None, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        scale = scales.get(name)
        if scale == ARM:
            model = model or _model(out, steps or {})
            level += 1
            if level > model.levels:
                raise CodingError(f"more tensors coded by the autoregressive model than its {model.levels} levels")
        table = [] if scale == ARM else _checked(name, scale)  # before decoding: a bad scale is the metadata's fault
        try:
            if scale == ARM:
                symbols = _decode_by_arm(decoder, constriction.stream.model.QuantizedLaplace(-top, top),
                                         rows(shape), model, level - 1)
            elif isinstance(scale, list):
                symbols = _decode_by_context(decoder, constriction.stream.model.QuantizedLaplace(-top, top),
                                             rows(shape), table)
            elif n:
                symbols = decoder.decode(constriction.stream.model.QuantizedLaplace(-top, top, 0.0, table[0]), n)
            else:
                symbols = np.zeros(0, dtype=np.int32)
        except (ValueError, RuntimeError, AssertionError) as err:  # constriction's errors on exhausted data
            raise CodingError(f"payload ends before tensor {name!r} ({err})") from None
        out[name] = torch.from_numpy(np.asarray(symbols).astype(np.int16)).reshape(shape)  # within [-L, L]: exact
    return out


def _checked(name: str, scale: Scale | None) -> list[float]:
    """A tensor's scales from the metadata as a list (one number, or CONTEXTS), each checked."""
    table = scale if isinstance(scale, list) else [scale]
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < 1e9 for s in table):
        raise CodingError(f"tensor {name!r} has no valid scale")
    if isinstance(scale, list) and len(table) != CONTEXTS:
        raise CodingError(f"a context-coded tensor needs {CONTEXTS} scales, not {len(table)}")
    return [float(s) for s in table]


def _decode_by_context(decoder, family, shape: tuple[int, int], table: list[float]) -> np.ndarray:
    """Integers [R * C] coded by context, a row at a time: each row's contexts come from the two decoded above."""
    n_rows, columns = shape
    table_ = np.asarray(table)
    out = np.zeros((n_rows + 2, columns), dtype=np.int64)  # two zero rows above the first
    zeros = np.zeros(columns)
    for r in range(n_rows):
        # row r's contexts as contexts() finds them: from out[r + 1] and out[r], rows r - 1 and r - 2
        out[r + 2] = decoder.decode(family, zeros, table_[contexts(out[r:r + 3])[-1]])
    return out[2:].reshape(-1)


def _model(decoded: dict[str, Tensor], steps: dict[str, float]) -> Exact:
    """The autoregressive model from its tensors decoded so far, checked: shapes that agree, steps that are numbers."""
    names = list(arm_shapes(1, 1))
    if not all(n in decoded and isinstance(steps.get(n), (int, float)) and 0 < steps[n] < 1e30 for n in names):
        raise CodingError("tensors coded by the autoregressive model come before its weights")
    first_bias = decoded[f"{ARM_PREFIX}0.bias"]  # [levels, hidden]
    levels_, hidden = first_bias.shape if first_bias.dim() == 2 else (0, 0)
    if levels_ < 1 or {n: tuple(decoded[n].shape) for n in names} != arm_shapes(hidden, levels_):
        raise CodingError("the autoregressive model's tensors have other shapes than it needs")
    return Exact.from_ints({n: decoded[n].numpy() for n in names}, {n: float(steps[n]) for n in names})


def _decode_by_arm(decoder, family, shape: tuple[int, int], model: Exact, level: int) -> np.ndarray:
    """Integers [R * C] coded by the autoregressive model, a wavefront at a time (nfit.arm.wavefronts)."""
    (above, _), (left, right) = PAD
    out = np.pad(np.zeros(shape), PAD)  # the integers decoded so far, as floats (exact), zero around them
    for r, c in wavefronts(*shape):
        mean, scale = model.predict(context_at(out, r, c), level)
        out[r + above, c + left] = decoder.decode(family, mean, scale)
    return out[above:, left:out.shape[1] - right].reshape(-1)


def checksum(payload: bytes) -> int:
    return zlib.crc32(payload)


__all__ = ["ARM", "CODER", "CONTEXTS", "INT", "CodingError", "MAX_BITS", "MIN_BITS", "Quantised", "Scale", "checksum",
           "contexts", "decode", "dequantise", "encode", "laplace_scale", "levels",
           "quantise", "rounded", "rows", "step_for", "tensor_model"]
