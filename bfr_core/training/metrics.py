"""Validation figures for adaptation: PSNR to the pseudo-targets (fidelity) and a no-reference sharpness figure.

Sharpness is the variance of the Laplacian of the luma on the 0–255 scale (the common blur measure): a backbone
that only learned to blur scores low even when its PSNR to a soft target is fine.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils import luma

__all__ = ["laplacian_variance", "psnr"]

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB per image of [B, C, H, W] tensors in [0, 1] (MSE floored at 1e-10: identical images → 100 dB)."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def laplacian_variance(x: Tensor) -> Tensor:
    """Variance of the 3×3 Laplacian of each image's luma (×255), valid pixels only → [B]."""
    y = (luma(x) if x.shape[1] == 3 else x[:, :1]).double() * 255.0
    lap = F.conv2d(y, _LAPLACIAN.to(y)[None, None])
    return lap.flatten(1).var(1)
