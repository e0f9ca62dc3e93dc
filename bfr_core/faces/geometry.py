"""Face geometry: the FFHQ landmark template and batched similarity transforms (float64 where it matters).

Conventions (the same as OpenCV's `warpAffine`): pixel centres sit at integer coordinates, and an
affine `M` [2, 3] maps a source-image point (x, y) to crop coordinates `M @ (x, y, 1)`.
"""
from __future__ import annotations

import torch
from torch import Tensor

# FFHQ 5-point template at 512 px: left eye, right eye, nose, left mouth, right mouth (image-left first).
FFHQ_TEMPLATE_512 = torch.tensor(
    [[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=torch.float64,
)


def ffhq_template(crop_size: int = 512) -> Tensor:
    """The FFHQ 5-point template scaled to a square crop of `crop_size` pixels."""
    return FFHQ_TEMPLATE_512 * (crop_size / 512.0)


def estimate_similarity(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares 4-DoF similarity (rotation, uniform scale, translation) mapping src → dst.

    src, dst: [N, K, 2] (or [K, 2]) point sets. Returns [N, 2, 3] (or [2, 3]).
    Closed form (Umeyama 1991 without reflection): the exact least-squares optimum, so its residual
    is never larger than that of any other similarity, OpenCV's RANSAC/LMEDS estimates included.
    """
    squeeze = src.dim() == 2
    if squeeze:
        src, dst = src[None], dst[None]
    dtype = src.dtype
    src64, dst64 = src.double(), dst.double().expand_as(src)
    mu_s, mu_d = src64.mean(1, keepdim=True), dst64.mean(1, keepdim=True)
    s, d = src64 - mu_s, dst64 - mu_d
    # For a similarity x' = [[a, -b], [b, a]] x + t, least squares decouples into two dot products.
    denom = (s * s).sum((1, 2)).clamp_min(1e-12)
    a = (s * d).sum((1, 2)) / denom
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(1) / denom
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # [N, 2, 2]
    t = mu_d[:, 0] - (rot @ mu_s[:, 0, :, None])[..., 0]
    m = torch.cat([rot, t[..., None]], -1).to(dtype)
    return m[0] if squeeze else m


def invert_affine(m: Tensor) -> Tensor:
    """Inverse of [..., 2, 3] affine matrices."""
    lin, t = m[..., :2], m[..., 2:]
    inv = torch.linalg.inv(lin.double()).to(m.dtype)
    return torch.cat([inv, -inv @ t], -1)


def transform_points(m: Tensor, pts: Tensor) -> Tensor:
    """Apply [..., 2, 3] affines to [..., K, 2] points."""
    return pts @ m[..., :2].transpose(-1, -2) + m[..., 2].unsqueeze(-2)


def alignment_scale(m: Tensor) -> Tensor:
    """Crop pixels per source pixel of each similarity [N, 2, 3]."""
    return torch.sqrt(m[..., 0, 0] ** 2 + m[..., 1, 0] ** 2)


def homogeneous(m: Tensor) -> Tensor:
    """[..., 2, 3] affine → [..., 3, 3] homogeneous matrix."""
    bottom = torch.zeros(*m.shape[:-2], 1, 3, dtype=m.dtype, device=m.device)
    bottom[..., 0, 2] = 1
    return torch.cat([m, bottom], -2)


def align_matrices(landmarks: Tensor, crop_size: int = 512, template: Tensor | None = None) -> Tensor:
    """Similarity affines [F, 2, 3] (image → crop) fitting landmarks [F, 5, 2] to the template."""
    tpl = ffhq_template(crop_size) if template is None else template
    return estimate_similarity(landmarks.double(), tpl.to(landmarks.device)[None]).float()
