"""Choosing where to compute."""

from __future__ import annotations

import torch

from nfit.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' is CUDA when present, else CPU; 'cuda' without a GPU is an error, not a fallback."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device", "CUDA was requested but no CUDA device is available")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError("--device", f"unknown device {name!r} (use auto, cpu or cuda)")
