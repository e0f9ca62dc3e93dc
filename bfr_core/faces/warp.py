"""Batched warps between images and aligned crops (torch grid_sample, or OpenCV's SIMD warps on the CPU).

Conventions (the same as OpenCV's `warpAffine`): pixel centres sit at integer coordinates, and an
affine `M` [2, 3] maps a source-image point (x, y) to crop coordinates `M @ (x, y, 1)`.
Every function is batched over faces, runs on the tensors' device and is differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils import resize_antialiased
from .geometry import alignment_scale, homogeneous, invert_affine, transform_points


BORDER_MODES = {"reflect": "reflection", "replicate": "border", "constant": "zeros"}


def sampling_grid(m_dst_to_src: Tensor, out_hw: tuple[int, int], src_hw: tuple[int, int],
                   offset_xy: Tensor | None = None) -> Tensor:
    """grid_sample grid [N, H, W, 2] for output pixels mapped to source pixels by `m_dst_to_src`.

    offset_xy [N, 2]: output pixel (0, 0) sits at this coordinate of the destination frame
    (used when only a region of a large canvas is rendered).
    """
    n = m_dst_to_src.shape[0]
    h, w = out_hw
    sh, sw = src_hw
    device, dtype = m_dst_to_src.device, torch.float32
    ys = torch.arange(h, device=device, dtype=dtype)
    xs = torch.arange(w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy], -1).reshape(1, -1, 2).expand(n, -1, -1)
    if offset_xy is not None:
        pts = pts + offset_xy.to(dtype)[:, None, :]
    src = transform_points(m_dst_to_src.to(dtype), pts)
    # Pixel index → normalised coordinate for align_corners=False.
    scale = torch.tensor([2.0 / sw, 2.0 / sh], device=device, dtype=dtype)
    return (src * scale + (scale / 2 - 1)).reshape(n, h, w, 2)


def warp_affine(images: Tensor, m: Tensor, out_hw: tuple[int, int], border: str = "reflect",
                mode: str = "bilinear", offset_xy: Tensor | None = None) -> Tensor:
    """Batched equivalent of `cv2.warpAffine(img, M, (w, h))` for [N, C, H, W] images.

    m [N, 2, 3] maps source → destination. `border`: reflect | replicate | constant (zeros).
    """
    if border not in BORDER_MODES:
        raise ValueError(f"border must be one of {list(BORDER_MODES)}, got {border!r}")
    grid = sampling_grid(invert_affine(m.double()), out_hw, images.shape[-2:], offset_xy)
    if images.dtype in (torch.float16, torch.bfloat16):  # half grids misplace samples by up to ~2 px
        return warp_affine(images.float(), m, out_hw, border, mode, offset_xy).to(images.dtype)
    return F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode=BORDER_MODES[border],
                         align_corners=False)


def shrink_antialiased(src: Tensor, factor: float) -> tuple[Tensor, Tensor]:
    """Resize src [N, C, H, W] by `factor` < 1 with an antialiasing filter.

    Returns the small image and the [2, 3] map from old to new pixel coordinates. Warps that
    minify more than 2:1 first shrink this way to 2:1 and let bicubic sampling do the rest: fine
    detail does not alias, and the band the destination can hold passes unblurred (shrinking all
    the way, or box prefiltering, costs ~15 dB on a crop → paste round trip).
    """
    h, w = src.shape[-2:]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    small = resize_antialiased(src.float(), (nh, nw)).to(src.dtype)
    sx, sy = nw / w, nh / h
    old_to_new = torch.tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]], dtype=torch.float64,
                              device=src.device)
    return small, old_to_new


def image_boxes_of_crops(affines: Tensor, crop_size: int, hw: tuple[int, int], margin: int = 2,
                         support: tuple[int, int, int, int] | None = None,
                         clip: bool = True) -> list[tuple[int, int, int, int]]:
    """Integer boxes (x0, y0, x1, y1), clipped to the image, covering crops placed by affines [F, 2, 3].

    support: only this part (u0, v0, u1, v1) of each crop, e.g. where its paste mask is non-zero.
    Plain numpy: this runs once per paste on a handful of numbers, where torch's per-op overhead dominates.
    """
    import numpy as np

    u0, v0, u1, v1 = support if support is not None else (0, 0, crop_size, crop_size)
    corners = np.array([[u0, v0], [u1, v0], [u0, v1], [u1, v1]], np.float64) - 0.5
    m = affines.detach().double().cpu().numpy().reshape(-1, 2, 3)
    inv_lin = np.linalg.inv(m[:, :, :2])
    pts = np.einsum("fij,kj->fki", inv_lin, corners - 0) - np.einsum("fij,fj->fi", inv_lin, m[:, :, 2])[:, None, :]
    h, w = hw
    lo = np.floor(pts.min(1)).astype(np.int64) - margin
    hi = np.ceil(pts.max(1)).astype(np.int64) + margin
    if not clip:
        return [(int(a), int(b), int(c), int(d)) for (a, b), (c, d) in zip(lo, hi)]
    return [(max(0, int(a)), max(0, int(b)), min(w, int(c)), min(h, int(d))) for (a, b), (c, d) in zip(lo, hi)]


def image_box_of_crop(m: Tensor, crop_size: int, hw: tuple[int, int], margin: int = 2,
                      support: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """`image_boxes_of_crops` for one affine [2, 3]."""
    return image_boxes_of_crops(m[None], crop_size, hw, margin, support)[0]


def resize_map(fx: float, fy: float):
    """[3, 3] numpy map from pixel coordinates to those of the same image resized by (fx, fy)."""
    import numpy as np

    return np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]], np.float64)


CUBIC_BELOW_SCALE = 4.0  # mode "auto": bicubic for faces magnified less than this into the crop


def _face_mode(mode: str, scale: float) -> str:
    """Interpolation for one face; `scale` = crop pixels per image pixel."""
    if mode != "auto":
        return mode
    return "bicubic" if scale < CUBIC_BELOW_SCALE else "bilinear"


CV2_BORDERS = {"reflect": 2, "replicate": 1, "constant": 0}  # cv2.BORDER_REFLECT / _REPLICATE / _CONSTANT


def use_opencv(t: Tensor, backend: str = "auto") -> bool:
    """OpenCV's SIMD warps are ~5x faster than grid_sample on the CPU; torch keeps gradients and GPUs."""
    if backend not in ("auto", "opencv", "torch"):
        raise ValueError(f"backend must be auto, opencv or torch, got {backend!r}")
    if backend == "auto":
        return t.device.type == "cpu" and not t.requires_grad and t.dtype == torch.float32
    return backend == "opencv"


def to_hwc_numpy(t: Tensor):
    """[C, H, W] float tensor → contiguous float32 [H, W, C] array for OpenCV."""
    return t.detach().permute(1, 2, 0).float().contiguous().numpy()


def warp_faces(images: Tensor, image_index: Tensor, affines: Tensor, crop_size: int,
               border: str = "reflect", mode: str = "auto", backend: str = "auto") -> Tensor:
    """Cut aligned crops [F, C, crop, crop] out of images [B, C, H, W].

    image_index [F] says which image each face comes from; affines [F, 2, 3] map image → crop.
    Faces over twice the crop size are cut out and shrunk with an antialiasing filter first; the cost
    is one sample per crop pixel (plus the face's own area when it is shrunk), never the whole
    image. `mode`: bilinear (what facexlib and DifFace's training crops use; 3x faster on the CPU),
    bicubic (sharper: a crop → paste round trip of a face magnified < 4x gains ~12 dB), or auto
    (default): bicubic for faces magnified less than `CUBIC_BELOW_SCALE`, bilinear for smaller faces,
    whose crops are smooth upsamplings either way. Results are clamped to [0, 1]. `backend`: auto
    (OpenCV for CPU float32 tensors that need no gradient, torch otherwise), opencv or torch; both
    give the same crops.
    """
    if mode not in ("auto", "bilinear", "bicubic"):
        raise ValueError(f"mode must be auto, bilinear or bicubic, got {mode!r}")
    if border not in BORDER_MODES:
        raise ValueError(f"border must be one of {list(BORDER_MODES)}, got {border!r}")
    n = affines.shape[0]
    if n == 0:
        return images.new_empty(0, images.shape[1], crop_size, crop_size)
    hw = tuple(images.shape[-2:])
    if not use_opencv(images, backend):
        return _warp_faces_torch(images, image_index, affines, crop_size, border, mode)
    import cv2
    import numpy as np

    # Crops are written straight into one channels-last buffer; the result is a [F, C, S, S]
    # view of it (ComfyUI's IMAGE layout is channels-last too, so no copy is needed there).
    buf = np.empty((n, crop_size, crop_size, images.shape[1]), np.float32)
    boxes = image_boxes_of_crops(affines, crop_size, hw)
    raw = image_boxes_of_crops(affines, crop_size, hw, clip=False)
    ms = affines.detach().double().cpu().numpy()
    fallback, needs_clip = [], []
    for i, b in enumerate(image_index.tolist()):
        x0, y0, x1, y1 = boxes[i]
        rx0, ry0, rx1, ry1 = raw[i]
        overflow = max(-rx0, -ry0, rx1 - hw[1], ry1 - hw[0])
        # OpenCV cannot warp from an empty region, and its cubic BORDER_REFLECT is wrong beyond one
        # image length outside the image: such faces take the torch path.
        if x1 <= x0 or y1 <= y0 or (border == "reflect" and overflow >= min(x1 - x0, y1 - y0)):
            fallback.append(i)
            continue
        region = to_hwc_numpy(images[b, :, y0:y1, x0:x1])
        m = ms[i].copy()
        m[:, 2] += m[:, 0] * x0 + m[:, 1] * y0  # the region starts at (x0, y0)
        s = float(np.hypot(m[0, 0], m[1, 0]))
        interp = cv2.INTER_CUBIC if _face_mode(mode, s) == "bicubic" else cv2.INTER_LINEAR
        # Cubic weights overshoot the input's range; any interpolation keeps out-of-range input out of range.
        if interp == cv2.INTER_CUBIC or region.min() < 0 or region.max() > 1:
            needs_clip.append(i)
        if s < 0.5:  # shrink to 2:1 with area averaging, then warp
            rh, rw = region.shape[:2]
            nh, nw = max(1, round(rh * 2 * s)), max(1, round(rw * 2 * s))
            region = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
            m = (np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(resize_map(nw / rw, nh / rh)))[:2]
        dst = buf[i] if buf.shape[-1] in (3, 4) else None  # cv2 writes 3/4-channel crops in place
        crop = cv2.warpAffine(region, m, (crop_size, crop_size), dst=dst, flags=interp,
                              borderMode=CV2_BORDERS[border], borderValue=0)
        if dst is None:
            buf[i] = crop.reshape(crop_size, crop_size, -1)
    for i in needs_clip:  # per crop: a pass over every crop would cost more than the bilinear warps
        np.clip(buf[i], 0, 1, out=buf[i])
    out = torch.from_numpy(buf).permute(0, 3, 1, 2)
    if fallback:
        idx = torch.tensor(fallback)
        out[idx] = _warp_faces_torch(images, image_index[idx], affines[idx], crop_size, border, mode)
    return out


def _warp_faces_torch(images: Tensor, image_index: Tensor, affines: Tensor, crop_size: int, border: str,
                      mode: str) -> Tensor:
    """`warp_faces` with grid_sample: any device, differentiable."""
    n, hw = affines.shape[0], tuple(images.shape[-2:])
    out = images.new_empty(n, images.shape[1], crop_size, crop_size)
    scales = alignment_scale(affines).tolist()
    boxes = image_boxes_of_crops(affines, crop_size, hw)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (b, s) in enumerate(zip(image_index.tolist(), scales)):
        x0, y0, x1, y1 = boxes[i]
        if s >= 0.5 or x1 <= x0 or y1 <= y0:  # sample directly, all faces of an image in one call
            groups.setdefault((b, _face_mode(mode, s)), []).append(i)
            continue
        region, old_to_new = shrink_antialiased(images[b:b + 1, :, y0:y1, x0:x1], 2 * s)
        shift = torch.tensor([[1.0, 0, -x0], [0, 1.0, -y0]], dtype=torch.float64, device=images.device)
        # image → region → shrunk region; the crop map then starts from shrunk-region pixels.
        to_small = homogeneous(old_to_new) @ homogeneous(shift)
        m = (homogeneous(affines[i].double()) @ torch.linalg.inv(to_small))[:2]
        out[i] = warp_affine(region, m[None].float(), (crop_size, crop_size), border, mode=_face_mode(mode, s))[0]
    for (b, face_mode), idx in groups.items():
        out[idx] = warp_affine(images[b:b + 1].expand(len(idx), -1, -1, -1), affines[idx],
                               (crop_size, crop_size), border, mode=face_mode)
    return out.clamp_(0, 1)
