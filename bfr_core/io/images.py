"""Image files ↔ tensors for the CLI: 8/16-bit, grayscale, RGB and RGBA, channel order handled."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .atomic import publish, temp_beside


@dataclass
class LoadedImage:
    rgb: Tensor  # [3, H, W] float32 in [0, 1]
    alpha: Tensor | None  # [H, W] or None
    gray: bool
    bit_depth: int  # 8 or 16


def read_image(path: str | os.PathLike) -> LoadedImage:
    import cv2

    if not Path(path).is_file():
        raise ValueError(f"image not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)  # works with non-ASCII paths too
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"cannot read image {path} (not an image file, or unsupported format)")
    frames = _frame_count(path)
    if frames > 1:  # writing frame 0 only would silently drop the rest
        raise ValueError(f"{path} holds {frames} frames (animated or multi-page); only single images are restored "
                         f"here: extract the frames first (e.g. ffmpeg -i {Path(path).name} frame_%04d.png)")
    if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] == 3):
        # IMREAD_UNCHANGED ignores EXIF orientation (phone photos would be sideways); these flags apply it.
        img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if img.ndim == 2 else cv2.IMREAD_COLOR)
    if img.dtype == np.uint16:
        depth, scale = 16, 65535.0
    elif img.dtype == np.uint8:
        depth, scale = 8, 255.0
    else:
        raise ValueError(f"{path}: unsupported pixel type {img.dtype} (8- or 16-bit images only)")
    arr = img.astype(np.float32) / scale
    alpha = None
    gray = arr.ndim == 2 or arr.shape[2] == 1
    if gray:
        arr = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = torch.from_numpy(np.ascontiguousarray(arr[:, :, 3]))
        arr = arr[:, :, 2::-1]
    else:
        arr = arr[:, :, ::-1]
    rgb = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
    return LoadedImage(rgb, alpha, gray, depth)


def _frame_count(path: str | os.PathLike) -> int:
    """Frames/pages in an image file (animated GIF/WebP/PNG, multi-page TIFF); 1 when OpenCV cannot tell."""
    import cv2

    try:
        return int(cv2.imcount(str(path)))
    except (cv2.error, AttributeError, SystemError):
        return 1


def write_image(path: str | os.PathLike, rgb: Tensor, alpha: Tensor | None = None, gray: bool = False,
                bit_depth: int = 8) -> None:
    """Write [3, H, W] in [0, 1] as PNG/JPEG..., in the same layout and depth as the input."""
    import cv2

    scale, dtype = (65535.0, np.uint16) if bit_depth == 16 else (255.0, np.uint8)
    arr = rgb.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    if gray:
        arr = arr.mean(axis=2)
    else:
        arr = arr[:, :, ::-1]
        if alpha is not None:
            arr = np.concatenate([arr, alpha.detach().float().cpu().numpy()[:, :, None]], axis=2)
    out = np.round(arr * scale).astype(dtype)
    ok, buf = cv2.imencode(Path(path).suffix or ".png", out)
    if not ok:
        raise ValueError(f"cannot encode image for {path}")
    path = Path(path)
    fd, tmp = temp_beside(path)  # an interrupted run never leaves a truncated result behind
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
