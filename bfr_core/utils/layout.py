"""Channel layouts of whole images: gray / RGB / RGBA in, RGB through the pipeline, the caller's layout out."""
from __future__ import annotations

import torch
from torch import Tensor

def split_alpha(images: Tensor) -> tuple[Tensor, Tensor | None]:
    """[B, C, H, W] with C = 1 (gray), 3 (RGB) or 4 (RGBA) → RGB [B, 3, H, W] and alpha [B, 1, H, W]."""
    c = images.shape[1]
    if c == 3:
        return images, None
    if c == 1:
        return images.expand(-1, 3, -1, -1).contiguous(), None
    if c == 4:
        return images[:, :3], images[:, 3:]
    raise ValueError(f"images must have 1, 3 or 4 channels, got {c}")

def merge_alpha(rgb: Tensor, alpha: Tensor | None, channels: int) -> Tensor:
    """Inverse of `split_alpha`: back to the caller's channel layout."""
    if channels == 1:
        return rgb.mean(1, keepdim=True)
    if channels == 4 and alpha is not None:
        return torch.cat([rgb, alpha], 1)
    return rgb

def check_images(images: Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("the image contains NaN or infinite values; fix the node that produced it")

