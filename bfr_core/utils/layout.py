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


def check_images(images: Tensor, what: str = "images", channels: tuple[int, ...] = (1, 3, 4),
                 allow_empty: bool = False, finite: bool = True) -> None:
    """The one input contract of the library's image functions: a float tensor [B, C, H, W] with values in
    [0, 1] (finite), C in ``channels``. Anything else is a ValueError naming ``what`` and saying how to fix it —
    never a silent misread (uint8 0..255 data taken as 0..1 would find no faces and paste garbage)."""
    if not isinstance(images, Tensor):
        raise ValueError(f"{what} must be a torch tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{what} must be [B, C, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        hint = " (0..255 data: pass images.float() / 255)" if images.dtype == torch.uint8 else ""
        raise ValueError(f"{what} must be a float tensor with values in [0, 1], got {images.dtype}{hint}")
    if images.shape[1] not in channels:
        hint = " (channels-last? use .movedim(-1, 1))" if images.shape[-1] in channels else ""
        raise ValueError(f"{what} must have {' or '.join(map(str, channels))} channels in dim 1, got shape "
                         f"{tuple(images.shape)}{hint}")
    if images.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{what} is an empty batch (0 images)")
    if min(images.shape[-2:]) < 1:
        raise ValueError(f"{what} have no pixels (shape {tuple(images.shape)})")
    if finite and not bool(torch.isfinite(images).all()):
        raise ValueError(f"{what} contain NaN or infinite values; fix the node or step that produced them")
