"""Region-weighted identity guidance masks: separate weights for eyes, brows, nose + mouth and skin.

LocDiff (Neubauer et al.) guides the DifFace prior per face region with separate weights; here the same idea
is a soft weighted mask for `IdentityGuidance(mask=...)`: the recognizer's gradient is multiplied by the region's
weight, so a region with weight 0 is never changed and the regions' relative weights set where identity is
pushed. Regions are soft ellipses on the FFHQ 5-point template (`ffhq_template(size)`, d = eye distance):

* eyes: centred on each eye point, radii 0.30·d × 0.17·d (eye, lids);
* brows: 0.30·d above each eye point, radii 0.36·d × 0.13·d;
* nose_mouth: the nose (from the eye line to the nostrils) and the mouth (lips, philtrum), as in `feature_mask`;
* skin: the face oval (centred between the eye line and the mouth, radii 0.95·d × 1.25·d) — forehead, cheeks, chin.

Each region is 1 inside (1 − feather) of its radii with a smoothstep edge to 0 at its rim; where regions
overlap the largest weighted value wins (so features are not diluted by a lower skin weight). The cost per
guided step is that of any mask (an elementwise product): no extra recognizer passes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..faces.geometry import ffhq_template
from ..utils import smoothstep

__all__ = ["REGIONS", "region_mask", "soft_ellipse"]

REGIONS = ("eyes", "brows", "nose_mouth", "skin")
FEATHER = 0.35


def soft_ellipse(x: Tensor, y: Tensor, cx: float, cy: float, rx: float, ry: float, feather: float) -> Tensor:
    """1 within (1 − feather) of the radii, a smoothstep down to 0 at the rim, exactly 0 outside."""
    r = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return smoothstep((1.0 - r) / max(float(feather), 1e-6))


def _regions(size: int) -> dict[str, list[tuple[float, float, float, float]]]:
    p = ffhq_template(size).to(torch.float64)
    le, re, nose, lm, rm = p
    d = float((re - le).norm())
    eye_y = float((le[1] + re[1]) / 2)
    mouth_c = (lm + rm) / 2
    half_mouth = float((rm - lm).norm()) / 2
    return {
        "eyes": [(float(e[0]), float(e[1]), 0.30 * d, 0.17 * d) for e in (le, re)],
        "brows": [(float(e[0]), float(e[1]) - 0.30 * d, 0.36 * d, 0.13 * d) for e in (le, re)],
        "nose_mouth": [(float(nose[0]), (eye_y + float(nose[1])) / 2 + 0.05 * d, 0.28 * d, 0.45 * d),
                       (float(mouth_c[0]), float(mouth_c[1]), half_mouth + 0.2 * d, 0.36 * d)],
        "skin": [(float((le[0] + re[0]) / 2), (eye_y + float(mouth_c[1])) / 2, 0.95 * d, 1.25 * d)],
    }


def region_mask(size: int, eyes: float = 1.0, brows: float = 1.0, nose_mouth: float = 1.0, skin: float = 0.0,
                device: torch.device | str = "cpu", feather: float = FEATHER) -> Tensor:
    """Weighted soft mask [size, size] float32 in [0, 1] (module docstring); weights in [0, 1]."""
    weights = {"eyes": eyes, "brows": brows, "nose_mouth": nose_mouth, "skin": skin}
    for name, w in weights.items():
        if not (0.0 <= float(w) <= 1.0):
            raise ValueError(f"region weight {name} must be in [0, 1], got {w!r}")
    s = int(size)
    if s < 1:
        raise ValueError(f"mask size must be positive, got {size}")
    c = torch.arange(s, dtype=torch.float64)
    y, x = torch.meshgrid(c, c, indexing="ij")
    m = torch.zeros(s, s, dtype=torch.float64)
    for name, ellipses in _regions(s).items():
        if float(weights[name]) == 0.0:
            continue
        for cx, cy, rx, ry in ellipses:
            m = torch.maximum(m, float(weights[name]) * soft_ellipse(x, y, cx, cy, rx, ry, feather))
    return m.to(device=device, dtype=torch.float32)
