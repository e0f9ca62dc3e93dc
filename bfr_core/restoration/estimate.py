"""The backbone's estimate f(y) of aligned crops: resized to the prior's size, chunked, out-of-memory safe."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..utils import ProgressCallback, device_dtype_of, luma, resize_antialiased, run_chunked
from ..utils.layout import check_images

# A backbone: RGB crops [B, 3, H, W] in [0, 1] → same shape in [0, 1].
Restorer = Callable[[Tensor], Tensor]


def resize_crops(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """The resize between crop and prior sizes: antialiased bicubic (as DifFace), clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return resize_antialiased(x, hw).clamp_(0, 1)


def apply_backbone(restorer: Restorer | None, y: Tensor, grad: bool = False) -> Tensor:
    """The backbone on one chunk y [n, C, H, W] float32 in [0, 1] → float32 in [0, 1] on y's device.

    ``None`` is the identity. Gray crops go in as RGB and their luma comes back (backbones are RGB). ``grad``
    keeps the autograd graph (training); inference runs without it.
    """
    if restorer is None:
        return y
    r_dev, r_dtype = device_dtype_of(restorer)
    gray = y.shape[1] == 1
    x = (y.repeat(1, 3, 1, 1) if gray else y).to(device=r_dev or y.device, dtype=r_dtype or torch.float32)
    with torch.set_grad_enabled(grad):
        out = restorer(x.contiguous())
    if gray and out.ndim == 4 and out.shape[1] == 3:
        out = luma(out.float())
    if tuple(out.shape) != tuple(y.shape):
        raise ValueError(f"restorer returned shape {tuple(out.shape)} for input {tuple(y.shape)}")
    return out.to(device=y.device, dtype=torch.float32).clamp(0, 1)


def backbone_estimate(
    crops: Tensor,
    restorer: Restorer | None,
    size: int | tuple[int, int] | None = None,
    batch_size: int = 4,
    progress: ProgressCallback | None = None,
) -> Tensor:
    """f(y): the backbone's estimate of each crop, exactly as `restore_faces` computes it before diffusion.

    ``crops`` [B, C, H, W] in [0, 1] are resized to ``size`` (the prior's ``sample_size``; None keeps H×W) like
    `restore_faces` does, run through ``restorer`` (None = identity) on its own device/dtype in chunks of
    ``batch_size`` (halved on out-of-memory), and returned at ``size`` in [0, 1] as float32 on the crops' device.
    ``restore_faces(backbone_estimate(y, f, S), prior, restorer=None)`` equals ``restore_faces(y, prior, restorer=f)``
    for a prior of size S, so the estimate can also serve as the blind identity target. ``progress(done, total)``
    counts chunks.
    """
    check_images(crops, "crops", channels=(1, 3), allow_empty=True)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    hw = tuple(crops.shape[-2:]) if size is None else ((int(size), int(size)) if isinstance(size, int) else
                                                       tuple(int(v) for v in size))

    def run(start: int, n: int, report: Callable[[int], None]) -> Tensor:
        y = resize_crops(crops[start:start + n].float().clamp(0, 1), hw)
        out = apply_backbone(restorer, y).to(crops.device)
        report(1)
        return out

    if crops.shape[0] == 0:
        return crops.new_zeros(0, crops.shape[1], *hw, dtype=torch.float32)
    return torch.cat(run_chunked(run, crops.shape[0], int(batch_size), 1, progress))
