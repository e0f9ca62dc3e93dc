"""Archive restoration across processes: `restore --shard I/N` (or RANK/WORLD_SIZE) splits the sorted inputs
deterministically, the union of the shards' results is byte-identical to one process, and `--skip-existing`
resumes a crashed run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from bfr_core.cli import main
from bfr_core.utils import devices
from bfr_core.utils.devices import check_device, process_device
from bfr_core.utils.sharding import Shard, parse_shard, shard_from_env
from conftest import ROOT, shared_path, require_test_extra


def test_shards_are_disjoint_cover_everything_and_ignore_input_order():
    items = [f"img_{i:02d}.png" for i in range(11)]
    for n in (1, 2, 3, 5, 12):
        parts = [Shard(i, n).take(items) for i in range(n)]
        assert sorted(x for p in parts for x in p) == sorted(items)
        assert sum(map(len, parts)) == len(items)
        assert [Shard(i, n).take(list(reversed(items))) for i in range(n)] == parts
    assert parse_shard("1/3") == Shard(1, 3) and str(Shard(1, 3)) == "1/3"
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    assert shard_from_env({}) == Shard(0, 1)
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2)
    with pytest.raises(ValueError):
        shard_from_env({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    """Five small photos with one face each (the aligned test faces on a border, and a smaller Blake Lively)."""
    folder = tmp_path / "in"
    folder.mkdir()
    out = []
    for src in sorted(shared_path("images/aligned512").glob("*.png")):
        img = cv2.resize(cv2.imread(str(src)), (160, 160), interpolation=cv2.INTER_AREA)
        img = cv2.copyMakeBorder(img, 40, 40, 30, 30, cv2.BORDER_REFLECT)
        out.append(folder / src.name)
        cv2.imwrite(str(out[-1]), img)
    blake = cv2.imread(str(shared_path("images/whole/gfpgan_Blake_Lively.jpg")))
    out.append(folder / "blake.png")
    cv2.imwrite(str(out[-1]), cv2.resize(blake, (350, 232), interpolation=cv2.INTER_AREA))
    return out


def _restore_args(inputs, out: Path, yunet_path: Path) -> list[str]:
    return ["restore", *map(str, inputs), "-o", str(out), "--detector", str(yunet_path),
            "--prior", str(shared_path("models/tiny_ddpm_lfw32")), "--strength", "0.3", "--steps", "2",
            "--crop-size", "128", "--seed", "3"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_two_processes_give_the_one_process_result(tmp_path, photos, yunet_path, capsys):
    assert main(_restore_args([photos[0].parent], tmp_path / "single", yunet_path)) == 0
    single = _files(tmp_path / "single")
    assert len(single) == len(photos)
    captured = capsys.readouterr()
    assert "restore: 5 of 5 image(s) restored" in captured.err
    lines = [line for line in captured.out.splitlines() if " face(s) -> " in line]
    assert len(lines) == len(photos) and not any(": 0 face(s)" in line for line in lines)  # faces in every photo
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    # Inputs given in another order to each process: the split depends on the sorted list only.
    procs = [subprocess.Popen([sys.executable, "-m", "bfr_core",
                               *_restore_args(photos[::1 - 2 * i], tmp_path / "sharded", yunet_path),
                               "--shard", f"{i}/2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert "shard 0/2: 3 of 3 image(s) restored" in results[0][1]
    assert "shard 1/2: 2 of 2 image(s) restored" in results[1][1]
    assert "images/s" in results[0][1] and "faces/s" in results[1][1]
    written = [{line.split(" -> ")[1] for line in out.splitlines() if " -> " in line} for out, _ in results]
    assert not written[0] & written[1] and len(written[0] | written[1]) == len(photos)
    assert _files(tmp_path / "sharded") == single  # byte-identical


def test_a_crashed_shard_resumes_where_it_stopped(tmp_path, photos, yunet_path, capsys, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("RANK", "0")  # as torchrun / accelerate launch set them
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(_restore_args(photos, out, yunet_path)) == 0
    first = _files(out)
    assert len(first) == 3 and "shard 0/2: 3 of 3" in capsys.readouterr().err
    victim = sorted(first)[1]
    (out / victim).unlink()  # as if the process had died before writing it
    stale = os.stat(out / sorted(first)[0]).st_mtime_ns
    assert main(_restore_args(photos, out, yunet_path)) == 0
    assert "shard 0/2: 1 of 3 image(s) restored (2 already done)" in capsys.readouterr().err
    assert _files(out) == first and os.stat(out / sorted(first)[0]).st_mtime_ns == stale
    assert main(_restore_args(photos, out, yunet_path) + ["--no-skip-existing"]) == 0
    assert "3 of 3 image(s) restored (0 already done)" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    assert main(_restore_args(photos, out, yunet_path) + ["--skip-existing"]) == 0  # one process, asked to resume
    assert "restore: 2 of 5 image(s) restored (3 already done)" in capsys.readouterr().err


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_shards_through_rank_and_world_size(tmp_path, photos, yunet_path, one_thread):
    """`accelerate launch --multi_gpu --num_processes 2 -m bfr_core restore ...` on a CPU-only machine, offline and
    without a config file: each process reads RANK / WORLD_SIZE, and the union of their outputs is byte-identical to
    one process with as many threads (torch.distributed.run gives each process OMP_NUM_THREADS=1, and CPU results
    may differ in the last bits between thread counts). `--multi_gpu` only selects accelerate's torch.distributed.run launcher (the restore runs on
    `--device`, cpu here); `--cpu --num_processes 2` would start ONE process (accelerate's CPU multi-process launch
    needs mpirun and a hostfile)."""
    require_test_extra("accelerate")  # the two-process proof runs in CI
    assert main(_restore_args([photos[0].parent], tmp_path / "single", yunet_path)) == 0
    single = _files(tmp_path / "single")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"),  # no user default_config.yaml
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # as torch.distributed.run sets it; one_thread above
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_CONFIG_FILE"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "bfr_core", *_restore_args([photos[0].parent], tmp_path / "sharded", yunet_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "shard 0/2: 3 of 3 image(s) restored" in proc.stderr, proc.stderr[-4000:]
    assert "shard 1/2: 2 of 2 image(s) restored" in proc.stderr, proc.stderr[-4000:]
    assert _files(tmp_path / "sharded") == single  # byte-identical


def test_cuda_under_a_launcher_means_the_process_own_gpu():
    launched = {"LOCAL_RANK": "1", "RANK": "3", "WORLD_SIZE": "4"}  # 2nd process of the 2nd machine
    assert process_device("cuda", launched) == "cuda:1"
    assert process_device(" xpu ", launched) == "xpu:1"
    assert process_device("cuda:0", launched) == "cuda:0"  # an explicit index is the user's choice
    assert process_device("cpu", launched) == "cpu" and process_device("mps", launched) == "mps"
    assert process_device("cuda", {}) == "cuda" and process_device("cuda", {"LOCAL_RANK": ""}) == "cuda"
    with pytest.raises(ValueError, match=r"LOCAL_RANK='x'.*cuda:0"):
        process_device("cuda", {"LOCAL_RANK": "x"})


def test_the_cli_runs_each_launched_process_on_its_own_gpu(tmp_path, yunet_path, capsys, monkeypatch):
    """No GPU needed: the device the CLI checks (and then loads every model onto) is recorded."""
    photo = str(shared_path("images/whole/gfpgan_00.jpg"))
    seen = []

    def record(device):
        seen.append(device)
        raise ValueError(f"recorded {device}")

    monkeypatch.setattr(devices, "check_device", record)
    monkeypatch.setenv("LOCAL_RANK", "1")
    for argv in (["restore", photo, "-o", str(tmp_path / "out")], ["detect", photo],
                 ["align", photo, "-o", str(tmp_path / "crops")]):
        assert main([*argv, "--detector", str(yunet_path), "--device", "cuda"]) == 2
    assert main(["restore", photo, "-o", str(tmp_path / "out"), "--device", "cuda:0"]) == 2
    assert main(["detect", photo, "--device", "cpu"]) == 2
    assert seen == ["cuda:1", "cuda:1", "cuda:1", "cuda:0", "cpu"]
    assert "recorded cuda:1" in capsys.readouterr().err


def test_a_device_this_machine_lacks_is_a_clear_error(tmp_path, yunet_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="not a torch device name"):
        check_device("gpu0")
    assert check_device("cpu") == torch.device("cpu")
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"cuda:{count}: this machine has {count} CUDA" if count else
                       "no CUDA device"):
        check_device(f"cuda:{count}")
    monkeypatch.setenv("LOCAL_RANK", str(count))  # one process more than there are GPUs
    photo = str(shared_path("images/whole/gfpgan_00.jpg"))
    assert main(["restore", photo, "-o", str(tmp_path / "out"), "--detector", str(yunet_path), "--device",
                 "cuda"]) == 2
    err = capsys.readouterr().err
    assert f"cuda:{count}" in err if count else "use cpu" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
