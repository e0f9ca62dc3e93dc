"""Restore nodes (prior/restorer loaders, crop restore, all-in-one) through the ComfyUI stand-ins."""
import sys

import pytest
import torch

from bfr_core.archs.iddpm_unet import IDDPMUNet
from bfr_core.archs.iddpm_unet import TINY_CONFIG
from conftest import combo_options, load_rgb, run_node, shared_path


# ComfyUI executes every node inside torch.inference_mode(); so do these tests (conftest fixture).
pytestmark = pytest.mark.usefixtures("comfy_inference_mode")


@pytest.fixture
def models_dir(tmp_path, comfy_pack):
    """A facerestore_models folder with a tiny DifFace-layout prior (official key layout, `module.`)."""
    import folder_paths

    torch.manual_seed(0)
    unet = IDDPMUNet(TINY_CONFIG)
    torch.save({"module." + k: v for k, v in unet.state_dict().items()}, tmp_path / "tiny_iddpm.pth")
    folder_paths.folder_names_and_paths["facerestore_models"] = ([str(tmp_path)], {".pth", ".safetensors"})
    yunet = shared_path("models/face_detection_yunet_2023mar.onnx")
    folder_paths.folder_names_and_paths["facedetection"] = ([str(yunet.parent)], {".onnx"})
    return tmp_path


def _nodes(comfy_pack):
    return comfy_pack.NODE_CLASS_MAPPINGS


def test_loaders_list_and_load(comfy_pack, models_dir):
    nodes = _nodes(comfy_pack)
    choices = combo_options(nodes["BFRLoadDiffusionPrior"], "model_name")
    assert "tiny_iddpm.pth" in choices
    (models_dir / "GFPGANv1.4.pth").write_bytes(b"")
    (models_dir / "recognition_arcface_ir_se50.pth").write_bytes(b"")
    assert combo_options(nodes["BFRLoadDiffusionPrior"], "model_name")[0] == "tiny_iddpm.pth"
    backbones = combo_options(nodes["BFRLoadRestorer"], "model_name")
    assert "GFPGANv1.4.pth" in backbones and "tiny_iddpm.pth" not in backbones
    assert "swinir_restoration512_L1.pth" not in backbones  # the placeholder only stands in for an empty folder
    assert "recognition_arcface_ir_se50.pth" not in backbones
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "auto")[0]
    assert prior.sample_size == TINY_CONFIG.image_size and prior.dtype == torch.float32
    assert combo_options(nodes["BFRLoadRestorer"], "model_name")[0] == "none"
    identity = run_node(nodes["BFRLoadRestorer"], "none", "auto")[0]
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(identity(x), x)
    with pytest.raises(Exception, match="missing.pth"):
        run_node(nodes["BFRLoadDiffusionPrior"], "missing.pth", "auto")


def test_diffusion_restore_node(comfy_pack, models_dir):
    import comfy.model_management as mm
    import comfy.utils

    nodes = _nodes(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    crops = torch.rand(3, 64, 64, 3)
    comfy.utils.UPDATES.clear()
    mm.FREED.clear()
    (out,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.3, 4, "ddim", 0.5, 5, 2)
    assert out.shape == crops.shape and out.dtype == torch.float32 and out.device.type == "cpu"
    assert 0 <= float(out.min()) and float(out.max()) <= 1 and not torch.equal(out, crops)
    assert comfy.utils.UPDATES[-1] == (8, 8)  # 4 steps x 2 chunks, reported to the progress bar
    assert mm.FREED, "memory was not requested from ComfyUI before loading the prior"
    # Per-face seeds: face 1 of the batch equals face 0 restored alone with seed + 1.
    (alone,) = run_node(nodes["BFRDiffusionRestore"], crops[1:2], prior, 0.3, 4, "ddim", 0.5, 6, 2)
    torch.testing.assert_close(alone, out[1:2], atol=1e-5, rtol=0)
    (same,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.0, 4, "ddim", 0.5, 5, 2)
    assert torch.allclose(same, crops, atol=1e-6)  # strength 0 without a backbone: crops unchanged


def test_diffusion_restore_can_be_cancelled(comfy_pack, models_dir):
    import comfy.model_management as mm

    nodes = _nodes(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    mm.INTERRUPT["flag"] = True
    with pytest.raises(mm.InterruptProcessingException):
        run_node(nodes["BFRDiffusionRestore"], torch.rand(2, 32, 32, 3), prior, 0.4, 50, "ddim", 0.5, 0, 1)


def test_all_in_one_node(comfy_pack, models_dir):
    nodes = _nodes(comfy_pack)
    detector = run_node(nodes["BFRLoadFaceDetector"], "face_detection_yunet_2023mar.onnx")[0]
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    photo = load_rgb(shared_path("images/whole/gfpgan_Blake_Lively.jpg")).movedim(1, -1)
    batch = torch.cat([photo, torch.full_like(photo, 0.5)])
    out, mask = run_node(nodes["BFRRestoreFaces"], batch, detector, prior, 0.1, 2, 0, "largest", "lowpass")
    assert out.shape == batch.shape and mask.shape == batch.shape[:3]
    assert mask[0].max() > 0.99 and not mask[1].any() and torch.equal(out[1], batch[1])
    changed = (out[0] - batch[0]).abs().amax(-1) > 1e-3
    assert changed.any() and not changed[mask[0] == 0].any()


def test_saved_ddim_100_workflows_keep_difface_exact(comfy_pack, models_dir):
    """Before the presets, ddim + 100 steps + eta 0.5 at strength 0.4 ran DifFace's exact sampler; it still does."""
    from bfr_core import restore_faces

    nodes = _nodes(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    crops = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    (legacy,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.4, 100, "ddim", 0.5, 7, 1)
    (official,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.4, 20, "official", 0.0, 7, 1)
    ref = restore_faces(crops.movedim(-1, 1).contiguous(), prior, sampler="official", seed=7).movedim(1, -1)
    assert torch.equal(legacy, official) and torch.equal(official, ref)  # official ignores steps and eta
    (ddim99,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.4, 99, "ddim", 0.5, 7, 1)
    assert not torch.equal(ddim99, legacy)  # any other setting is plain DDIM


def test_faces_input_seeds_like_the_all_in_one_node(comfy_pack, models_dir):
    from bfr_core import AlignedFaces

    nodes = _nodes(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    crops = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(4))
    faces = AlignedFaces(torch.tensor([0, 0, 1]), torch.zeros(3, 2, 3), torch.zeros(3, 5, 2), torch.ones(3), 32,
                         [(64, 64)] * 2)
    (keyed,) = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.4, 4, "ddim", 0.5, 5, 2, faces=faces)
    (alone,) = run_node(nodes["BFRDiffusionRestore"], crops[2:], prior, 0.4, 4, "ddim", 0.5, 5, 2)
    torch.testing.assert_close(keyed[2:], alone, atol=1e-5, rtol=0)  # image 1's first face: seed + 0
    with pytest.raises(ValueError, match="describes 3 faces"):
        run_node(nodes["BFRDiffusionRestore"], crops[:2], prior, 0.4, 4, "ddim", 0.5, 5, 2, faces=faces)


def test_models_stay_loaded_between_runs(comfy_pack, models_dir):
    """Loaders hand out networks with a ModelPatcher; a second run asks ComfyUI for nothing new (the prior is not
    reloaded or moved), and the memory asked for follows the crop size and batch size (bytes per pixel measured by
    bench/bench_activation_memory.py)."""
    import comfy.model_management as mm
    from test_nodes import assert_no_module_level_models

    memory = sys.modules["bfr_pack_under_test.nodes.memory"]
    nodes = _nodes(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    detector = run_node(nodes["BFRLoadFaceDetector"], "face_detection_yunet_2023mar.onnx")[0]
    assert memory.patcher_of(prior) is not None and memory.patcher_of(detector) is None  # YuNet runs in OpenCV
    mm.LOAD_REQUESTS.clear()
    crops = torch.rand(3, 32, 32, 3)
    first = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.3, 2, "ddim", 0.5, 5, 2)[0]
    second = run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.3, 2, "ddim", 0.5, 5, 2)[0]
    assert torch.equal(first, second)
    # One load for both runs. The tiny prior has 32 px samples and the crops are restored at 512 px at least, but
    # the UNet runs at its own size: 2 faces x 32 x 32 px x 1536 B (the SwinIR-free recipe's largest part).
    assert mm.LOAD_REQUESTS == [("ManagedNetworks", 2 * 32 * 32 * 1536)]
    assert memory.restore_memory(_restorer(prior, batch_size=4)) == 4 * 32 * 32 * 1536
    half = memory.activation_bytes(prior, 4, 32, 32, torch.bfloat16)
    assert half == 4 * 32 * 32 * 1536 // 2
    assert_no_module_level_models(comfy_pack)


def _restorer(prior, **kw):
    from bfr_core import FaceRestorer

    return FaceRestorer(prior, None, **kw)


class _Blocks(torch.nn.Module):
    """A backbone of 4 blocks run in sequence (as SwinIR's residual groups)."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Conv2d(3, 3, 1) for _ in range(4))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x.clamp(0, 1)


def test_progress_covers_the_backbone_then_the_sampling(comfy_pack, models_dir):
    """The bar moves during the backbone pass (per block of each chunk), then per sampling step; Cancel stops a
    backbone chunk midway."""
    import comfy.model_management as mm
    import comfy.utils

    nodes = _nodes(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    crops = torch.rand(3, 32, 32, 3)
    comfy.utils.UPDATES.clear()
    run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.3, 2, "ddim", 0.5, 5, 2, restorer=_Blocks())
    updates = comfy.utils.UPDATES
    backbone = [u for u in updates if u[1] == 8]  # 2 chunks x 4 blocks
    assert [v for v, _ in backbone if v not in (4, 8)] == [1, 2, 3, 5, 6, 7]  # within-chunk steps, in order
    assert updates.index((8, 8)) < updates.index((1, 4)) and updates[-1] == (4, 4)  # then 2 steps x 2 chunks
    assert all(t in (4, 8) for _, t in updates)

    calls = []

    class CancelInBlock(_Blocks):
        def forward(self, x):
            calls.append(1)
            return super().forward(x)

    backbone = CancelInBlock()
    backbone.blocks[1].register_forward_hook(lambda *a: mm.INTERRUPT.update(flag=True))
    with pytest.raises(mm.InterruptProcessingException):
        run_node(nodes["BFRDiffusionRestore"], crops, prior, 0.3, 2, "ddim", 0.5, 5, 2, restorer=backbone)
    assert len(calls) == 1  # stopped inside the first chunk
    assert not backbone.blocks[0]._forward_hooks  # the progress hooks are removed


def test_all_in_one_tracks_video_batches_as_the_library_does(comfy_pack, models_dir, monkeypatch):
    """tracking (appended inputs; "off" = as before): faces linked into tracks with the library's track_faces, a
    person's seed = seed + track id in every frame, per-track blend and colour reference. Restored 16 frames per
    call, the batch equals one restore_images call with a TrackMemory; the bar moves forward across the calls."""
    import comfy.utils
    from test_nodes_track import _frames_and_detections

    import bfr_pack_under_test.nodes.restore as restore_node
    from bfr_pack_under_test.bfr_core.faces.smoothing import SmoothingOptions
    from bfr_pack_under_test.bfr_core.faces.tracking import track_faces
    from bfr_pack_under_test.bfr_core.restoration.pipeline import PasteOptions, restore_images
    from bfr_pack_under_test.bfr_core.restoration.restorer import FaceRestorer
    from bfr_pack_under_test.bfr_core.restoration.temporal import TrackMemory

    nodes = _nodes(comfy_pack)
    prior = run_node(nodes["BFRLoadDiffusionPrior"], "tiny_iddpm.pth", "fp32")[0]
    frames, dets = _frames_and_detections(20)  # two faces; the detector lists them in alternating orders
    assert restore_node.FRAMES_PER_CALL < 20
    monkeypatch.setattr(restore_node, "run_detection", lambda *args: list(dets))
    seeds, call = [], FaceRestorer.__call__
    monkeypatch.setattr(FaceRestorer, "__call__", lambda self, crops, **kw: seeds.append(kw["seeds"]) or call(
        self, crops, **kw))
    backbone = _Blocks()
    args = (frames, None, prior, 0.3, 2, 7, "all", "mean_std", backbone)

    comfy.utils.UPDATES.clear()
    out, mask = run_node(nodes["BFRRestoreFaces"], *args, tracking="kalman_rts", fps=24.0, temporal_blend=0.3)
    fractions = [v / t for v, t in comfy.utils.UPDATES]
    assert fractions == sorted(fractions) and fractions[-1] == 1
    assert len(seeds) == 2  # 20 frames, 16 per call
    left = [int(torch.argmin(d.boxes[:, 0])) for d in dets]
    flat = [s for call_seeds in seeds for s in call_seeds]
    assert [flat[2 * t + left[t]] for t in range(20)] == [7] * 20  # the left person: seed + its track id, always

    tracked = track_faces(dets, smoothing=SmoothingOptions(fps=24.0, method="kalman_rts"))
    restorer = FaceRestorer(prior, backbone, strength=0.3, steps=2, sampler="ddim", eta=0.5)
    want = restore_images(frames.movedim(-1, 1), None, restorer, paste=PasteOptions(color_match="mean_std"), seed=7,
                          detections=tracked, temporal=TrackMemory(blend=0.3, color=0.5))
    torch.testing.assert_close(out, want.images.movedim(1, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(mask, want.coverage.float(), atol=1e-6, rtol=0)

    seeds.clear()
    plain, _ = run_node(nodes["BFRRestoreFaces"], *args)  # a workflow saved before tracking existed
    flat = [s for call_seeds in seeds for s in call_seeds]
    assert flat == [7, 8] * 20  # each image's faces by detection order: the left person's seed changes
    want = restore_images(frames.movedim(-1, 1), None, restorer, paste=PasteOptions(color_match="mean_std"), seed=7,
                          detections=dets)
    torch.testing.assert_close(plain, want.images.movedim(1, -1), atol=1e-5, rtol=0)
    assert (plain - out).abs().max() > 0.05
