"""The command line: detect JSON, restore outputs (bit depth, channels), model listing and download."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bfr_core.models import files as model_files
from bfr_core.cli import main
from conftest import ROOT, shared_path


def test_detect_json_through_the_real_cli(solvay_path, yunet_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "bfr_core", "detect", str(solvay_path), "--detector", "yunet",
                           "--models-dir", str(yunet_path.parent), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data) == 1 and data[0]["width"] == 1328 and data[0]["height"] == 568
    faces = data[0]["faces"]
    assert len(faces) >= 27
    for f in faces:
        assert len(f["box"]) == 4 and len(f["landmarks"]) == 5 and all(len(p) == 2 for p in f["landmarks"])
        assert 0 <= f["score"] <= 1


def _write(path: Path, arr: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), arr)
    return path


@pytest.mark.parametrize("kind", ["rgb8", "gray8", "rgba8", "rgb16"])
def test_restore_none_writes_same_size_and_depth(tmp_path, yunet_path, kind):
    src = cv2.imread(str(shared_path("images/whole/gfpgan_Blake_Lively.jpg")), cv2.IMREAD_COLOR)
    if kind == "gray8":
        src = cv2.cvtColor(src, cv2.COLOR_BGR2GRAY)
    elif kind == "rgba8":
        src = np.dstack([src, np.full(src.shape[:2], 200, np.uint8)])
    elif kind == "rgb16":
        src = src.astype(np.uint16) * 257 + np.uint16(3)
    inp = _write(tmp_path / f"in_{kind}.png", src)
    rc = main(["restore", str(inp), "-o", str(tmp_path / "out"), "--detector", str(yunet_path), "--align-only"])
    assert rc == 0
    out = cv2.imread(str(tmp_path / "out" / f"in_{kind}.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == src.shape and out.dtype == src.dtype
    scale = 65535.0 if kind == "rgb16" else 255.0
    mse = np.mean((out.astype(np.float64) / scale - src.astype(np.float64) / scale) ** 2)
    assert 10 * np.log10(1 / mse) > 40
    if kind == "rgba8":
        assert (out[..., 3] == 200).all()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    img = _write(tmp_path / "x.png", np.zeros((32, 32, 3), np.uint8))
    rc = main(["detect", str(img), "--models-dir", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "face_detection_yunet_2023mar.onnx" in err and "facedetection" in err and "download" in err


def test_models_lists_found_missing_and_corrupt(tmp_path, capsys, yunet_path):
    good = tmp_path / "good" / "facedetection"
    good.mkdir(parents=True)
    (good / yunet_path.name).write_bytes(yunet_path.read_bytes())
    bad = tmp_path / "bad" / "facedetection"
    bad.mkdir(parents=True)
    (bad / yunet_path.name).write_bytes(b"x" * yunet_path.stat().st_size)
    main(["models", "--models-dir", str(tmp_path / "good")])
    out = capsys.readouterr().out
    assert "found" in out.split("face_detection_yunet")[0].splitlines()[-1]
    assert "missing" in out.split("iddpm_ffhq512")[0].splitlines()[-1]
    main(["models", "--models-dir", str(tmp_path / "bad")])
    assert "corrupt" in capsys.readouterr().out.split("face_detection_yunet")[0].splitlines()[-1]


def test_download_verifies_checksum_and_is_atomic(tmp_path, monkeypatch, yunet_path):
    entry = model_files.REGISTRY["face_detection_yunet_2023mar.onnx"]
    # A local file:// URL stands in for the network: the same code path, no internet needed.
    monkeypatch.setitem(model_files.REGISTRY, entry.name, model_files.ModelFile(
        entry.name, entry.folder, entry.kind, yunet_path.as_uri(), entry.licence, entry.sha256, entry.size))
    path = model_files.download(entry.name, tmp_path)
    assert path == tmp_path / "facedetection" / entry.name
    assert model_files.sha256_of(path) == entry.sha256
    os.umask(old_umask := os.umask(0o022))
    assert path.stat().st_mode & 0o044 or old_umask & 0o044  # readable by ComfyUI running as another user
    monkeypatch.setitem(model_files.REGISTRY, entry.name, model_files.ModelFile(
        entry.name, entry.folder, entry.kind, yunet_path.as_uri(), entry.licence, "0" * 64, entry.size))
    with pytest.raises(ValueError, match="checksum mismatch"):
        model_files.download(entry.name, tmp_path / "other")
    assert not (tmp_path / "other" / "facedetection" / entry.name).exists()
    assert not list((tmp_path / "other" / "facedetection").glob("*.part"))


def test_unpinned_download_needs_explicit_consent(tmp_path):
    with pytest.raises(ValueError, match="--sha256"):
        model_files.download("detection_Resnet50_Final.pth", tmp_path)


def test_models_dir_from_environment(tmp_path, monkeypatch, yunet_path):
    (tmp_path / "facedetection").mkdir()
    (tmp_path / "facedetection" / yunet_path.name).write_bytes(yunet_path.read_bytes())
    monkeypatch.setenv(model_files.ENV_MODELS_DIR, str(tmp_path))
    assert model_files.find_model(yunet_path.name) == tmp_path / "facedetection" / yunet_path.name


def test_comfyui_models_folder_is_found(tmp_path):
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "bfr" / "bfr_core"
    pack.mkdir(parents=True)
    (tmp_path / "ComfyUI" / "models").mkdir()
    assert model_files.comfy_models_dir(pack / "model_files.py") == tmp_path / "ComfyUI" / "models"
    # A pack symlinked into custom_nodes (a common dev set-up) finds the models of the tree it is linked into.
    real = tmp_path / "src" / "bfr" / "bfr_core"
    real.mkdir(parents=True)
    (tmp_path / "ComfyUI" / "custom_nodes" / "linked").symlink_to(tmp_path / "src" / "bfr")
    linked = tmp_path / "ComfyUI" / "custom_nodes" / "linked" / "bfr_core" / "model_files.py"
    assert model_files.comfy_models_dir(linked) == tmp_path / "ComfyUI" / "models"
    assert model_files.comfy_models_dir(real / "model_files.py") is None


def test_restore_with_a_diffusion_prior(tmp_path, yunet_path, capsys):
    """The whole CLI path with the tiny trained diffusers prior from ../shared/data."""
    prior = shared_path("models/tiny_ddpm_lfw32")
    src = shared_path("images/whole/gfpgan_10045.png")
    rc = main(["restore", str(src), "-o", str(tmp_path), "--detector", str(yunet_path), "--prior", str(prior),
               "--strength", "0.2", "--steps", "3", "--seed", "1"])
    assert rc == 0
    out = cv2.imread(str(tmp_path / "gfpgan_10045.png"))
    ref = cv2.imread(str(src))
    assert out.shape == ref.shape
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() > 10  # the faces were re-generated ...
    assert (diff.max(axis=2) > 0).mean() < 0.5  # ... and only the faces
    assert "step 3/" in capsys.readouterr().err
    rc = main(["restore", str(src), "-o", str(tmp_path / "bad"), "--detector", str(yunet_path),
               "--prior", str(tmp_path / "nope.pth")])
    assert rc == 2 and "nope.pth" in capsys.readouterr().err


def test_similarity_and_guided_restore(tmp_path, yunet_path, capsys):
    from bfr_core.identity import IRESNET_LAYERS, IResNet

    torch.manual_seed(0)
    rec = tmp_path / "backbone.pth"
    torch.save(IResNet(IRESNET_LAYERS["iresnet18"]).state_dict(), rec)
    a = shared_path("images/aligned512/gfpgan_Adele_crop.png")
    assert main(["similarity", str(a), str(a), "--recognizer", str(rec), "--aligned"]) == 0
    assert float(capsys.readouterr().out.strip()) == pytest.approx(1.0, abs=1e-4)
    photo = shared_path("images/whole/gfpgan_Blake_Lively.jpg")
    assert main(["similarity", str(photo), str(a), "--recognizer", str(rec), "--detector", str(yunet_path)]) == 0
    assert -1 <= float(capsys.readouterr().out.strip()) < 0.9999
    blank = _write(tmp_path / "blank.png", np.full((64, 64, 3), 128, np.uint8))
    assert main(["similarity", str(blank), str(a), "--recognizer", str(rec), "--detector", str(yunet_path)]) == 2
    assert "no face found" in capsys.readouterr().err
    rc = main(["restore", str(photo), "-o", str(tmp_path / "out"), "--detector", str(yunet_path),
               "--prior", str(shared_path("models/tiny_ddpm_lfw32")), "--strength", "0.2", "--steps", "2",
               "--recognizer", str(rec), "--identity-strength", "2", "--reference", str(photo)])
    assert rc == 0 and (tmp_path / "out" / "gfpgan_Blake_Lively.png").exists()


def test_restore_never_overwrites_inputs_and_missing_images_are_errors(tmp_path, yunet_path, capsys):
    src = _write(tmp_path / "photo.png", cv2.imread(str(shared_path("images/whole/gfpgan_10045.png"))))
    before = src.read_bytes()
    assert main(["restore", str(src), "-o", str(tmp_path), "--detector", str(yunet_path), "--align-only"]) == 2
    assert "overwrite" in capsys.readouterr().err and src.read_bytes() == before
    assert main(["detect", str(tmp_path / "nope.jpg"), "--detector", str(yunet_path)]) == 2
    assert "nope.jpg" in capsys.readouterr().err


def test_one_unreadable_image_does_not_stop_the_batch(tmp_path, yunet_path, capsys):
    good = _write(tmp_path / "good.png", cv2.imread(str(shared_path("images/whole/gfpgan_10045.png"))))
    bad = tmp_path / "broken.png"
    bad.write_bytes(good.read_bytes()[:200])  # a truncated PNG
    out = tmp_path / "out"
    assert main(["restore", str(bad), str(good), "-o", str(out), "--detector", str(yunet_path), "--align-only"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 2" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]  # the good one written, no temp files left
    assert cv2.imread(str(out / "good.png")).shape == cv2.imread(str(good)).shape


def test_a_failing_write_stops_the_batch_and_leaves_no_partial_file(tmp_path, yunet_path, monkeypatch, capsys):
    """A full disk fails every image alike: stop at once instead of restoring the rest for nothing."""
    import bfr_core.io.images as image_io
    import bfr_core.restoration.pipeline as pipeline

    src = cv2.imread(str(shared_path("images/whole/gfpgan_10045.png")))
    inputs = [_write(tmp_path / f"p{i}.png", src) for i in range(2)]
    restored = []
    real_restore = pipeline.restore_images
    monkeypatch.setattr(pipeline, "restore_images", lambda *a, **k: restored.append(1) or real_restore(*a, **k))

    def full_disk(tmp, dest):  # the temp file is written; making it the result fails
        assert tmp.exists()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_io, "publish", full_disk)
    out = tmp_path / "out"
    assert main(["restore", *map(str, inputs), "-o", str(out), "--detector", str(yunet_path), "--align-only"]) == 2
    assert "No space left" in capsys.readouterr().err
    assert len(restored) == 1 and list(out.iterdir()) == []


def test_download_rejects_a_hash_that_contradicts_the_pinned_one(tmp_path):
    with pytest.raises(ValueError, match="differs"):
        model_files.download("face_detection_yunet_2023mar.onnx", tmp_path, expected_sha256="0" * 64)


def test_exif_orientation_is_applied(tmp_path):
    """A phone JPEG stored sideways with an EXIF 'rotate 90' tag is read upright."""
    from PIL import Image

    from bfr_core.io.images import read_image

    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(arr).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "phone.jpg")
    assert img.rgb.shape == (3, 60, 40)  # displayed upright: 40 wide, 60 high
    assert float(img.rgb[:, :10].mean()) > 0.9  # the band is now on top


def test_align_writes_the_crops_pseudo_targets_take(tmp_path, yunet_path, capsys):
    src = _write(tmp_path / "group.png", cv2.imread(str(shared_path("images/whole/gfpgan_10045.png"))))
    assert main(["align", str(src), "-o", str(tmp_path / "crops"), "--detector", str(yunet_path),
                 "--crop-size", "128", "--max-faces", "2"]) == 0
    crops = sorted((tmp_path / "crops").iterdir())
    assert [p.name for p in crops] == ["group_face0.png", "group_face1.png"]
    assert cv2.imread(str(crops[0])).shape == (128, 128, 3)
    # the crops are the library's aligned crops (8-bit PNG round trip)
    from bfr_core import DetectOptions, align_faces, detect_faces, load_detector
    from bfr_core.io.images import read_image

    img = read_image(src).rgb[None]
    ref, _ = align_faces(img, detect_faces(load_detector(yunet_path), img, DetectOptions(max_faces=2)), 128)
    assert (read_image(crops[1]).rgb - ref[1]).abs().max() <= 0.5 / 255 + 1e-6
