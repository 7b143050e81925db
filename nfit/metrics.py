"""Reconstruction quality, as the papers report it."""

from __future__ import annotations

import torch
from torch import Tensor

PSNR_CAP_DB = 100.0  # an exact reconstruction is reported as 100 dB rather than infinity


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-signal mean squared error: [B, ...] x [B, ...] -> [B]."""
    return (pred - target).pow(2).flatten(1).mean(dim=1)


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-signal PSNR in dB for values in [0, 1], on predictions clamped to [0, 1]: -> [B]."""
    err = mse(pred.clamp(0.0, 1.0), target).clamp_min(10 ** (-PSNR_CAP_DB / 10))
    return -10.0 * torch.log10(err)


def psnr_from_mse(err: Tensor) -> Tensor:
    return -10.0 * torch.log10(err.clamp_min(10 ** (-PSNR_CAP_DB / 10)))


SSIM_MIN_SIDE = 11  # the Gaussian window of pytorch-msssim's SSIM


def ssim(pred: Tensor, target: Tensor) -> Tensor | None:
    """Per-image SSIM (pytorch-msssim defaults, data_range 1) on clamped predictions.

    pred, target: [B, H, W, C]. Returns [B], or None for images smaller than the window.
    """
    from pytorch_msssim import ssim as _ssim

    if min(pred.shape[1], pred.shape[2]) < SSIM_MIN_SIDE:
        return None
    x = pred.clamp(0.0, 1.0).permute(0, 3, 1, 2).float()
    y = target.permute(0, 3, 1, 2).float()
    return _ssim(x, y, data_range=1.0, size_average=False)


def signal_ssim(pred: Tensor, target: Tensor) -> Tensor | None:
    """SSIM of signals [B, *shape, C] as the papers report it: per image, or for video the mean
    over frames of each clip's per-frame SSIM; None for audio and for frames below the window."""
    if pred.dim() == 4:  # images [B, H, W, C]
        return ssim(pred, target)
    if pred.dim() == 5:  # video [B, T, H, W, C]
        b, t = pred.shape[:2]
        per_frame = ssim(pred.flatten(0, 1), target.flatten(0, 1))
        return None if per_frame is None else per_frame.view(b, t).mean(dim=1)
    return None
