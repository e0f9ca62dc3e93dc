"""Tensor helpers every concept needs: where a model lives, luma, smoothstep, antialiased resizing, dtype names."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA_BT601 = (0.299, 0.587, 0.114)
def device_dtype_of(obj) -> tuple[torch.device | None, torch.dtype | None]:
    """(device, floating dtype) a model-like object runs in; Nones where it does not say.

    Explicit ``device``/``dtype`` attributes win (wrappers such as priors and recognizers have them); otherwise the
    first floating parameter of the object, or of its ``.model``, decides; a module with buffers only (an
    analytic prior keeping float64 data) gives its device but no dtype.
    """
    device = getattr(obj, "device", None)
    dtype = getattr(obj, "dtype", None)
    device = torch.device(device) if isinstance(device, (str, torch.device)) else None
    dtype = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None
    if device is not None and dtype is not None:
        return device, dtype
    for holder in (obj, getattr(obj, "model", None)):
        if isinstance(holder, torch.nn.Module):
            for p in holder.parameters():
                if p.is_floating_point():
                    return device or p.device, dtype or p.dtype
            for b in holder.buffers():
                return device or b.device, dtype
    return device, dtype


def luma(x: Tensor) -> Tensor:
    """BT.601 luma [B, 1, H, W] of RGB images [B, 3, H, W]."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return LUMA_BT601[0] * r + LUMA_BT601[1] * g + LUMA_BT601[2] * b


def smoothstep(x: Tensor) -> Tensor:
    """3x² − 2x³ on [0, 1], clamped outside: the soft edge of every mask."""
    x = x.clamp(0, 1)
    return x * x * (3 - 2 * x)


def resize_antialiased(x: Tensor, hw: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """[B, C, H, W] → [B, C, *hw] with an antialiasing filter when shrinking (as DifFace resizes); no-op at size."""
    hw = (int(hw[0]), int(hw[1]))
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode=mode, antialias=True, align_corners=False)
