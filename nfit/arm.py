"""An autoregressive model of a latent grid's integers (Cool-chic's ARM, Ladune et al. 2023; C3, Kim
et al. 2024): each latent's Laplace mean and scale, predicted by a small MLP from its neighbours that
a decoder has already decoded.

A level of latents is seen as rows [R, C] (:func:`nfit.coding.rows`: the last axis along a row). A
latent's neighbours are the five above it in each of the two rows above (columns c-2 .. c+2) and the
two before it in its own row (``NEIGHBOURS``, zero beyond the edges). Latents along a wavefront
``3r + c = t`` need none of each other, so a decoder takes a whole wavefront at a time: 3R + C steps
for a level, not R x C. One MLP serves every level (``hidden`` ReLU units, two hidden layers), with a
first-layer bias per level.

Measured offline on the latents of files nfit wrote for a held-out photo (BENCHMARKS.md, "Latent
grids"), this model coded them in 0.75-0.78 of the bits of the table of scales by neighbours'
magnitudes that format 5 used; the rows above alone, 0.83-0.86; the coarser level's latent as a
further input, about 1% more.

Two forwards of the same weights:

* :func:`predict` (torch, float): the fit's rate term, differentiable in the latents and the weights.
* :class:`Exact` (numpy): the coder's. The stored weights are integers times a step, the inputs are
  integers, and each hidden layer is floored to a fixed point, so every matrix product is of integers
  below 2^53 in float64: exact in any summation order. The elementwise steps are single IEEE
  operations. So the encoder, which predicts every latent at once, and the decoder, a wavefront at a
  time, compute the same means and scales on any machine, which the range coder needs bit for bit. The
  mean is then rounded to 1/MEAN_STEPS and the scale to one of ``SCALES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PREFIX = "arm."
NEIGHBOURS = tuple((dr, dc) for dr in (-2, -1) for dc in range(-2, 3)) + ((0, -2), (0, -1))  # (row, column) offsets
PAD = ((2, 0), (2, 2))  # zeros around a level [R, C] that hold every neighbour: two rows above, two columns either side
_DR, _DC = (np.array(d) for d in zip(*NEIGHBOURS))
LAYERS = 3
FIXED_POINT = 2.0**10  # hidden activations' steps in the exact forward
MEAN_STEPS = 16  # the coder's mean: a multiple of 1/16
MIN_SCALE = 1 / 64  # the Laplace scale's floor (every coded tensor's): a tensor of zeros still has a model
# the coder's scales: 16 per octave from MIN_SCALE, to 3 significant digits (a decimal every machine reads alike)
SCALE_STEPS = 16
SCALES = np.array([float(f"{MIN_SCALE * 2.0 ** (k / SCALE_STEPS):.3g}") for k in range(SCALE_STEPS * 22)])
START_SCALE = 1 / 32
LEAK_BITS = 24  # constriction's default range coder: every in-range integer has a mass of 2**-24 or more


def param_shapes(hidden: int, levels: int) -> dict[str, tuple[int, ...]]:
    """The model's tensors: layer 0 reads the neighbours (its bias a row per level), layer 2 gives (mean, log scale)."""
    n = len(NEIGHBOURS)
    return {f"{PREFIX}0.weight": (hidden, n), f"{PREFIX}0.bias": (levels, hidden),
            f"{PREFIX}1.weight": (hidden, hidden), f"{PREFIX}1.bias": (hidden,),
            f"{PREFIX}2.weight": (2, hidden), f"{PREFIX}2.bias": (2,)}


def init_params(hidden: int, levels: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Hidden layers as torch.nn.Linear draws them; the output constant: every latent starts at Laplace(0, 1/32),
    under which zero latents (the fit's start) cost next to nothing, as the coder's best scale for them
    does (the fit sizes the rest of a file from a field of zero latents)."""
    shapes = param_shapes(hidden, levels)
    out = {}
    for name, shape in shapes.items():
        if name.startswith(f"{PREFIX}2."):
            out[name] = torch.tensor([0.0, math.log(START_SCALE)]) if name.endswith("bias") else torch.zeros(shape)
        else:
            bound = 1.0 / math.sqrt(shapes[name.replace("bias", "weight")][1])
            out[name] = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).mul_(bound).float()
    return out


def neighbours(z: Tensor) -> Tensor:
    """Each latent's NEIGHBOURS in ``z [B, R, C]`` (zero beyond the edges): -> [B, len(NEIGHBOURS), R * C]."""
    rows, columns = z.shape[-2:]
    padded = F.pad(z, (2, 2, 2, 0))  # two rows above, two columns either side
    return torch.stack([padded[:, 2 + dr:2 + dr + rows, 2 + dc:2 + dc + columns] for dr, dc in NEIGHBOURS],
                       1).flatten(2)


def predict(params: dict[str, Tensor], context: Tensor, level: int) -> tuple[Tensor, Tensor]:
    """Mean and log scale [B, R * C] of each latent of level ``level`` (batched ``params`` [B, ...]) from its
    neighbours in ``context [B, R, C]``: the float model the fit trains. The fit gives it the latents
    rounded, as the coder will, with no gradient through them (each latent's own rate moves it)."""
    x = neighbours(context.detach())  # [B, 12, N]
    out = []
    for b in range(x.shape[0]):
        # Most latents are zero, and so are all the neighbours of most: the model runs once for those and
        # once for each of the rest (at 0.3 bpp 14% of a held-out photo's latents, at 1 bpp 53%)
        live = x[b].abs().amax(0) > 0  # [N]
        weights = [params[f"{PREFIX}{i}.weight"][b] for i in range(LAYERS)]
        biases = [params[f"{PREFIX}0.bias"][b, level], *(params[f"{PREFIX}{i}.bias"][b] for i in range(1, LAYERS))]
        h = torch.cat([x.new_zeros(x.shape[1], 1), x[b][:, live]], 1)  # [12, 1 + live]: an all-zero context first
        for i, (w, bias) in enumerate(zip(weights, biases)):
            h = torch.addmm(bias.unsqueeze(1), w, h)  # channels first: one matrix product along the latents
            h = torch.relu(h) if i < LAYERS - 1 else h
        full = h[:, :1].expand(2, x.shape[2]).clone()
        full[:, live] = h[:, 1:]
        out.append(full)
    mean_log_scale = torch.stack(out)  # [B, 2, N]
    return mean_log_scale[:, 0], mean_log_scale[:, 1]


def bits(q: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Bits [B] of integers (or their stand-ins) ``q [B, N]`` under Laplace(mean, exp(log_scale)) [B, N],
    each integrated over its unit bin, the mass floored as the coder floors it."""
    scale = log_scale.clamp(math.log(MIN_SCALE), math.log(SCALES[-1])).exp()
    x = q - mean

    def cdf(v: Tensor) -> Tensor:
        return 0.5 + 0.5 * torch.sign(v) * -torch.expm1(-v.abs() / scale)

    mass = (cdf(x + 0.5) - cdf(x - 0.5)).clamp_min(2.0**-LEAK_BITS)
    return -torch.log2(mass).sum(1)


@dataclass(frozen=True)
class Exact:
    """The model as a file stores it, integers ``q`` and a float32 ``step`` per tensor, evaluated exactly
    (see the module's notes)."""

    weights: tuple[np.ndarray, ...]  # per layer: integers [out, in], as float64
    steps: tuple[float, ...]  # per layer: the weight's step
    biases: tuple[np.ndarray, ...]  # per layer: the bias as the file decodes it (float32 q * step), float64

    @classmethod
    def from_ints(cls, q: dict[str, np.ndarray], steps: dict[str, float]) -> Exact:
        """From the stored integers and steps of the tensors named PREFIX*, as decoding reads them."""
        def value(name: str) -> np.ndarray:
            return (np.asarray(q[name], dtype=np.float32) * np.float32(steps[name])).astype(np.float64)

        return cls(tuple(np.asarray(q[f"{PREFIX}{i}.weight"], dtype=np.float64) for i in range(LAYERS)),
                   tuple(float(np.float32(steps[f"{PREFIX}{i}.weight"])) for i in range(LAYERS)),
                   tuple(value(f"{PREFIX}{i}.bias") for i in range(LAYERS)))

    @property
    def levels(self) -> int:
        return self.biases[0].shape[0]

    def predict(self, context: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Means and scales [n] of latents whose NEIGHBOURS are ``context [n, 12]`` (integers), the coder's."""
        h = context.astype(np.float64, copy=False)
        for i, (w, step, bias) in enumerate(zip(self.weights, self.steps, self.biases)):
            pre = (h @ w.T) * (step if i == 0 else step / FIXED_POINT) + (bias[level] if i == 0 else bias)
            if i < LAYERS - 1:  # a fixed point: the next product stays one of integers
                h = np.floor(np.clip(pre, 0.0, 2.0**20) * FIXED_POINT)
        pre = np.nan_to_num(pre, nan=0.0, posinf=1e6, neginf=-1e6)
        mean = np.clip(np.round(pre[:, 0] * MEAN_STEPS), -2.0**20, 2.0**20) / MEAN_STEPS
        index = np.clip(np.round((pre[:, 1] - math.log(MIN_SCALE)) * (SCALE_STEPS / math.log(2))), 0, len(SCALES) - 1)
        return mean, SCALES[index.astype(np.int64)]


def context_of(q: np.ndarray) -> np.ndarray:
    """NEIGHBOURS of every integer of ``q [R, C]`` (zero beyond the edges): -> [R * C, 12] float64, row by row.
    Written a neighbour at a time into one array: 2-5x faster than stacking the shifted levels."""
    rows, columns = q.shape
    padded = np.pad(q.astype(np.float64), PAD)
    out = np.empty((rows, columns, len(NEIGHBOURS)))
    for k, (dr, dc) in enumerate(NEIGHBOURS):
        out[:, :, k] = padded[2 + dr:2 + dr + rows, 2 + dc:2 + dc + columns]
    return out.reshape(-1, len(NEIGHBOURS))


def context_at(padded: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """NEIGHBOURS [n, 12] of the latents at rows ``r`` and columns ``c`` [n] of a level padded by PAD
    (as decoded so far): what :func:`context_of` gives them."""
    return padded[r[:, None] + PAD[0][0] + _DR, c[:, None] + PAD[1][0] + _DC]


def wavefronts(rows: int, columns: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The decoding order of a level [R, C]: per wavefront ``3r + c = t``, its rows and columns (rows rising).
    Every NEIGHBOUR of a latent lies on an earlier wavefront: (r-1, c+2) on t-1, (r, c-1) on t-1."""
    out = []
    for t in range(3 * (rows - 1) + columns if rows and columns else 0):
        r = np.arange(max(0, -(-(t - columns + 1) // 3)), min(rows - 1, t // 3) + 1)
        out.append((r, t - 3 * r))
    return out


@lru_cache(maxsize=32)
def order(rows: int, columns: int) -> np.ndarray:
    """Flat indices [R * C] of a level's integers in the order :func:`wavefronts` decodes them (read-only,
    cached: a budgeted file is encoded some 10-25 times while its size is chosen, ~24 ms each at 768x512)."""
    out = (np.concatenate([r * columns + c for r, c in wavefronts(rows, columns)]) if rows and columns
           else np.zeros(0, dtype=np.int64))
    out.setflags(write=False)
    return out


__all__ = ["Exact", "NEIGHBOURS", "PAD", "PREFIX", "SCALES", "bits", "context_at", "context_of", "init_params",
           "neighbours", "order", "param_shapes", "predict", "wavefronts"]
