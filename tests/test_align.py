"""Alignment geometry against OpenCV and analytic references."""
import cv2
import numpy as np
import pytest
import torch

from bfr_core.faces.geometry import align_matrices, estimate_similarity, ffhq_template, invert_affine, transform_points

from bfr_core.faces.warp import warp_affine, warp_faces


def _residual(m: np.ndarray, src: np.ndarray, dst: np.ndarray) -> float:
    return float(np.sqrt((((src @ m[:, :2].T + m[:, 2]) - dst) ** 2).sum(1).mean()))


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_exact_similarity_recovered_like_opencv():
    rng = np.random.default_rng(0)
    truth = _similarity(0.3, 2.5, 40.0, -12.0)
    src = rng.uniform(0, 200, (5, 2))
    dst = src @ truth[:, :2].T + truth[:, 2]
    ours = estimate_similarity(torch.tensor(src), torch.tensor(dst)).numpy()
    cv, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32))
    np.testing.assert_allclose(ours, truth, atol=1e-9)
    np.testing.assert_allclose(ours, cv, atol=1e-3)


@pytest.mark.parametrize("method", [cv2.RANSAC, cv2.LMEDS])
def test_least_squares_residual_never_worse_than_opencv(method):
    rng = np.random.default_rng(1)
    tpl = ffhq_template(512).numpy()
    worse = 0
    for _ in range(50):
        truth = _similarity(rng.uniform(-0.6, 0.6), rng.uniform(0.05, 3), *rng.uniform(-300, 300, 2))
        src = (tpl - truth[:, 2]) @ np.linalg.inv(truth[:, :2]).T + rng.normal(0, 2.0, (5, 2))
        ours = estimate_similarity(torch.tensor(src), torch.tensor(tpl)).numpy()
        cv, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), tpl.astype(np.float32), method=method)
        worse += _residual(ours, src, tpl) > _residual(cv, src, tpl) + 1e-6
    assert worse == 0


def test_batched_similarity_matches_single():
    rng = np.random.default_rng(2)
    src = torch.tensor(rng.uniform(0, 300, (7, 5, 2)))
    batched = align_matrices(src.float(), 256)
    for i in range(7):
        single = estimate_similarity(src[i], ffhq_template(256))
        torch.testing.assert_close(batched[i], single.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("border,cv_border", [("reflect", cv2.BORDER_REFLECT), ("replicate", cv2.BORDER_REPLICATE),
                                              ("constant", cv2.BORDER_CONSTANT)])
def test_warp_matches_cv2_warpaffine(border, cv_border):
    rng = np.random.default_rng(3)
    img = rng.uniform(0, 1, (120, 160, 3)).astype(np.float32)
    m = _similarity(0.4, 1.3, 30.0, -20.0).astype(np.float32)
    ref = cv2.warpAffine(img, m, (128, 96), flags=cv2.INTER_LINEAR, borderMode=cv_border)
    out = warp_affine(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(m)[None], (96, 128), border)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), ref, atol=2e-3)


def test_warp_is_differentiable_and_invertible():
    m = torch.tensor(_similarity(-0.2, 0.7, 5.0, 9.0), dtype=torch.float32)[None]
    pts = torch.rand(1, 5, 2) * 100
    back = transform_points(invert_affine(m), transform_points(m, pts))
    torch.testing.assert_close(back, pts, atol=1e-4, rtol=0)
    img = torch.rand(1, 3, 40, 40, requires_grad=True)
    warp_affine(img, m, (32, 32)).sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_warp_faces_batches_over_images_and_faces():
    imgs = torch.rand(2, 3, 64, 80)
    ms = torch.tensor(np.stack([_similarity(0.1, 2.0, -10, -5), _similarity(-0.3, 1.5, 3, 4), _similarity(0.0, 3.0, -50, -60)]),
                      dtype=torch.float32)
    index = torch.tensor([0, 1, 1])
    out = warp_faces(imgs, index, ms, 48, mode="bilinear")
    for i in range(3):
        single = warp_affine(imgs[index[i]][None], ms[i][None], (48, 48)).clamp(0, 1)
        torch.testing.assert_close(out[i], single[0], atol=1e-5, rtol=0)


def test_strong_minification_does_not_alias():
    # A 1-px checkerboard seen 8x smaller must become flat grey, not a moiré pattern.
    yy, xx = torch.meshgrid(torch.arange(1024), torch.arange(1024), indexing="ij")
    board = ((yy + xx) % 2).float().expand(1, 3, -1, -1).contiguous()
    m = torch.tensor([[0.125, 0.0, 0.0], [0.0, 0.125, 0.0]])[None]
    crop = warp_faces(board, torch.tensor([0]), m, 96)
    assert abs(float(crop.mean()) - 0.5) < 0.02
    assert float(crop[..., 4:-4, 4:-4].std()) < 0.02


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_opencv_and_torch_backends_cut_the_same_crops(mode):
    # A smooth image (sums of low-frequency waves), faces at scales from 0.3x to 4x the crop.
    yy, xx = torch.meshgrid(torch.arange(600.0), torch.arange(800.0), indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(xx / 23 + c) * torch.cos(yy / 31 - c) for c in (0.0, 1.0, 2.0)])[None]
    ms = torch.tensor(np.stack([_similarity(0.2, 4.0, -900, -700), _similarity(-0.1, 1.0, -100, -50),
                                _similarity(0.0, 0.3, -10, -20), _similarity(0.5, 2.0, 100, -600)]), dtype=torch.float32)
    index = torch.zeros(4, dtype=torch.long)
    cv = warp_faces(img, index, ms, 128, mode=mode, backend="opencv")
    th = warp_faces(img, index, ms, 128, mode=mode, backend="torch")
    assert float((cv - th).abs().mean()) < 2e-3
    assert float((cv - th)[..., 8:-8, 8:-8].abs().max()) < 3e-2


@pytest.mark.parametrize("mode", ["auto", "bilinear", "bicubic"])
def test_crops_are_clamped_to_0_1_by_both_backends(mode):
    """Out-of-range input (e.g. from an upstream node) gives crops in [0, 1] on both paths."""
    img = torch.rand(1, 3, 200, 200, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.3
    ms = torch.tensor(np.stack([_similarity(0.1, 4.0, -200, -150), _similarity(0.0, 0.5, 10, 0)]), dtype=torch.float32)
    index = torch.zeros(2, dtype=torch.long)
    cv = warp_faces(img, index, ms, 64, mode=mode, backend="opencv")
    th = warp_faces(img, index, ms, 64, mode=mode, backend="torch")
    for crops in (cv, th):
        assert float(crops.min()) >= 0.0 and float(crops.max()) <= 1.0
        assert float((crops == 0).float().mean()) > 0.01 and float((crops == 1).float().mean()) > 0.01


def test_faces_far_outside_or_off_the_image():
    """OpenCV's cubic reflect border breaks beyond one image length, and it cannot warp an empty region:
    such faces must come out as the torch path cuts them, without crashing."""
    yy, xx = torch.meshgrid(torch.arange(150.0), torch.arange(120.0), indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(xx / 9 + c) * torch.cos(yy / 13) for c in (0.0, 1.0, 2.0)])[None]
    ms = torch.tensor(np.stack([_similarity(0.0, 1.0, 400, 0),      # crop samples far left of the image
                                _similarity(0.0, 1.0, -1000, -1000),  # box entirely off the image
                                _similarity(0.1, 0.2, 10, 10)]), dtype=torch.float32)  # whole image is a "face"
    index = torch.zeros(3, dtype=torch.long)
    for border in ("reflect", "replicate", "constant"):
        cv = warp_faces(img, index, ms, 96, border=border, mode="bicubic", backend="opencv")
        th = warp_faces(img, index, ms, 96, border=border, mode="bicubic", backend="torch")
        assert torch.isfinite(cv).all()
        assert float((cv - th).abs().mean()) < 5e-3, border


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images_warp_like_float32(dtype):
    img = torch.rand(1, 3, 200, 200)
    ms = torch.tensor(np.stack([_similarity(0.3, 1.7, -20, -30), _similarity(0.1, 0.3, 5, 5)]), dtype=torch.float32)
    ref = warp_faces(img, torch.zeros(2, dtype=torch.long), ms, 64, backend="torch")
    half = warp_faces(img.to(dtype), torch.zeros(2, dtype=torch.long), ms, 64, backend="torch")
    assert half.dtype == dtype
    assert float((half.float() - ref).abs().mean()) < 1e-2
