"""Pictures of what fitting does: GradNCP's selected context over the test-time steps.

At each step of Algorithm 2 the top ``gamma`` fraction of points, by last-layer
gradient norm, sets the step size. Drawn over the steps, the selection shows what
the field is still missing: the global shape first, then edges and fine detail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nfit.atomic import atomic_output
from nfit.config import AdaptConfig
from nfit.fields import Field, Params
from nfit.fit import fit_sgd

DIM = 0.25  # brightness of the points left out of the context


def selected_context(field: Field, init: Params, targets: Tensor, shape: tuple[int, ...], config: AdaptConfig) -> Tensor:
    """Which points each step's context holds while fitting from ``init``: bool [K, B, N].

    targets [B, N, C] on the compute device; the fit is :func:`nfit.fit.fit_sgd` itself,
    and the maps are the contexts it selects.
    """
    maps: list[Tensor] = []

    def on_context(step: int, index: Tensor) -> None:  # index [B, k]
        maps.append(torch.zeros(targets.shape[:2], dtype=torch.bool, device=targets.device).scatter_(1, index, True))

    fit_sgd(field, init, targets, shape, config, on_context=on_context)
    return torch.stack(maps).cpu()


def context_frames(image: np.ndarray, maps: Tensor) -> list[np.ndarray]:
    """One uint8 RGB picture per step: the image where the context is, dimmed elsewhere.

    image [H, W, C] in [0, 1] (C = 1 or 3); maps bool [K, H * W].
    """
    h, w, c = image.shape
    rgb = np.repeat(image, 3, axis=2) if c == 1 else image[..., :3]
    frames = []
    for m in maps.numpy().reshape(-1, h, w, 1):
        frames.append(np.round(255 * rgb * np.where(m, 1.0, DIM)).astype(np.uint8))
    return frames


def write_context_maps(out_dir: Path, stem: str, frames: list[np.ndarray]) -> list[Path]:
    """``stem_context_KK.png`` per step, a strip of them all, and an animated GIF; each written atomically."""
    import imageio.v3 as iio

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, frame in enumerate(frames):
        path = out_dir / f"{stem}_context_{k:02d}.png"
        with atomic_output(path) as tmp:
            iio.imwrite(tmp, frame, extension=".png")
        written.append(path)
    gap = np.full((frames[0].shape[0], 2, 3), 255, np.uint8)
    strip = np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=1)
    for name, data, kw in ((f"{stem}_context.png", strip, {}), (f"{stem}_context.gif", np.stack(frames), {"duration": 250, "loop": 0})):
        path = out_dir / name
        with atomic_output(path) as tmp:
            iio.imwrite(tmp, data, extension=Path(name).suffix, **kw)
        written.append(path)
    return written


__all__ = ["context_frames", "selected_context", "write_context_maps"]
