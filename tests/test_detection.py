"""YuNet detection on real photos, face selection, and the whole-image pipeline's input handling."""
import pytest
import torch

from bfr_core import CheckpointError, DetectOptions, detect_faces, load_detector, restore_images
from bfr_core.faces.detection import parse_indices, select_faces
from bfr_core.faces.types import FaceDetections
from bfr_core.faces.detection.yunet import YuNetDetector
from conftest import load_rgb, shared_path


def test_yunet_finds_the_solvay_faces(yunet, solvay_path):
    img = load_rgb(solvay_path)
    dets = yunet.detect(img, 0.6)[0]
    assert len(dets) >= 27
    # Landmark order: image-left eye first, mouth below the eyes, all inside their boxes.
    lm = dets.landmarks
    assert (lm[:, 0, 0] < lm[:, 1, 0]).all()
    assert (lm[:, 3, 1] > lm[:, 0, 1]).all() and (lm[:, 3, 0] < lm[:, 4, 0]).all()
    inside = (lm[..., 0] >= dets.boxes[:, None, 0] - 2) & (lm[..., 0] <= dets.boxes[:, None, 2] + 2)
    assert inside.all()
    assert (dets.scores[:-1] >= dets.scores[1:]).all()


def test_top_k_limits_candidates_before_nms(yunet_path, solvay_path):
    img = load_rgb(solvay_path)
    few = YuNetDetector(yunet_path, top_k=100).detect(img, 0.6)[0]
    many = YuNetDetector(yunet_path).detect(img, 0.6)[0]
    assert len(few) < len(many)


def _dets(boxes, scores):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    lm = centre[:, None, :].expand(-1, 5, -1).clone()
    return FaceDetections(boxes, lm, torch.tensor(scores, dtype=torch.float32))


def test_select_faces_modes():
    d = _dets([[0, 0, 10, 10], [50, 40, 90, 80], [100, 0, 120, 20], [45, 45, 55, 55]], [0.9, 0.8, 0.95, 0.4])
    hw = (100, 100)
    assert len(select_faces(d, hw, score_threshold=0.5)) == 3
    assert len(select_faces(d, hw, min_size=15)) == 2
    by_area = select_faces(d, hw)
    assert by_area.boxes[0].tolist() == [50, 40, 90, 80]
    ltr = select_faces(d, hw, sort_by="left_to_right")
    assert ltr.boxes[:, 0].tolist() == [0, 45, 50, 100]
    assert select_faces(d, hw, sort_by="score").scores.tolist() == pytest.approx([0.95, 0.9, 0.8, 0.4])
    assert select_faces(d, hw, select="largest").boxes.tolist() == [[50, 40, 90, 80]]
    assert select_faces(d, hw, select="center").boxes.tolist() == [[45, 45, 55, 55]]
    picked = select_faces(d, hw, sort_by="left_to_right", select="indices", indices="0, -1, 7")
    assert picked.boxes[:, 0].tolist() == [0, 100]
    assert len(select_faces(d, hw, select="indices", indices="1,1,-3")) == 1  # the same face once
    assert len(select_faces(d, hw, max_faces=2)) == 2
    assert len(select_faces(d, hw, score_threshold=0.99)) == 0
    with pytest.raises(ValueError, match="integers"):
        parse_indices("0,a")


def test_batches_with_different_face_counts(yunet):
    photo = load_rgb(shared_path("images/whole/gfpgan_10045.png"))
    blank = torch.full_like(photo, 0.5)
    res = restore_images(torch.cat([photo, blank, photo]), yunet)
    assert res.faces.counts()[1] == 0 and res.faces.counts()[0] == res.faces.counts()[2] > 0
    assert torch.equal(res.images[1], blank[0])
    assert res.crops.shape[0] == len(res.faces)


def test_no_faces_returns_image_unchanged(yunet, caplog):
    img = torch.rand(1, 3, 200, 300)
    with caplog.at_level("INFO", logger="bfr_core"):
        res = restore_images(img, yunet)
    assert torch.equal(res.images, img) and len(res.faces) == 0 and not res.coverage.any()
    assert "no faces" in caplog.text


def test_tiny_faces_below_min_size_are_skipped(yunet, solvay_path):
    img = load_rgb(solvay_path)
    dets = detect_faces(yunet, img, DetectOptions(min_size=1000))[0]
    assert len(dets) == 0


@pytest.mark.parametrize("channels", [1, 4])
def test_grayscale_and_rgba_images(yunet, channels):
    rgb = load_rgb(shared_path("images/whole/gfpgan_Blake_Lively.jpg"))
    if channels == 1:
        img = rgb.mean(1, keepdim=True)
    else:
        img = torch.cat([rgb, torch.linspace(0, 1, rgb.shape[-1]).expand(1, 1, rgb.shape[-2], -1)], 1)
    res = restore_images(img, yunet)
    assert len(res.faces) >= 1 and res.images.shape == img.shape
    if channels == 4:
        assert torch.equal(res.images[:, 3], img[:, 3])
    assert float(10 * torch.log10(1 / ((res.images - img) ** 2).mean())) > 40


def test_huge_image(yunet):
    face = load_rgb(shared_path("images/whole/gfpgan_Blake_Lively.jpg"))
    canvas = torch.full((1, 3, 4000, 6000), 0.3)
    canvas[..., 1000:1000 + face.shape[2], 2000:2000 + face.shape[3]] = face
    res = restore_images(canvas, yunet)
    assert len(res.faces) >= 1
    assert res.images.shape == canvas.shape
    assert torch.equal(res.images[..., :900, :], canvas[..., :900, :])


def test_nan_image_is_a_clear_error(yunet):
    img = torch.rand(1, 3, 64, 64)
    img[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        restore_images(img, yunet)


def test_missing_and_corrupt_detector_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.onnx"):
        load_detector(tmp_path / "nope.onnx")
    bad = tmp_path / "face_detection_yunet_2023mar.onnx"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="face_detection_yunet_2023mar.onnx") as err:
        load_detector(bad)
    assert "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4" in str(err.value)
    assert "facedetection" in str(err.value)
    truncated = tmp_path / "detection_mobilenet0.25_Final.pth"
    torch.save({"x": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="detection_mobilenet0.25_Final.pth") as err:
        load_detector(truncated)
    assert "models/facedetection/" in str(err.value) and "download detection_mobilenet0.25_Final.pth" in str(err.value)
    wrong = tmp_path / "detection_Resnet50_Final.pth"
    torch.save({"foo.weight": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match="detection_Resnet50_Final.pth"):
        load_detector(wrong)
