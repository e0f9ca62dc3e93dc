"""docs/ray_restore.py: Ray Data actors (one FaceRestorer each) restore an archive, and the results are the ones of
`python -m bfr_core restore` with the same settings. Needs `ray[data]` (not in the test extra: too big for CI)."""
from __future__ import annotations

import importlib.util
import os
import sys

import cv2
import pytest

from bfr_core.cli import main
from conftest import ROOT, shared_path

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture
def ray_local():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Workers import bfr_core and the example module (the actor class is pickled by reference).
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "docs")]),
                                       "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}})
    try:
        yield
    finally:
        ray.shutdown()


def _example():
    spec = importlib.util.spec_from_file_location("ray_restore", ROOT / "docs" / "ray_restore.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ray_restore"] = module
    spec.loader.exec_module(module)
    return module


def test_ray_data_actors_give_the_cli_result(tmp_path, yunet_path, one_thread, ray_local, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for src in sorted(shared_path("images/aligned512").glob("*.png"))[:3]:
        img = cv2.resize(cv2.imread(str(src)), (160, 160), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / src.name), cv2.copyMakeBorder(img, 40, 40, 30, 30, cv2.BORDER_REFLECT))
    prior = shared_path("models/tiny_ddpm_lfw32")
    assert main(["restore", str(folder), "-o", str(tmp_path / "cli"), "--detector", str(yunet_path),
                 "--prior", str(prior), "--strength", "0.3", "--steps", "2", "--crop-size", "128", "--seed", "3"]) == 0
    ray_restore = _example()
    kwargs = dict(detector=str(yunet_path), prior=str(prior), strength=0.3, steps=2, crop_size=128, seed=3,
                  threads=1)
    rows = ray_restore.restore_with_ray(sorted(folder.iterdir()), tmp_path / "ray", concurrency=2, **kwargs)
    assert [r["faces"] for r in rows] == [1, 1, 1]
    cli = {p.name: p.read_bytes() for p in sorted((tmp_path / "cli").iterdir())}
    out = {p.name: p.read_bytes() for p in sorted((tmp_path / "ray").iterdir())}
    assert out == cli  # byte-identical, whichever actor restored which photo
    (tmp_path / "ray" / sorted(out)[1]).unlink()  # resume: only the missing result is restored
    rows = ray_restore.restore_with_ray(sorted(folder.iterdir()), tmp_path / "ray", concurrency=1, **kwargs)
    assert [r["faces"] for r in rows] == [-1, 1, -1]
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "ray").iterdir())} == cli
