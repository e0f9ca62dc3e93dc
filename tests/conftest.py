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
    """The pack loaded the way ComfyUI (>= 0.3.47) loads a V3 custom node folder, with test stand-ins for ComfyUI:
    import the folder's __init__.py, await its comfy_entrypoint(), register get_node_list() by schema node_id.

    Returns the module with NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS filled in as ComfyUI's own registry
    would hold them (the pack itself exports only comfy_entrypoint)."""
    import asyncio
    import importlib.util
    import sys
    import types

    stub = str(Path(__file__).parent / "comfy_stub")
    if stub not in sys.path:
        sys.path.insert(0, stub)
    name = "bfr_pack_under_test"
    if name in sys.modules:
        return sys.modules[name + ".registry"]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    assert not hasattr(module, "NODE_CLASS_MAPPINGS"), "V1 mappings would make ComfyUI skip comfy_entrypoint"
    from comfy_api.latest import ComfyExtension

    async def load():
        extension = await module.comfy_entrypoint()
        assert isinstance(extension, ComfyExtension)
        await extension.on_load()
        return await extension.get_node_list()

    registry = types.SimpleNamespace(module=module, NODE_CLASS_MAPPINGS={}, NODE_DISPLAY_NAME_MAPPINGS={})
    for node_cls in asyncio.run(load()):
        schema = node_cls.GET_SCHEMA()
        assert schema.node_id not in registry.NODE_CLASS_MAPPINGS, f"{schema.node_id} registered twice"
        registry.NODE_CLASS_MAPPINGS[schema.node_id] = node_cls
        registry.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name
    sys.modules[name + ".registry"] = registry
    return registry


def node_input_names(node_cls) -> list[str]:
    """Input names in the order ComfyUI lists them (required, then optional): the order of saved widget values."""
    spec = node_cls.INPUT_TYPES()
    return [*spec.get("required", {}), *spec.get("optional", {})]


def combo_options(node_cls, name: str) -> list:
    """The choices of a V3 combo input (V1 listed them as the type; V3 sends type "COMBO" with `options`)."""
    spec = node_cls.INPUT_TYPES()
    kind, opts = {**spec.get("required", {}), **spec.get("optional", {})}[name]
    assert kind == "COMBO", f"{name} is not a combo"
    return opts["options"]


def validate_node(node_cls, **inputs) -> bool | str:
    """What ComfyUI's prompt validation gets from the node's validate_inputs (True when it has none): only the
    inputs the function declares are passed, as execution.validate_inputs does."""
    import inspect

    from comfy_api.internal import first_real_override

    func = first_real_override(node_cls, "validate_inputs")
    if func is None:
        return True
    declared = inspect.getfullargspec(func).args
    return func(**{k: v for k, v in inputs.items() if k in declared})


def run_node(node_cls, *args, **kwargs) -> tuple:
    """Run a node as ComfyUI's executor does: positional values map to input names in schema order (as a saved
    workflow's values do), validate_inputs must accept them (else ValueError with its message), then the class's
    FUNCTION runs with keyword arguments. Returns the outputs as a tuple."""
    names = node_input_names(node_cls)
    assert len(args) <= len(names), f"{len(args)} values for {len(names)} inputs"
    inputs = {**dict(zip(names, args)), **kwargs}
    verdict = validate_node(node_cls, **inputs)
    if verdict is not True:
        raise ValueError(f"validation refused the inputs: {verdict}")
    out = getattr(node_cls, node_cls.FUNCTION)(**inputs)
    return tuple(out.args)


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
