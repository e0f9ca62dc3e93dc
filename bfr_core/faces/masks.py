"""Soft face masks in aligned-crop space (1 = restored face, 0 = keep the original)."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils import smoothstep

MASK_SHAPES = ("ellipse", "square")


def template_mask(crop_size: int, shape: str = "ellipse", feather: float = 0.1,
                  device: torch.device | str = "cpu") -> Tensor:
    """A feathered mask [S, S] built from the FFHQ landmark template (cached; do not modify in place).

    ellipse: the face oval (brows to chin, ear to ear) that the template's eyes and mouth imply.
    square: the whole crop minus a feathered border (what facexlib pastes).
    feather: width of the soft edge as a fraction of the crop size.
    """
    return _template_mask(int(crop_size), shape, float(feather), str(torch.device(device)))


@functools.lru_cache(maxsize=16)
def _template_mask(crop_size: int, shape: str, feather: float, device: str) -> Tensor:
    if shape not in MASK_SHAPES:
        raise ValueError(f"mask shape must be one of {MASK_SHAPES}, got {shape!r}")
    s = crop_size
    c = (torch.arange(s, device=device, dtype=torch.float32) + 0.5) / s  # pixel centres in [0, 1]
    y, x = torch.meshgrid(c, c, indexing="ij")
    fw = max(float(feather), 1e-3)
    if shape == "square":
        edge = torch.minimum(torch.minimum(x, 1 - x), torch.minimum(y, 1 - y))  # distance to the border
        return smoothstep(edge / fw)
    # Template (512 px): eye centre y≈240, mouth y≈371, eye distance ≈126. The oval reaches the
    # hairline above and the chin below and spans the cheeks; feathering grows outward from it.
    cx, cy, rx, ry = 256.5 / 512, 290.0 / 512, 165.0 / 512, 215.0 / 512
    r = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)  # 1 on the oval
    # Signed distance (approx., in crop units) outside the oval → feathered falloff.
    d = (r - 1) * min(rx, ry)
    return smoothstep(0.5 - d / fw)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [N, C, H, W] with reflect padding."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    k = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(k * k) / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def feather_mask(mask: Tensor, erode: float, sigma: float) -> Tensor:
    """Shrink a hard [N, 1, H, W] mask by `erode` px (min-filter) and soften it with a Gaussian."""
    if erode >= 1:
        k = int(erode) * 2 + 1
        mask = -F.max_pool2d(-mask, k, stride=1, padding=k // 2)
    mask = gaussian_blur(mask, sigma)
    return mask.clamp(0, 1)
