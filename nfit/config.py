"""Every user-facing default, written once. The CLI and the Python API both read these."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FitConfig:
    """Fitting one batch of signals from a random initialisation with Adam."""

    steps: int = 500
    lr: float = 1e-3
    seed: int = 0
    target_psnr: float | None = None  # stop a signal once its PSNR (dB) reaches this
    batch_size: int = 16  # signals of equal shape fitted together
    # Coordinates x signals per forward/backward: larger grids are accumulated in
    # chunks, giving the exact full-grid gradient in bounded memory.
    chunk: int = 1 << 18
    device: str = "auto"

    def __post_init__(self):
        from nfit.errors import ConfigError

        if self.steps < 0:
            raise ConfigError("--steps", "must be >= 0")
        if not self.lr > 0:
            raise ConfigError("--lr", "must be positive")
        if self.batch_size < 1:
            raise ConfigError("--batch-size", "must be >= 1")
        if self.chunk < 1:
            raise ConfigError("chunk", "must be >= 1")


@dataclass
class FieldOptions:
    """Which field to fit; None keeps the field's own default (see nfit.fields)."""

    name: str = "siren"
    width: int | None = None
    depth: int | None = None
    w0: float | None = None  # SIREN only


@dataclass
class RenderConfig:
    res: int | None = None  # longest side; None: native size
    width: int | None = None
    height: int | None = None
    bit_depth: int | None = None  # None: 16 for 16-bit sources written as PNG, else 8
    quality: int = 95  # JPEG
    device: str = "auto"
