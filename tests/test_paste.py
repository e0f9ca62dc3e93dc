"""Paste-back: round trip, locality, overlap blending, colour matching, resized crops."""
import pytest
import torch

from bfr_core.faces.geometry import ffhq_template
from bfr_core.faces.types import FaceDetections
from bfr_core.faces.align import align_faces
from bfr_core.faces.masks import template_mask
from bfr_core.faces.paste import match_colors, paste_faces
from conftest import load_rgb, shared_path

PHOTOS = ["images/group/Solvay_conference_1927.png", "images/whole/gfpgan_00.jpg",
          "images/whole/gfpgan_10045.png", "images/whole/gfpgan_Blake_Lively.jpg"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.mark.parametrize("rel", PHOTOS)
@pytest.mark.parametrize("shape", ["ellipse", "square"])
def test_round_trip_of_unchanged_crops_is_lossless_enough(rel, shape, yunet):
    img = load_rgb(shared_path(rel))
    dets = yunet.detect(img, 0.6)
    assert len(dets[0]) >= 1
    crops, faces = align_faces(img, dets)
    out, cov = paste_faces(img, crops, faces, template_mask(512, shape).expand(len(faces), -1, -1))
    print(f"round trip {rel} {shape}: {psnr(out, img):.1f} dB")  # the README's figure (pytest -s -k round_trip)
    assert psnr(out, img) >= 40.0
    assert cov.max() > 0.99


def _faces_at(img, centres, size=60.0):
    """Synthetic detections: template-shaped landmarks for faces centred at `centres`."""
    tpl = ffhq_template(512).float()
    pts = [(tpl - 256) * (size / 256) + torch.tensor(c) for c in centres]
    lm = torch.stack(pts)
    boxes = torch.cat([lm.min(1).values - size / 2, lm.max(1).values + size / 2], 1)
    return [FaceDetections(boxes, lm, torch.ones(len(centres)))]


def test_paste_only_touches_the_face_regions():
    img = torch.rand(1, 3, 300, 400)
    crops, faces = align_faces(img, _faces_at(img, [(100.0, 100.0), (300.0, 200.0)]))
    out, cov = paste_faces(img, torch.zeros_like(crops), faces)
    changed = (out != img).any(1)[0]
    assert changed.any()
    # Nothing changes where the coverage is zero, and coverage is local (well under the canvas).
    assert not changed[cov[0] == 0].any()
    assert float((cov[0] > 0).float().mean()) < 0.3


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_nan_crops_are_an_error_not_a_blackened_photo(backend):
    img = torch.rand(1, 3, 300, 400)
    crops, faces = align_faces(img, _faces_at(img, [(100.0, 100.0), (300.0, 200.0)]))
    crops[1, :, 250:260, 250:260] = float("nan")  # inside face 1's oval
    with pytest.raises(ValueError, match=r"crop\(s\) \[1\]"):
        paste_faces(img, crops, faces, backend=backend)
    crops[1, :, 250:260, 250:260] = 0.5
    # Corners of the crop: outside the oval (mask 0) but inside its bounding box, or outside both:
    # never shown, so pasting works and changes nothing there.
    crops[1, :, :4, :4] = float("inf")
    crops[1, :, 42:52, 66:76] = float("nan")  # the top-left corner of the oval's bounding box
    crops[0, :, :, :30] = float("nan")  # (NaN nearer the oval reaches visible pixels through interpolation)
    assert float(template_mask(512, "ellipse")[42:52, 66:76].max()) == 0.0
    out, _ = paste_faces(img, crops, faces, backend=backend)
    assert bool(torch.isfinite(out).all())


def test_overlapping_faces_blend_independently_of_order():
    img = torch.rand(1, 3, 200, 200)
    crops, faces = align_faces(img, _faces_at(img, [(90.0, 100.0), (110.0, 100.0)]))
    fills = torch.stack([torch.full_like(crops[0], 0.2), torch.full_like(crops[0], 0.8)])
    out_ab, cov_ab = paste_faces(img, fills, faces)
    out_ba, cov_ba = paste_faces(img, fills.flip(0), faces.subset([1, 0]))
    torch.testing.assert_close(out_ab, out_ba, atol=1e-6, rtol=0)
    torch.testing.assert_close(cov_ab, cov_ba, atol=1e-6, rtol=0)
    # Where both masks are full the result is the mean of the two faces.
    assert abs(float(out_ab[0, :, 100, 100].mean()) - 0.5) < 1e-3


def test_resized_crops_paste_to_the_same_place(yunet):
    img = load_rgb(shared_path("images/whole/gfpgan_Blake_Lively.jpg"))
    crops, faces = align_faces(img, yunet.detect(img, 0.6))
    big = torch.nn.functional.interpolate(crops, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    out_small, _ = paste_faces(img, crops, faces)
    out_big, _ = paste_faces(img, big, faces)
    assert psnr(out_small, out_big) > 38


@pytest.mark.parametrize("mode", ["mean_std", "lowpass"])
def test_colour_matching_undoes_a_tone_shift(mode):
    img = load_rgb(shared_path("images/aligned512/gfpgan_Adele_crop.png"))
    shifted = (img * torch.tensor([0.8, 1.0, 1.1]).view(1, 3, 1, 1) + 0.05).clamp(0, 1)
    mask = template_mask(512)[None]
    fixed = match_colors(shifted, img, mask, mode)
    assert psnr(fixed, img) > psnr(shifted, img) + 6


def test_no_faces_and_bad_counts():
    img = torch.rand(2, 3, 64, 64)
    crops, faces = align_faces(img, [FaceDetections.empty(), FaceDetections.empty()])
    out, cov = paste_faces(img, crops, faces)
    assert torch.equal(out, img) and not cov.any()
    crops, faces = align_faces(img, _faces_at(img, [(32.0, 32.0)]) + [FaceDetections.empty()])
    with pytest.raises(ValueError, match="crops for 1 faces"):
        paste_faces(img, torch.cat([crops, crops]), faces)
    with pytest.raises(ValueError, match="aligned from 2 images"):
        paste_faces(img[:1], crops, faces)
    with pytest.raises(ValueError, match="aligned on 64x64 images"):  # e.g. the image was upscaled in between
        paste_faces(torch.rand(2, 3, 128, 128), crops, faces)


def test_opencv_and_torch_backends_paste_alike(yunet):
    img = load_rgb(shared_path("images/whole/gfpgan_10045.png"))
    crops, faces = align_faces(img, yunet.detect(img, 0.6))
    restored = (crops * 0.8 + 0.1).contiguous()
    out_cv, cov_cv = paste_faces(img, restored, faces, backend="opencv")
    out_th, cov_th = paste_faces(img, restored, faces, backend="torch")
    assert psnr(out_cv, out_th) > 40
    assert float((cov_cv - cov_th).abs().mean()) < 2e-3


def test_a_face_pastes_the_same_alone_or_in_a_batch():
    """The shared template mask must be warped the same way for one face as for many (it once went through a
    pyramid only when several faces shared it: a few 1e-2 differences along the paste edge)."""
    torch.manual_seed(0)
    imgs = torch.rand(2, 3, 128, 128)
    dets = _faces_at(imgs[:1], [(64.0, 70.0)], 40.0) + _faces_at(imgs[:1], [(60.0, 66.0)], 36.0)
    crops, faces = align_faces(imgs, dets)
    restored = torch.rand_like(crops)
    both, _ = paste_faces(imgs, restored, faces)
    crops1, faces1 = align_faces(imgs[1:], dets[1:])
    alone, _ = paste_faces(imgs[1:], restored[1:], faces1)
    assert torch.equal(both[1], alone[0])
