"""RetinaFace port vs facexlib's own implementation, on checkpoints in the official layout."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bfr_core.models.checkpoint import CheckpointError
from bfr_core.faces.detection.retinaface import RetinaFace, RetinaFaceDetector, load_retinaface, prior_boxes
from bfr_core.faces.types import FaceDetections

fx_retinaface = pytest.importorskip("facexlib.detection.retinaface")

# (facexlib network_name, our variant)
VARIANTS = [("resnet50", "resnet50"), ("mobile0.25", "mobilenet0.25")]
BGR_MEAN = torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)


def _facexlib_net(network_name: str) -> torch.nn.Module:
    with warnings.catch_warnings():  # torchvision's `pretrained=` deprecation inside facexlib
        warnings.simplefilter("ignore")
        return fx_retinaface.RetinaFace(network_name=network_name, half=False, device="cpu")


def _randomize(net: torch.nn.Module, seed: int) -> None:
    """Seeded random weights with O(1) activations: random BN statistics too, so the port must get
    every layer right; the ResNet stem is scaled for 0..255 input and residual branches damped."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in net.named_modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if name.endswith("bn3"):  # last BN of a ResNet bottleneck
                    mod.weight.mul_(0.2)
            elif isinstance(mod, torch.nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
        if hasattr(net.body, "conv1"):
            net.body.conv1.weight.div_(64.0)


def _save_official(net: torch.nn.Module, path: Path) -> Path:
    """The released files' layout: a flat state dict with DataParallel's `module.` prefix."""
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    return path


def _bgr_image(seed: int, h: int = 150, w: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _to_rgb_tensor(bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0


def _threshold(det: RetinaFaceDetector, img: torch.Tensor, top: float = 0.05) -> tuple[float, int]:
    """A threshold in a clear gap near the top `top` fraction of the anchors' scores (random weights
    give arbitrary score levels), and how many anchors pass it."""
    scores = det.forward_raw(img)[1][0, :, 1].sort(descending=True).values
    k = int(top * scores.numel())
    while scores[k] - scores[k + 1] < 1e-4:
        k += 1
    return float(scores[k] + scores[k + 1]) / 2, k + 1


@pytest.fixture(scope="module", params=VARIANTS, ids=[v for _, v in VARIANTS])
def pair(request, tmp_path_factory):
    """(facexlib net, our detector loaded from a file) sharing the same random weights."""
    fx_name, variant = request.param
    net = _facexlib_net(fx_name)
    _randomize(net, seed=1234)
    path = _save_official(net, tmp_path_factory.mktemp("ckpt") / f"retinaface_{variant}.pth")
    det = load_retinaface(path)
    assert det.variant == variant
    return net, det


def test_raw_outputs_match_facexlib(pair):
    net, det = pair
    bgr = _bgr_image(0)
    x = torch.from_numpy(bgr.astype(np.float32)).permute(2, 0, 1)[None] - BGR_MEAN  # facexlib's preprocessing
    with torch.no_grad():
        ref = net(x)
    ours = det.forward_raw(_to_rgb_tensor(bgr))
    for name, a, b in zip(("loc", "conf", "landmarks"), ref, ours):
        assert a.shape == b.shape, name
        assert a.abs().max() > 0.1, f"{name}: degenerate random outputs"
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4, msg=name)


def test_detections_match_facexlib(pair):
    net, det = pair
    bgr = _bgr_image(1)
    img = _to_rgb_tensor(bgr)
    thr, k = _threshold(det, img)
    with torch.no_grad():
        ref = net.detect_faces(bgr, conf_threshold=thr, nms_threshold=0.4)  # [N, 4 box + score + 10 points]
    (ours,) = det.detect(img, score_threshold=thr, nms_threshold=0.4)
    assert isinstance(ours, FaceDetections)
    assert ours.boxes.dtype == torch.float32 and ours.boxes.device.type == "cpu"
    assert 0 < len(ours) < k, "NMS should keep some but not all candidates"
    assert len(ours) == ref.shape[0]

    ref_t = torch.from_numpy(ref).float()
    ref_t = ref_t[ref_t[:, 4].argsort(descending=True)]
    assert torch.all(ours.scores[:-1] >= ours.scores[1:])
    torch.testing.assert_close(ours.scores, ref_t[:, 4], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.boxes, ref_t[:, :4], atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(ours.landmarks.reshape(-1, 10), ref_t[:, 5:], atol=1e-3, rtol=1e-6)


def test_batch_equals_single(pair):
    _, det = pair
    imgs = torch.cat([_to_rgb_tensor(_bgr_image(2)), _to_rgb_tensor(_bgr_image(3))])
    thr, _ = _threshold(det, imgs[:1], top=0.1)
    batched = det.detect(imgs, score_threshold=thr)
    assert len(batched) == 2
    for i in range(2):
        (single,) = det.detect(imgs[i : i + 1], score_threshold=thr)
        assert len(single) == len(batched[i]) > 0
        torch.testing.assert_close(batched[i].boxes, single.boxes, atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(batched[i].landmarks, single.landmarks, atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(batched[i].scores, single.scores, atol=1e-5, rtol=0)


def test_max_size_scales_back(pair):
    _, det = pair
    img = _to_rgb_tensor(_bgr_image(4, 200, 300))
    small = F.interpolate(img, size=(100, 150), mode="bilinear", align_corners=False, antialias=True)
    thr, _ = _threshold(det, small)
    (down,) = det.detect(img, score_threshold=thr, max_size=150)
    (ref,) = det.detect(small, score_threshold=thr)
    assert len(down) == len(ref) > 0
    torch.testing.assert_close(down.boxes, ref.boxes * 2, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(down.landmarks, ref.landmarks * 2, atol=1e-3, rtol=1e-5)
    # no resize when the image is already small enough
    (same,) = det.detect(img, score_threshold=thr, max_size=300)
    (full,) = det.detect(img, score_threshold=thr)
    torch.testing.assert_close(same.boxes, full.boxes)


def test_bf16_weights_return_float32(pair):
    net, _ = pair
    det = RetinaFaceDetector.from_state_dict(net.state_dict()).to(dtype=torch.bfloat16)
    (res,) = det.detect(_to_rgb_tensor(_bgr_image(5, 64, 96)), score_threshold=0.5)
    assert len(res) > 0
    for t in (res.boxes, res.landmarks, res.scores):
        assert t.dtype == torch.float32 and t.device.type == "cpu" and torch.isfinite(t).all()


def test_results_usable_outside_inference_mode(pair):
    _, det = pair
    (res,) = det.detect(_to_rgb_tensor(_bgr_image(6, 64, 64)), score_threshold=0.5)
    w = torch.ones(1, requires_grad=True)
    (res.landmarks * w).sum().backward()  # would raise on inference tensors
    assert w.grad is not None


@pytest.mark.parametrize("fx_name,variant", VARIANTS)
def test_key_set_equals_facexlib(fx_name, variant):
    ours = RetinaFace(variant).state_dict()
    theirs = _facexlib_net(fx_name).state_dict()
    assert set(ours) == set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)


@pytest.mark.parametrize("h,w", [(150, 200), (97, 61)])
def test_priors_match_facexlib(h, w):
    from facexlib.detection.retinaface import generate_config
    from facexlib.detection.retinaface_utils import PriorBox

    ref = PriorBox(generate_config("resnet50"), image_size=(h, w)).forward()
    ours = prior_boxes(h, w) / torch.tensor([w, h, w, h], dtype=torch.float32)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_missing_batchnorm_counters_are_accepted():
    sd = {k: v for k, v in RetinaFace("mobilenet0.25").state_dict().items() if "num_batches_tracked" not in k}
    assert RetinaFaceDetector.from_state_dict(sd).variant == "mobilenet0.25"


def test_wrong_kind_names_the_file(tmp_path):
    path = tmp_path / "not_a_detector.pth"
    torch.save({"module.encoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="not_a_detector.pth"):
        load_retinaface(path)


def test_incomplete_retinaface_names_the_file(tmp_path):
    sd = RetinaFace("mobilenet0.25").state_dict()
    del sd["LandmarkHead.2.conv1x1.bias"]
    path = tmp_path / "partial_retinaface.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="partial_retinaface.pth.*missing"):
        load_retinaface(path)


def test_truncated_file(tmp_path):
    full = tmp_path / "full.pth"
    torch.save(RetinaFace("mobilenet0.25").state_dict(), full)
    data = full.read_bytes()
    path = tmp_path / "truncated_retinaface.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated_retinaface.pth"):
        load_retinaface(path)


def test_rejects_bad_shape():
    det = RetinaFaceDetector(RetinaFace("mobilenet0.25"))
    with pytest.raises(ValueError):
        det.detect(torch.rand(3, 32, 32))
