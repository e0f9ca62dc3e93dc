"""Identity nodes (recognizer loader, guidance, similarity) and guided restoration through the stand-ins."""
import pytest
import torch

from bfr_core.identity import IRESNET_LAYERS, IResNet
from bfr_core.archs.iddpm_unet import IDDPMUNet
from bfr_core.archs.iddpm_unet import TINY_CONFIG
from conftest import combo_options, load_rgb, run_node, shared_path, validate_node


# ComfyUI executes every node inside torch.inference_mode(); so do these tests (conftest fixture).
pytestmark = pytest.mark.usefixtures("comfy_inference_mode")


@pytest.fixture
def folders(tmp_path, comfy_pack):
    """models/insightface with a random-weight iresnet18 backbone.pth; a tiny prior; YuNet."""
    import folder_paths

    torch.manual_seed(0)
    (tmp_path / "insightface" / "custom").mkdir(parents=True)
    torch.save(IResNet(IRESNET_LAYERS["iresnet18"]).state_dict(), tmp_path / "insightface" / "custom" / "backbone.pth")
    (tmp_path / "restore").mkdir()
    torch.save({"module." + k: v for k, v in IDDPMUNet(TINY_CONFIG).state_dict().items()},
               tmp_path / "restore" / "tiny_iddpm.pth")
    yunet = shared_path("models/face_detection_yunet_2023mar.onnx")
    folder_paths.folder_names_and_paths["insightface"] = ([str(tmp_path / "insightface")], {".onnx", ".pth"})
    folder_paths.folder_names_and_paths["facerestore_models"] = ([str(tmp_path / "restore")], {".pth"})
    folder_paths.folder_names_and_paths["facedetection"] = ([str(yunet.parent)], {".onnx"})
    return tmp_path


def _load(comfy_pack):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    choices = combo_options(nodes["BFRLoadFaceRecognizer"], "model_name")
    name = next(c for c in choices if c.endswith("backbone.pth"))
    assert name.startswith("insightface:")
    return nodes, run_node(nodes["BFRLoadFaceRecognizer"], name, "fp32")[0]


def test_similarity_node(comfy_pack, folders):
    nodes, rec = _load(comfy_pack)
    a = load_rgb(shared_path("images/aligned512/gfpgan_Adele_crop.png")).movedim(1, -1)
    b = load_rgb(shared_path("images/aligned512/gfpgan_Julia_Roberts_crop.png")).movedim(1, -1)
    sims, report = run_node(nodes["BFRFaceSimilarity"], rec, torch.cat([a, b]), torch.cat([a, a]))
    assert len(sims) == 2 and sims[0] == pytest.approx(1.0, abs=1e-4) and sims[1] < sims[0]
    assert "face 1" in report and "mean" in report
    with pytest.raises(ValueError, match="same number"):
        run_node(nodes["BFRFaceSimilarity"], rec, torch.cat([a, b, a]), torch.cat([a, a]))


def test_guidance_node_with_reference_photos(comfy_pack, folders):
    nodes, rec = _load(comfy_pack)
    detector = run_node(nodes["BFRLoadFaceDetector"], "face_detection_yunet_2023mar.onnx")[0]
    photo = load_rgb(shared_path("images/whole/gfpgan_Blake_Lively.jpg")).movedim(1, -1)
    (spec,) = run_node(nodes["BFRIdentityGuidance"], rec, 1.0, 1.0, 0.0, "features", 0.0, reference=photo, detector=detector)
    assert spec.reference.shape == (1, 512)
    with pytest.raises(ValueError, match="no face found in reference"):
        run_node(nodes["BFRIdentityGuidance"], rec, 1.0, 1.0, 0.0, "features", 0.0,
                 reference=torch.full_like(photo, 0.5), detector=detector)
    with pytest.raises(ValueError, match="end"):
        run_node(nodes["BFRIdentityGuidance"], rec, 1.0, 0.2, 0.5, "features")


def test_guided_restore_moves_identity_toward_the_reference(comfy_pack, folders):
    nodes, rec = _load(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    crops = load_rgb(shared_path("images/aligned512/gfpgan_Adele_crop.png"))
    crops = torch.nn.functional.interpolate(crops, size=(64, 64), mode="area").movedim(1, -1)
    ref = load_rgb(shared_path("images/aligned512/gfpgan_Justin_Timberlake_crop.png")).movedim(1, -1)
    (plain,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.3, 4, "ddim", 0.0, 0, 1)
    distances = []
    for strength in (1.0, 4.0):
        (spec,) = run_node(nodes["BFRIdentityGuidance"], rec, strength, 1.0, 0.0, "none", 0.0, reference=ref)
        (out,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.3, 4, "ddim", 0.0, 0, 1, guidance=spec)
        distances.append(out)
    target = rec.embed(ref.movedim(-1, 1))
    d = [float(1 - (rec.embed(x.movedim(-1, 1)) * target).sum()) for x in [plain] + distances]
    assert d[0] > d[1] > d[2], d


def test_zero_strength_guidance_changes_nothing_even_with_resizing(comfy_pack, folders):
    """With guidance the node runs the backbone itself; it must do so exactly as restore_faces would
    (at the prior's resolution), so strength 0 equals no guidance for crops of another size."""
    nodes, rec = _load(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]  # 32 px prior
    blur = torch.nn.Conv2d(3, 3, 5, padding=2, groups=3, bias=False)
    torch.nn.init.constant_(blur.weight, 1 / 25)
    crops = torch.rand(3, 64, 64, 3)
    (plain,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.3, 3, "ddim", 0.5, 0, 2, restorer=blur)
    (spec,) = run_node(nodes["BFRIdentityGuidance"], rec, 0.0, 1.0, 0.0, "features", 0.0)
    (guided,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.3, 3, "ddim", 0.5, 0, 2, restorer=blur,
                         guidance=spec)
    torch.testing.assert_close(guided, plain, atol=1e-5, rtol=0)
    bad_masks = torch.ones(7, 64, 64)
    (spec,) = run_node(nodes["BFRIdentityGuidance"], rec, 1.0, 1.0, 0.0, "features", 0.0, mask=bad_masks)
    with pytest.raises(ValueError):
        run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.3, 3, "ddim", 0.5, 0, 2, guidance=spec)


def test_guided_backbone_pass_survives_out_of_memory(comfy_pack, folders):
    """With guidance the node runs the backbone itself: an out-of-memory there halves the chunk like the UNet's."""
    nodes, rec = _load(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    sizes = []

    class Picky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.9))

        def forward(self, x):
            sizes.append(x.shape[0])
            if x.shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return x * self.w

    crops = torch.rand(3, 32, 32, 3)
    (spec,) = run_node(nodes["BFRIdentityGuidance"], rec, 1.0, 1.0, 0.0, "features", 0.0)
    (out,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.0, 3, "ddim", 0.5, 0, 4, restorer=Picky(),
                      guidance=spec)
    assert sizes[:2] == [3, 1] and set(sizes[1:]) == {1}
    torch.testing.assert_close(out, (crops * 0.9).clamp(0, 1), atol=1e-6, rtol=0)


# --- model files: layouts, default, placeholders, optional onnx ---------------------------------------------------


def _choices(comfy_pack):
    spec = comfy_pack.NODE_CLASS_MAPPINGS["BFRLoadFaceRecognizer"].INPUT_TYPES()["required"]["model_name"]
    return spec[1]["options"], spec[1].get("default", spec[1]["options"][0])


def _identity_workflow_values():
    import json

    from conftest import ROOT

    values = set()
    for sub in ("workflows/ui", "example_workflows"):
        for p in (ROOT / sub).glob("bfr_identity_*.json"):
            values |= {n["widgets_values"][0] for n in json.loads(p.read_text())["nodes"]
                       if n["type"] == "BFRLoadFaceRecognizer"}
    for p in (ROOT / "workflows/api").glob("bfr_identity_*.json"):
        values |= {n["inputs"]["model_name"] for n in json.loads(p.read_text()).values()
                   if n["class_type"] == "BFRLoadFaceRecognizer"}
    return values


def test_recognizer_default_is_the_permissive_facexlib_file(comfy_pack, tmp_path):
    import folder_paths

    from bfr_core.models.files import REGISTRY

    folder_paths.folder_names_and_paths["insightface"] = ([str(tmp_path / "insightface")], {".onnx", ".pth"})
    folder_paths.folder_names_and_paths["facerestore_models"] = ([str(tmp_path / "restore")], {".pth"})
    # Nothing installed: the placeholder names the file and its folder, and the workflows use exactly it.
    choices, default = _choices(comfy_pack)
    assert choices == ["facerestore_models:recognition_arcface_ir_se50.pth"] == [default]
    assert _identity_workflow_values() == {default}
    assert REGISTRY["recognition_arcface_ir_se50.pth"].commercial
    with pytest.raises(FileNotFoundError, match="facerestore_models") as err:
        comfy_pack.NODE_CLASS_MAPPINGS["BFRLoadFaceRecognizer"].execute(model_name=default, dtype="fp32")  # past validation
    assert "--" not in str(err.value)
    # Installed among other recognizers: still listed first and the default.
    (tmp_path / "restore").mkdir()
    (tmp_path / "restore" / "recognition_arcface_ir_se50.pth").write_bytes(b"")
    (tmp_path / "insightface" / "models" / "antelopev2").mkdir(parents=True)
    (tmp_path / "insightface" / "models" / "antelopev2" / "glintr100.onnx").write_bytes(b"")
    choices, default = _choices(comfy_pack)
    assert choices[0] == default == "facerestore_models:recognition_arcface_ir_se50.pth"


@pytest.mark.parametrize("layout", ["insightface/antelopev2", "insightface/models/antelopev2"])
def test_both_insightface_layouts_and_both_spellings_resolve(comfy_pack, tmp_path, layout):
    """Saved workflows hold `insightface:antelopev2/glintr100.onnx`; insightface itself (and InstantID, PuLID,
    ReActor) keep models/insightface/models/antelopev2/. Every spelling is listed when it validates a saved value,
    and loads the file wherever it is."""
    import sys

    import folder_paths

    folder_paths.folder_names_and_paths["insightface"] = ([str(tmp_path / "insightface")], {".onnx", ".pth"})
    folder_paths.folder_names_and_paths["facerestore_models"] = ([str(tmp_path / "restore")], {".pth"})
    (tmp_path / layout).mkdir(parents=True)
    target = tmp_path / layout / "glintr100.onnx"
    target.write_bytes(b"")
    choices, _ = _choices(comfy_pack)
    assert "insightface:antelopev2/glintr100.onnx" in choices  # the spelling saved workflows hold
    if "models/" in layout:
        assert "insightface:models/antelopev2/glintr100.onnx" in choices  # what ComfyUI itself lists
    resolve = sys.modules["bfr_pack_under_test.nodes.identity"].recognizer_path
    for spelling in ("insightface:antelopev2/glintr100.onnx", "insightface:models/antelopev2/glintr100.onnx"):
        assert resolve(spelling) == str(target)
        # ... and passes the queue-time check even when the list shows the other spelling (no value_not_in_list)
        assert validate_node(comfy_pack.NODE_CLASS_MAPPINGS["BFRLoadFaceRecognizer"], model_name=spelling) is True


def test_legacy_spelling_loads_a_backbone_in_insightface_layout(comfy_pack, tmp_path):
    import folder_paths

    torch.manual_seed(0)
    (tmp_path / "insightface" / "models" / "custom").mkdir(parents=True)
    torch.save(IResNet(IRESNET_LAYERS["iresnet18"]).state_dict(),
               tmp_path / "insightface" / "models" / "custom" / "backbone.pth")
    folder_paths.folder_names_and_paths["insightface"] = ([str(tmp_path / "insightface")], {".onnx", ".pth"})
    folder_paths.folder_names_and_paths["facerestore_models"] = ([str(tmp_path / "restore")], {".pth"})
    choices, _ = _choices(comfy_pack)
    assert {"insightface:custom/backbone.pth", "insightface:models/custom/backbone.pth"} <= set(choices)
    rec = run_node(comfy_pack.NODE_CLASS_MAPPINGS["BFRLoadFaceRecognizer"], "insightface:custom/backbone.pth", "fp32")[0]
    assert rec.arch == "iresnet18" and rec.path.endswith("models/custom/backbone.pth")


def test_onnx_recognizer_without_onnx_says_what_to_install(comfy_pack, tmp_path, monkeypatch):
    import re
    import sys

    import folder_paths

    (tmp_path / "insightface" / "buffalo_l").mkdir(parents=True)
    (tmp_path / "insightface" / "buffalo_l" / "w600k_r50.onnx").write_bytes(b"not really")
    folder_paths.folder_names_and_paths["insightface"] = ([str(tmp_path / "insightface")], {".onnx", ".pth"})
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(Exception) as err:  # the pack's own copy of CheckpointError
        run_node(comfy_pack.NODE_CLASS_MAPPINGS["BFRLoadFaceRecognizer"], "insightface:buffalo_l/w600k_r50.onnx", "fp32")
    msg = str(err.value)
    assert type(err.value).__name__ == "CheckpointError"
    assert "optional `onnx` package" in msg and "pip install onnx" in msg and "recognition_arcface_ir_se50" in msg
    assert "insightface/models/<pack>/" in msg  # the folder hint, as its own sentence
    assert not re.search(r"[a-z] ArcFace recognizers go", msg), msg  # no sentences glued together
    assert "--" not in msg


def test_recognizer_hints_agree_on_the_layouts():
    from conftest import ROOT

    from bfr_core.identity.recognizers import FOLDER_HINT, join_hint

    page = (ROOT / "web/docs/BFRLoadFaceRecognizer.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for text in (FOLDER_HINT, page, readme):
        for layout in ("insightface/<pack>/", "insightface/models/<pack>/", "recognition_arcface_ir_se50.pth",
                       "facerestore_models"):
            assert layout in text, layout
    assert join_hint("it failed", "Do this.") == "it failed. Do this."
    assert join_hint("it failed.", "Do this.") == "it failed. Do this."
    assert join_hint("it failed. Do this.", "Do this.") == "it failed. Do this."
