"""Media files <-> signals: values in [0, 1] on a regular grid, one module per modality.

A modality knows which files it reads, how to decode them into a :class:`Signal`
and how to write rendered values back. New modalities register in
:data:`MODALITIES`; everything downstream (fitting, rendering, .nf files) only sees
grid shapes and channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from nfit.errors import InputError
from nfit.signals import image
from nfit.signals.grid import CONVENTION, fit_shape, grid_coords


@dataclass
class Signal:
    """One decoded file: ``values`` float32 ``[*shape, C]`` in [0, 1]."""

    modality: str
    values: np.ndarray
    bit_depth: int
    source: Path

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[:-1])

    @property
    def channels(self) -> int:
        return self.values.shape[-1]


class ImageModality:
    name: ClassVar[str] = "image"
    axes: ClassVar[tuple[str, ...]] = ("y", "x")
    extensions: ClassVar[tuple[str, ...]] = image.READ_EXTENSIONS

    @staticmethod
    def read(path: Path) -> Signal:
        values, bits = image.read_image(path)
        return Signal("image", values, bits, path)

    @staticmethod
    def output_format(path: Path) -> str:
        return image.output_format(path)

    @staticmethod
    def write(path: Path, pixels: np.ndarray, fmt: str, **options) -> None:
        image.write_image(path, pixels, fmt, **options)

    @staticmethod
    def target_shape(
        native: tuple[int, ...], res: int | None = None, width: int | None = None, height: int | None = None
    ) -> tuple[int, ...]:
        """The render grid: native, longest side ``res``, or explicit width and height."""
        if width is not None or height is not None:
            if width is None or height is None:
                h, w = native
                return (height, round(w * height / h)) if width is None else (round(h * width / w), width)
            return (height, width)
        return native if res is None else fit_shape(native, res)


MODALITIES: dict[str, type] = {ImageModality.name: ImageModality}


def modality_for(path: Path, override: str | None = None):
    if override is not None:
        if override not in MODALITIES:
            raise InputError(path, f"unknown modality {override!r} (known: {', '.join(MODALITIES)})")
        return MODALITIES[override]
    ext = path.suffix.lower()
    for modality in MODALITIES.values():
        if ext in modality.extensions:
            return modality
    known = ", ".join(e for m in MODALITIES.values() for e in m.extensions)
    raise InputError(path, f"unsupported file type {ext or '(no extension)'} (nfit reads {known})")


def read_signal(path: str | Path, modality: str | None = None) -> Signal:
    """Decode a media file, with one-line errors for the common ways it can fail."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, not a file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    try:
        return modality_for(path, modality).read(path)
    except PermissionError:
        raise InputError(path, "permission denied") from None


__all__ = ["CONVENTION", "MODALITIES", "Signal", "fit_shape", "grid_coords", "modality_for", "read_signal"]
