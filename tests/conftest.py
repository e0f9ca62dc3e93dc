"""Shared test fixtures: paths to ../shared/data, which must exist in CI."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_path(rel: str) -> Path:
    """Path of a file in ../shared/data; fails in CI (CI set) when missing, skips elsewhere."""
    path = SHARED_DATA / rel
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"test data missing in CI: {path}")
        pytest.skip(f"test data not found: {path}")
    return path


def require_test_extra(module: str):
    """A package of the `test` extra: skipped where it is missing, a failure in CI (CI set), where it must be
    installed."""
    if os.environ.get("CI"):
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError as exc:
            pytest.fail(f"{module} (in the test extra) is missing in CI: {exc}")
    return pytest.importorskip(module)


@pytest.fixture
def yunet_path() -> Path:
    return shared_path("models/face_detection_yunet_2023mar.onnx")


@pytest.fixture
def solvay_path() -> Path:
    return shared_path("images/group/Solvay_conference_1927.png")


def load_rgb(path: Path):
    """An image file as a [1, 3, H, W] float tensor in [0, 1] (RGB)."""
    from bfr_core.io.images import read_image

    return read_image(path).rgb[None]


@pytest.fixture(scope="session")
def yunet():
    from bfr_core.faces.detection.yunet import YuNetDetector

    return YuNetDetector(shared_path("models/face_detection_yunet_2023mar.onnx"))


@pytest.fixture(scope="session")
def comfy_pack():
    """The pack imported the way ComfyUI imports a custom node folder, with test stand-ins for ComfyUI."""
    import importlib.util
    import sys

    stub = str(Path(__file__).parent / "comfy_stub")
    if stub not in sys.path:
        sys.path.insert(0, stub)
    name = "bfr_pack_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def faces64():
    """The 4 aligned test faces and their mirrors at 64 px [8, 3, 64, 64]: the analytic prior's data."""
    from analytic_prior import load_face_set

    paths = sorted(shared_path("images/aligned512").glob("*.png"))
    assert len(paths) == 4, paths
    return load_face_set(paths, 64, flips=True)


@pytest.fixture
def comfy_inference_mode():
    """ComfyUI executes every node inside torch.inference_mode(); node tests use this to do the same."""
    import torch

    with torch.inference_mode():
        yield


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP spin-waits make them 100x slower on a busy 2-core box."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
