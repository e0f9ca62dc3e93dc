"""DT-BFR nodes through the ComfyUI stand-ins: pseudo-targets of an IMAGE batch, and fine-tuning a loaded backbone
(progress, cancel + resume, the file saved in models/facerestore_models in its original layout)."""
import pytest
import torch

from analytic_prior import degrade
from bfr_core import generate_pseudo_targets
from bfr_core.archs.iddpm_unet import TINY_CONFIG, IDDPMUNet
from conftest import combo_options, run_node

spandrel_swinir = pytest.importorskip("spandrel.architectures.SwinIR")
from test_swinir import TINY, _save  # noqa: E402

pytestmark = pytest.mark.usefixtures("comfy_inference_mode", "one_thread")


@pytest.fixture
def models_dir(tmp_path, comfy_pack, monkeypatch):
    """facerestore_models with a tiny DifFace-layout prior and a tiny SwinIR; ComfyUI's temp folder in tmp_path."""
    import folder_paths

    with torch.inference_mode(False):
        torch.manual_seed(0)
        unet = IDDPMUNet(TINY_CONFIG)
        torch.save({"module." + k: v for k, v in unet.state_dict().items()}, tmp_path / "tiny_iddpm.pth")
        _save(tmp_path, spandrel_swinir.SwinIR(**TINY).eval(), name="tiny_swinir.pth")
    folder_paths.folder_names_and_paths["facerestore_models"] = ([str(tmp_path)], {".pth", ".safetensors"})
    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path / "temp"), raising=False)
    return tmp_path


@pytest.fixture
def crops(faces64):
    """8 degraded faces at 32 px as an IMAGE batch [B, H, W, C]."""
    with torch.inference_mode(False):
        small = torch.nn.functional.interpolate(faces64, size=(32, 32), mode="area")
        return torch.stack([degrade(f, seed=i, blur_sigma=1.0, down=2) for i, f in enumerate(small)]).movedim(1, -1)


def _nodes(comfy_pack):
    return comfy_pack.NODE_CLASS_MAPPINGS


def test_pseudo_targets_node_equals_the_library(comfy_pack, models_dir, crops):
    import comfy.utils

    nodes = _nodes(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    restorer = run_node(nodes["BFRLoadRestorer"], "tiny_swinir.pth", "fp32")[0]
    comfy.utils.UPDATES.clear()
    (targets,) = run_node(nodes["BFRPseudoTargets"], crops[:3], prior, 6, 3, 8, 5, 2, restorer)
    assert targets.shape == (3, 32, 32, 3) and targets.dtype == torch.float32
    assert comfy.utils.UPDATES[-1] == (12, 12)  # 6 steps × 2 chunks
    expected = generate_pseudo_targets(crops[:3].movedim(-1, 1), prior, restorer, t_start=6, constrain_until=3,
                                       lowpass=8, seed=5, batch_size=2)
    torch.testing.assert_close(targets.movedim(-1, 1), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="constrain_until"):
        run_node(nodes["BFRPseudoTargets"], crops[:1], prior, 6, 7, 8, 5, 2)


def test_adapt_node_trains_a_copy_saves_it_and_resumes_after_cancel(comfy_pack, models_dir, crops):
    import comfy.model_management as mm

    nodes = _nodes(comfy_pack)
    restorer = run_node(nodes["BFRLoadRestorer"], "tiny_swinir.pth", "fp32")[0]
    before = {k: v.clone() for k, v in restorer.state_dict().items()}
    with torch.inference_mode(False):
        targets = crops.clamp(0.05, 0.95)  # any targets of the crops' size do for the plumbing
    args = (restorer, crops, targets, 4, 4, 1e-3, 1e-4, 0, "fp32", "bfr_adapted/album")

    calls = {"n": 0}
    real = mm.throw_exception_if_processing_interrupted

    def cancel_after_two():  # the user presses Cancel during step 3
        calls["n"] += 1
        if calls["n"] == 3:
            raise mm.InterruptProcessingException()
        real()

    mm.throw_exception_if_processing_interrupted = cancel_after_two
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(nodes["BFRAdaptRestorer"], *args)
    finally:
        mm.throw_exception_if_processing_interrupted = real
    assert list((models_dir / "temp" / "bfr_adapt").glob("*/last.pt"))  # the checkpoint of the cancelled run
    assert not (models_dir / "bfr_adapted").exists() or not list((models_dir / "bfr_adapted").iterdir())

    adapted, name, steps = run_node(nodes["BFRAdaptRestorer"], *args)  # queued again: resumes, finishes
    assert steps == 4 and name == "bfr_adapted/album_4steps_00001.pth"
    assert all(torch.equal(v, restorer.state_dict()[k]) for k, v in before.items())  # the loader's object untouched
    saved = torch.load(models_dir / name, weights_only=True)
    original = torch.load(models_dir / "tiny_swinir.pth", weights_only=True)
    assert list(saved["state_dict"]) == list(original["state_dict"])
    assert name in combo_options(nodes["BFRLoadRestorer"], "model_name")  # listed by Load Restorer
    again = run_node(nodes["BFRLoadRestorer"], name, "fp32")[0]
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(again(x), adapted(x))
    assert not torch.equal(again(x), restorer(x))
    # a second run does not overwrite the first file
    assert run_node(nodes["BFRAdaptRestorer"], *args)[1] == "bfr_adapted/album_4steps_00002.pth"


def test_adapt_node_refuses_bad_input(comfy_pack, models_dir, crops):
    nodes = _nodes(comfy_pack)
    restorer = run_node(nodes["BFRLoadRestorer"], "tiny_swinir.pth", "fp32")[0]
    none = run_node(nodes["BFRLoadRestorer"], "none", "fp32")[0]
    with pytest.raises(ValueError, match="at least 8 faces, got 4"):
        run_node(nodes["BFRAdaptRestorer"], restorer, crops[:4], crops[:4], 2, 2, 1e-3, 1e-4, 0, "fp32", "x")
    with pytest.raises(ValueError, match="no parameters"):
        run_node(nodes["BFRAdaptRestorer"], none, crops, crops, 2, 2, 1e-3, 1e-4, 0, "fp32", "x")
    with pytest.raises(ValueError, match="target must have its crop's size"):
        run_node(nodes["BFRAdaptRestorer"], restorer, crops, crops[:, :16], 2, 2, 1e-3, 1e-4, 0, "fp32", "x")
    with pytest.raises(ValueError, match="lr_min"):
        run_node(nodes["BFRAdaptRestorer"], restorer, crops, crops, 2, 2, 1e-4, 1e-3, 0, "fp32", "x")
    with pytest.raises(ValueError, match="filename_prefix"):
        run_node(nodes["BFRAdaptRestorer"], restorer, crops, crops, 1, 2, 1e-3, 1e-4, 0, "fp32", "../escape")
