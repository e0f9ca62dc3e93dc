"""Identity nodes (recognizer loader, guidance, similarity) and guided restoration through the stand-ins."""
import pytest
import torch

from bfr_core.identity import IRESNET_LAYERS, IResNet
from bfr_core.archs.iddpm_unet import IDDPMUNet
from bfr_core.archs.iddpm_unet import TINY_CONFIG
from conftest import load_rgb, shared_path


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
    choices = nodes["BFRLoadFaceRecognizer"].INPUT_TYPES()["required"]["model_name"][0]
    name = next(c for c in choices if c.endswith("backbone.pth"))
    assert name.startswith("insightface:")
    return nodes, nodes["BFRLoadFaceRecognizer"]().load(name, "fp32")[0]


def test_similarity_node(comfy_pack, folders):
    nodes, rec = _load(comfy_pack)
    a = load_rgb(shared_path("images/aligned512/gfpgan_Adele_crop.png")).movedim(1, -1)
    b = load_rgb(shared_path("images/aligned512/gfpgan_Julia_Roberts_crop.png")).movedim(1, -1)
    sims, report = nodes["BFRFaceSimilarity"]().compare(rec, torch.cat([a, b]), torch.cat([a, a]))
    assert len(sims) == 2 and sims[0] == pytest.approx(1.0, abs=1e-4) and sims[1] < sims[0]
    assert "face 1" in report and "mean" in report
    with pytest.raises(ValueError, match="same number"):
        nodes["BFRFaceSimilarity"]().compare(rec, torch.cat([a, b, a]), torch.cat([a, a]))


def test_guidance_node_with_reference_photos(comfy_pack, folders):
    nodes, rec = _load(comfy_pack)
    detector = nodes["BFRLoadFaceDetector"]().load("face_detection_yunet_2023mar.onnx")[0]
    photo = load_rgb(shared_path("images/whole/gfpgan_Blake_Lively.jpg")).movedim(1, -1)
    (spec,) = nodes["BFRIdentityGuidance"]().build(rec, 1.0, 1.0, 0.0, "features", 0.0, reference=photo, detector=detector)
    assert spec.reference.shape == (1, 512)
    with pytest.raises(ValueError, match="no face found in reference"):
        nodes["BFRIdentityGuidance"]().build(rec, 1.0, 1.0, 0.0, "features", 0.0, reference=torch.full_like(photo, 0.5),
                                             detector=detector)
    with pytest.raises(ValueError, match="end"):
        nodes["BFRIdentityGuidance"]().build(rec, 1.0, 0.2, 0.5, "features")


def test_guided_restore_moves_identity_toward_the_reference(comfy_pack, folders):
    nodes, rec = _load(comfy_pack)
    prior = nodes["BFRLoadDiffusionPrior"]().load("tiny_iddpm.pth", "fp32")[0]
    crops = load_rgb(shared_path("images/aligned512/gfpgan_Adele_crop.png"))
    crops = torch.nn.functional.interpolate(crops, size=(64, 64), mode="area").movedim(1, -1)
    ref = load_rgb(shared_path("images/aligned512/gfpgan_Justin_Timberlake_crop.png")).movedim(1, -1)
    (plain,) = nodes["BFRDiffusionRestore"]().restore(crops, prior, 0.3, 4, "ddim", 0.0, 0, 1)
    distances = []
    for strength in (1.0, 4.0):
        (spec,) = nodes["BFRIdentityGuidance"]().build(rec, strength, 1.0, 0.0, "none", 0.0, reference=ref)
        (out,) = nodes["BFRDiffusionRestore"]().restore(crops, prior, 0.3, 4, "ddim", 0.0, 0, 1, guidance=spec)
        distances.append(out)
    target = rec.embed(ref.movedim(-1, 1))
    d = [float(1 - (rec.embed(x.movedim(-1, 1)) * target).sum()) for x in [plain] + distances]
    assert d[0] > d[1] > d[2], d


def test_zero_strength_guidance_changes_nothing_even_with_resizing(comfy_pack, folders):
    """With guidance the node runs the backbone itself; it must do so exactly as restore_faces would
    (at the prior's resolution), so strength 0 equals no guidance for crops of another size."""
    nodes, rec = _load(comfy_pack)
    prior = nodes["BFRLoadDiffusionPrior"]().load("tiny_iddpm.pth", "fp32")[0]  # 32 px prior
    blur = torch.nn.Conv2d(3, 3, 5, padding=2, groups=3, bias=False)
    torch.nn.init.constant_(blur.weight, 1 / 25)
    crops = torch.rand(3, 64, 64, 3)
    (plain,) = nodes["BFRDiffusionRestore"]().restore(crops, prior, 0.3, 3, "ddim", 0.5, 0, 2, restorer=blur)
    (spec,) = nodes["BFRIdentityGuidance"]().build(rec, 0.0, 1.0, 0.0, "features", 0.0)
    (guided,) = nodes["BFRDiffusionRestore"]().restore(crops, prior, 0.3, 3, "ddim", 0.5, 0, 2, restorer=blur,
                                                       guidance=spec)
    torch.testing.assert_close(guided, plain, atol=1e-5, rtol=0)
    bad_masks = torch.ones(7, 64, 64)
    (spec,) = nodes["BFRIdentityGuidance"]().build(rec, 1.0, 1.0, 0.0, "features", 0.0, mask=bad_masks)
    with pytest.raises(ValueError):
        nodes["BFRDiffusionRestore"]().restore(crops, prior, 0.3, 3, "ddim", 0.5, 0, 2, guidance=spec)


def test_guided_backbone_pass_survives_out_of_memory(comfy_pack, folders):
    """With guidance the node runs the backbone itself: an out-of-memory there halves the chunk like the UNet's."""
    nodes, rec = _load(comfy_pack)
    prior = nodes["BFRLoadDiffusionPrior"]().load("tiny_iddpm.pth", "fp32")[0]
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
    (spec,) = nodes["BFRIdentityGuidance"]().build(rec, 1.0, 1.0, 0.0, "features", 0.0)
    (out,) = nodes["BFRDiffusionRestore"]().restore(crops, prior, 0.0, 3, "ddim", 0.5, 0, 4, restorer=Picky(),
                                                    guidance=spec)
    assert sizes[:2] == [3, 1] and set(sizes[1:]) == {1}
    torch.testing.assert_close(out, (crops * 0.9).clamp(0, 1), atol=1e-6, rtol=0)
