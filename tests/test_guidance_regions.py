"""Region-weighted identity guidance masks (bfr_core.identity.regions): geometry, weights, and that the guidance
correction follows the weights exactly (c = k · mask · c_unmasked per face)."""
from __future__ import annotations

import pytest
import torch

from bfr_core.faces.geometry import ffhq_template
from bfr_core.identity.guidance import IdentityGuidance, feature_mask
from bfr_core.identity.regions import region_mask
from test_guidance import TinyRecognizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_regions_sit_on_the_template_with_their_weights():
    s = 128
    p = ffhq_template(s).round().long()
    (lx, ly), (rx, ry), (nx, ny), (mx, my) = p[0], p[1], p[2], (p[3] + p[4]) // 2
    d = float((p[1] - p[0]).float().norm())
    m = region_mask(s, eyes=1.0, brows=0.5, nose_mouth=0.25, skin=0.1)
    assert m[ly, lx] == 1.0 and m[ry, rx] == 1.0  # eyes
    assert abs(float(m[ly - round(0.30 * d), lx]) - 0.5) < 1e-6  # brows
    assert abs(float(m[my, mx]) - 0.25) < 1e-6 and abs(float(m[ny - 3, nx]) - 0.25) < 1e-6  # nose + mouth
    cheek = m[(ly + my) // 2, lx]  # below the eye, above the mouth corner
    assert abs(float(cheek) - 0.1) < 1e-6  # skin
    assert m[0, 0] == 0 and m[-1, -1] == 0  # background never guided
    only_brows = region_mask(s, eyes=0, brows=1, nose_mouth=0, skin=0)
    assert only_brows[ly, lx] == 0 and only_brows[ly - round(0.30 * d), lx] == 1
    assert torch.count_nonzero(only_brows[ly:]) == 0  # nothing below the eye line
    with pytest.raises(ValueError, match="skin"):
        region_mask(s, skin=1.5)
    # without skin, the regions stay inside the default features mask's neighbourhood
    assert (region_mask(s)[feature_mask(s) == 0] < 0.5).all()


def test_correction_follows_the_region_weights(faces64):
    rec = TinyRecognizer()
    x0 = faces64[:2] * 2 - 1
    faces = torch.arange(2)
    m = region_mask(64, eyes=1.0, brows=0.3, nose_mouth=0.6, skin=0.1)
    c_m = IdentityGuidance(rec, strength=0.5, reference=faces64[3], mask=m)(x0, 300, x0, faces=faces)
    c_n = IdentityGuidance(rec, strength=0.5, reference=faces64[3], mask="none")(x0, 300, x0, faces=faces)
    ratio = c_m / (m * c_n).where((m * c_n).abs() > 1e-12, torch.ones_like(c_n))
    inside = ((m * c_n).abs() > 1e-12).expand_as(c_n)
    for i in range(2):
        k = ratio[i][inside[i]]
        assert torch.allclose(k, k.median().expand_as(k), rtol=1e-4)  # one scalar per face
    assert torch.count_nonzero(c_m[:, :, m == 0]) == 0
