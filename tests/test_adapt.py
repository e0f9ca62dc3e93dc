"""`python -m bfr_core adapt`: photos or aligned crops → pseudo-targets → fine-tuned backbone in its file's layout;
resumable; two processes under `accelerate launch` (gloo, CPU) make the one-process pseudo-targets and DDP-train to
the one-process weights."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from analytic_prior import degrade
from bfr_core.cli import main
from bfr_core.restoration.backbones import load_restorer
from conftest import ROOT, shared_path

spandrel = pytest.importorskip("spandrel")
from test_finetune import swinir_file  # noqa: E402,F401  (fixture)
from test_sharding import _free_port  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path: Path, rgb01: torch.Tensor) -> Path:
    cv2.imwrite(str(path), (rgb01.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8))
    return path


@pytest.fixture
def crops(tmp_path, faces64) -> Path:
    """The 8 test faces at 64 px with one degradation, as aligned crop files."""
    folder = tmp_path / "crops"
    folder.mkdir()
    for i, face in enumerate(faces64):
        _write(folder / f"face{i}.png", degrade(face, seed=i, blur_sigma=1.0, down=2, noise=0.03, jpeg=50))
    return folder


def _adapt_args(inputs, out: Path, restorer: Path, *extra: str) -> list[str]:
    return ["adapt", *map(str, inputs), "-o", str(out), "--restorer", str(restorer),
            "--prior", str(shared_path("models/tiny_ddpm_lfw32")), "--t-start", "6", "--constrain-until", "3",
            "--lowpass", "8", "--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--lr-min", "1e-4",
            "--validate-every", "3", "--checkpoint-every", "1", "--eval-mode", *extra]


def test_adapt_aligned_crops_end_to_end_and_resume(tmp_path, crops, swinir_file, capsys):  # noqa: F811
    out = tmp_path / "adapted.pth"
    assert main(_adapt_args([crops], out, swinir_file, "--aligned")) == 0
    cap = capsys.readouterr()
    assert "8 pseudo-target(s)" in cap.err and "held-out PSNR" in cap.err and "step 3/3" in cap.err
    assert f"adapted backbone (3 steps, 8 faces; held-out PSNR to the targets" in cap.out
    work = tmp_path / "adapted.pth.work"
    assert sorted(p.name for p in (work / "targets").iterdir()) == [f"face{i}.png" for i in range(8)]
    saved, original = torch.load(out, weights_only=True), torch.load(swinir_file, weights_only=True)
    assert list(saved["state_dict"]) == list(original["state_dict"])  # DifFace's wrapper, prefix and keys
    assert any(not torch.equal(saved["state_dict"][k], v) for k, v in original["state_dict"].items())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # load_restorer and plain spandrel give the same adapted network
        torch.testing.assert_close(load_restorer(out)(x), spandrel.ModelLoader().load_from_file(out)(x))
    # rerun: targets reused, training finished → the same file again
    stamp = os.stat(work / "targets" / "face0.png").st_mtime_ns
    assert main(_adapt_args([crops], out, swinir_file, "--aligned")) == 0
    assert os.stat(work / "targets" / "face0.png").st_mtime_ns == stamp
    again = torch.load(out, weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], v) for k, v in saved["state_dict"].items())
    # more steps than the checkpoint was made for: refused, saying what differs
    assert main(_adapt_args([crops], out, swinir_file, "--aligned") + ["--steps", "5"]) == 2
    assert "steps: checkpoint 3, now 5" in capsys.readouterr().err


def test_adapt_photos_too_few_faces_and_faceless_photos(tmp_path, yunet_path, swinir_file, capsys):  # noqa: F811
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted(shared_path("images/aligned512").glob("*.png")):
        img = cv2.resize(cv2.imread(str(src)), (160, 160), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(photos / src.name), cv2.copyMakeBorder(img, 40, 40, 30, 30, cv2.BORDER_REFLECT))
    cv2.imwrite(str(photos / "wall.png"), np.full((120, 160, 3), 128, np.uint8))
    args = _adapt_args([photos], tmp_path / "a.pth", swinir_file, "--detector", str(yunet_path), "--crop-size", "64")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no face found in 1 photo(s), left out: " + str(photos / "wall.png") in err
    assert "fine-tuning needs at least 8 faces, got 4" in err
    for src in sorted(photos.glob("gfpgan_*.png")):  # mirrored copies: 8 faces
        cv2.imwrite(str(photos / f"flip_{src.name}"), cv2.imread(str(src))[:, ::-1])
    assert main(args) == 0
    crops = sorted(p.name for p in (tmp_path / "a.pth.work" / "crops").iterdir())
    assert len(crops) == 8 and all(cv2.imread(str(tmp_path / "a.pth.work" / "crops" / c)).shape == (64, 64, 3)
                                   for c in crops)
    assert (tmp_path / "a.pth").is_file()
    assert main(_adapt_args([photos], tmp_path, swinir_file)) == 2  # -o a folder
    assert "must name the adapted backbone's file" in capsys.readouterr().err


def test_accelerate_launch_two_processes_match_one(tmp_path, crops, swinir_file):  # noqa: F811
    """`accelerate launch --multi_gpu --num_processes 2 -m bfr_core adapt ...` on CPU (gloo): each process makes
    its share of the pseudo-targets (byte-identical to one process's), then DDP gives the one-process weights."""
    pytest.importorskip("accelerate")
    one = tmp_path / "one.pth"
    assert main(_adapt_args([crops], one, swinir_file, "--aligned")) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_CONFIG_FILE"):
        env.pop(var, None)
    two = tmp_path / "two.pth"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "bfr_core",
           *_adapt_args([crops], two, swinir_file, "--aligned")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("adapted backbone") == 1  # saved by the main process only
    targets = [tmp_path / f"{n}.pth.work" / "targets" for n in ("one", "two")]
    assert {p.name: p.read_bytes() for p in targets[0].iterdir()} == \
        {p.name: p.read_bytes() for p in targets[1].iterdir()}
    a = torch.load(one, weights_only=True)["state_dict"]
    b = torch.load(two, weights_only=True)["state_dict"]
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=2e-5)
