"""Bad input gets a clear error naming the input or option, or a documented correct result (issue: first ten
minutes and bad input). One test per class of input, each covering the reported case and its neighbours."""
from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch

from bfr_core import DetectOptions, FaceDetections, align_faces, detect_faces, paste_faces
from bfr_core.cli import main
from bfr_core.faces.detection.select import select_faces
from bfr_core.io.images import read_image
from conftest import shared_path

PHOTO = "images/whole/gfpgan_10045.png"


def _photo(tmp_path, name="photo.png"):
    path = tmp_path / name
    assert cv2.imwrite(str(path), cv2.imread(str(shared_path(PHOTO))))
    return path


def _cli_error(capsys, argv) -> str:
    """Run the CLI expecting an argument error: exit code 2 and the message."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--threshold", "-1"), ("--threshold", "2.0"), ("--max-faces", "-1"),
                                        ("--min-size", "-5"), ("--crop-size", "7"), ("--crop-size", "-5"),
                                        ("--strength", "1.5"), ("--steps", "0"), ("--batch-size", "0"),
                                        ("--seed", "-3"), ("--threshold", "nan"), ("--steps", "many")])
def test_out_of_range_options_are_named(tmp_path, capsys, yunet_path, flag, value):
    err = _cli_error(capsys, ["restore", str(_photo(tmp_path)), "-o", str(tmp_path / "out"), "--detector",
                              str(yunet_path), flag, value])
    assert flag in err and value in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_library_options_are_checked_with_their_names():
    with pytest.raises(ValueError, match="score threshold"):
        DetectOptions(score_threshold=-1)
    with pytest.raises(ValueError, match="min face size"):
        DetectOptions(min_size=-5)
    with pytest.raises(ValueError, match="max faces"):
        DetectOptions(max_faces=-1)
    with pytest.raises(ValueError, match="integers"):
        DetectOptions(select="indices", indices="0,x")
    with pytest.raises(ValueError, match="crop_size"):
        align_faces(torch.rand(1, 3, 32, 32), [FaceDetections.empty()], crop_size=0)
    with pytest.raises(ValueError, match="crop_size"):
        align_faces(torch.rand(1, 3, 32, 32), [FaceDetections.empty()], crop_size=7)


def test_out_of_range_indices_say_so(caplog):
    dets = FaceDetections(torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), torch.zeros(2, 5, 2), torch.ones(2))
    with caplog.at_level(logging.WARNING, logger="bfr_core"):
        kept = select_faces(dets, (64, 64), select="indices", indices="99,0")
    assert len(kept) == 1 and "99" in caplog.text and "2 face(s) found" in caplog.text


def test_found_but_none_kept_is_not_no_faces(yunet, caplog):
    from conftest import load_rgb

    img = load_rgb(shared_path(PHOTO))
    with caplog.at_level(logging.WARNING, logger="bfr_core"):
        dets = detect_faces(yunet, img, DetectOptions(select="indices", indices="5"))
    assert sum(len(d) for d in dets) == 0 and "found but none kept" in caplog.text


@pytest.mark.parametrize("bad,match", [
    (lambda x: (x * 255).to(torch.uint8), "uint8"),
    (lambda x: x.permute(0, 2, 3, 1), "channels-last"),
    (lambda x: x[0], r"\[B, C, H, W\]"),
    (lambda x: x[:0], "empty batch"),
    (lambda x: x.clone().fill_(float("nan")), "NaN"),
    (lambda x: x.double().numpy(), "torch tensor"),
])
def test_image_functions_refuse_what_they_would_misread(yunet, bad, match):
    img = torch.rand(1, 3, 48, 48)
    with pytest.raises(ValueError, match=match):
        detect_faces(yunet, bad(img))
    if match != "empty batch":  # an empty batch aligns/pastes to nothing, correctly
        with pytest.raises(ValueError, match=match):
            align_faces(bad(img), [FaceDetections.empty()])


def test_paste_refuses_uint8_and_wrong_mask_shapes():
    from test_paste import _faces_at

    img = torch.rand(1, 3, 96, 96)
    crops, faces = align_faces(img, _faces_at(img, [(48.0, 48.0)], 30.0), 64)
    with pytest.raises(ValueError, match="uint8"):
        paste_faces((img * 255).to(torch.uint8), crops, faces)
    with pytest.raises(ValueError, match="uint8"):
        paste_faces(img, (crops * 255).to(torch.uint8), faces)
    for masks in (torch.ones(64, 64), torch.ones(1, 32, 32), torch.ones(2, 64, 64), torch.ones(1, 1, 64, 64)):
        with pytest.raises(ValueError, match="one crop-space mask per face"):
            paste_faces(img, crops, faces, masks)


def test_multi_frame_files_are_refused_not_truncated(tmp_path, capsys, yunet_path):
    frame = cv2.imread(str(shared_path(PHOTO)))
    gif = tmp_path / "clip.gif"
    anim = cv2.Animation()
    anim.frames, anim.durations = [frame, frame[:, ::-1].copy()], [100, 100]
    assert cv2.imwriteanimation(str(gif), anim)
    tiff = tmp_path / "pages.tiff"
    assert cv2.imwritemulti(str(tiff), [frame, frame])
    for path in (gif, tiff):
        with pytest.raises(ValueError, match="2 frames"):
            read_image(path)
    assert main(["restore", str(gif), "-o", str(tmp_path / "out"), "--detector", str(yunet_path),
                 "--align-only"]) == 2
    assert "2 frames" in capsys.readouterr().err and not list((tmp_path / "out").iterdir())


def test_a_folder_input_means_its_images(tmp_path, capsys, yunet_path):
    folder = tmp_path / "album"
    folder.mkdir()
    _photo(folder, "a.png"), _photo(folder, "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    assert main(["restore", str(folder), "-o", str(tmp_path / "out"), "--detector", str(yunet_path),
                 "--align-only"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["detect", str(empty), "--detector", str(yunet_path)]) == 2
    assert "no image files" in capsys.readouterr().err


def test_empty_or_file_output_is_refused(tmp_path, capsys, yunet_path):
    photo = _photo(tmp_path)
    assert main(["restore", str(photo), "-o", "", "--detector", str(yunet_path), "--align-only"]) == 2
    assert "-o/--output is empty" in capsys.readouterr().err
    assert main(["restore", str(photo), "-o", str(photo), "--detector", str(yunet_path), "--align-only"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_detect_reports_the_readable_images_when_one_is_broken(tmp_path, capsys, yunet_path):
    good = _photo(tmp_path, "a.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:100])
    assert main(["detect", str(good), str(broken), "--detector", str(yunet_path), "--json"]) == 2
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert [d["image"] for d in data] == [str(good)] and data[0]["faces"]
    assert "broken.png" in out.err and "1 of 2" in out.err


def test_nothing_to_restore_with_is_an_error_not_a_silent_copy(tmp_path, capsys, yunet_path):
    photo = _photo(tmp_path)
    assert main(["restore", str(photo), "-o", str(tmp_path / "out"), "--detector", str(yunet_path)]) == 2
    err = capsys.readouterr().err
    assert "nothing to restore with" in err and "--prior" in err and "--align-only" in err
    assert not (tmp_path / "out" / "photo.png").exists()
    assert main(["restore", str(photo), "-o", str(tmp_path / "out"), "--detector", str(yunet_path),
                 "--align-only", "--restorer", "x.pth"]) == 2
    assert "--align-only restores nothing" in capsys.readouterr().err


def test_offline_download_names_file_url_and_destination(tmp_path, capsys, monkeypatch):
    import urllib.request

    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["download", "iddpm_ffhq512_ema500000.pth", "swinir_restoration512_L1.pth", "--models-dir",
                 str(tmp_path), "--allow-unpinned"]) == 2
    err = capsys.readouterr().err
    assert "swinir" not in err  # the first failure stops the list (offline, every file would fail alike)
    assert "iddpm_ffhq512_ema500000.pth" in err and "https://" in err
    assert str(tmp_path / "facerestore_models" / "iddpm_ffhq512_ema500000.pth") in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no partial or temp file anywhere


def test_models_lists_where_to_get_each_missing_file(tmp_path, capsys):
    assert main(["models", "--models-dir", str(tmp_path / "nowhere")]) == 0
    out = capsys.readouterr().out
    assert "does not exist" in out
    assert "python -m bfr_core download iddpm_ffhq512_ema500000.pth" in out and "zsyOAOA/DifFace" in out


def test_detect_node_refuses_an_empty_batch(comfy_pack, yunet_path):
    from conftest import run_node

    from bfr_core import load_detector

    node = comfy_pack.NODE_CLASS_MAPPINGS["BFRDetectFaces"]
    with pytest.raises(ValueError, match="empty batch"):
        run_node(node, torch.zeros(0, 32, 32, 3), load_detector(yunet_path), 0.6, 0, "all", "", "area", 0)


def test_a_model_of_another_kind_is_named_not_torch_internals(tmp_path, capsys, yunet_path):
    from bfr_core import CheckpointError, load_prior, load_restorer

    for load in (load_prior, load_restorer):
        with pytest.raises(CheckpointError, match="is an ONNX model") as exc:
            load(yunet_path)
        assert "weights_only" not in str(exc.value)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "run": __import__("argparse").Namespace(x=1)}, evil)  # an arbitrary pickled object
    with pytest.raises(CheckpointError) as exc:
        load_prior(evil)
    msg = str(exc.value)
    assert "evil.pth" in msg and "never allowed to run code" in msg and "Re-running" not in msg
    photo = _photo(tmp_path)
    assert main(["restore", str(photo), "-o", str(tmp_path / "out"), "--detector", str(yunet_path),
                 "--prior", str(yunet_path)]) == 2
    assert "is an ONNX model" in capsys.readouterr().err


def test_help_and_argument_errors_do_not_import_torch():
    """`--help` and option errors answer at once: the CLI imports torch (seconds on a small CPU) only for work."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys, bfr_core, bfr_core.cli as c; p = c.build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "bfr_core.FaceRestorer; assert 'torch' in sys.modules")  # the lazy exports still resolve
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
