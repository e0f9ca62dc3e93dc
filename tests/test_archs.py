"""bfr_core.archs.registry: every family is identified from checkpoints in its official key layout, every loader
goes through load_architecture, and a file of another kind is refused with what it is."""
from __future__ import annotations

import pytest
import torch

from bfr_core.archs import registry
from bfr_core.archs.iddpm_unet import TINY_CONFIG
from bfr_core.archs.iresnet import IRESNET_LAYERS, IResNet, IRSEBackbone
from bfr_core.archs.retinaface import RetinaFace
from bfr_core.models.checkpoint import CheckpointError, load_state_dict

from test_prior import _random_state_dict, _save_official as _save_prior
from test_swinir import _difface_layout, _save as _save_swinir, _spandrel_net

R18 = IRESNET_LAYERS["iresnet18"]


def _retinaface_file(tmp_path, name="detection_mobilenet0.25_Final.pth"):
    """facexlib's release layout: flat state dict with DataParallel's `module.` prefix."""
    path = tmp_path / name
    torch.save({"module." + k: v for k, v in RetinaFace("mobilenet0.25").state_dict().items()}, path)
    return path


def _tiny_diffusers_sd():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 8),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    return unet.state_dict()


def _meta_sd(module_factory):
    with torch.device("meta"):
        return module_factory().state_dict()


def test_registry_lists_every_kind_once_per_id():
    ids = [a.id for a in registry.ARCHITECTURES]
    assert len(ids) == len(set(ids))
    assert {a.kind for a in registry.ARCHITECTURES} == set(registry.KINDS)
    assert registry.get("swinir").kind == "backbone"
    with pytest.raises(KeyError, match="unknown architecture"):
        registry.get("nope")
    with pytest.raises(ValueError, match="unknown kind"):
        registry.load_architecture({}, "upscaler")


def test_identifies_every_family(tmp_path):
    fx_parsing = pytest.importorskip("facexlib.parsing")
    from spandrel.architectures.DnCNN import DnCNN

    _save_prior(_random_state_dict(TINY_CONFIG), tmp_path / "iddpm.pth")
    cases = {
        "iddpm_unet": load_state_dict(tmp_path / "iddpm.pth"),
        "diffusers_unet2d": _tiny_diffusers_sd(),
        "retinaface_mobilenet0.25": load_state_dict(_retinaface_file(tmp_path)),
        "retinaface_resnet50": _meta_sd(lambda: RetinaFace("resnet50")),
        "arcface_iresnet": IResNet(R18).state_dict(),
        "facexlib_irse": _meta_sd(IRSEBackbone),
        "basicsr_resnet_arcface": {"conv1.weight": torch.zeros(64, 1, 3, 3), "fc5.weight": torch.zeros(8, 8)},
        "facexlib_bisenet": _meta_sd(lambda: fx_parsing.bisenet.BiSeNet(num_class=19)),
        "facexlib_parsenet": _meta_sd(lambda: fx_parsing.parsenet.ParseNet(512, 512, 19)),
        "swinir": load_state_dict(_save_swinir(tmp_path, _spandrel_net())),
        "spandrel": DnCNN(in_nc=3, out_nc=3, nc=8, nb=4).state_dict(),
    }
    for arch_id, sd in cases.items():
        arch = registry.identify(sd)
        assert arch is not None and arch.id == arch_id, (arch_id, arch)
        assert registry.identify(sd, kind=arch.kind) is arch
    assert registry.identify({"encoder.conv.weight": torch.zeros(1)}) is None
    # spandrel also knows SwinIR (used by load_restorer when installed), and names the network it found
    swinir_sd = cases["swinir"]
    assert registry.get("spandrel").matches(swinir_sd)
    assert registry.get("spandrel").title(swinir_sd) == "SwinIR (spandrel)"
    assert registry.get("spandrel").title(cases["spandrel"]) == "DnCNN (spandrel)"


def test_load_architecture_builds_strictly_and_keeps_the_layout(tmp_path):
    path = _save_swinir(tmp_path, _spandrel_net())  # DifFace: {'state_dict': {'module.…'}}
    loaded = registry.load_architecture(path, "backbone", ids=("swinir",))
    assert loaded.arch.id == "swinir" and loaded.source == str(path)
    assert (loaded.layout.wrappers, loaded.layout.prefix, loaded.layout.format) == (("state_dict",), "module.", "torch")
    assert set(loaded.module.state_dict()) == set(loaded.state_dict)
    # from an in-memory state dict: no layout; the name given appears in errors
    sd = dict(loaded.state_dict)
    assert registry.load_architecture(sd, "backbone", ids=("swinir",)).layout is None
    del sd["norm.weight"]
    with pytest.raises(CheckpointError, match=r"mine\.pth.*missing.*norm\.weight"):
        registry.load_architecture(sd, "backbone", ids=("swinir",), name="mine.pth")


def test_wrong_kind_names_the_detected_family(tmp_path):
    from bfr_core.diffusion.loading import load_prior
    from bfr_core.faces.detection.retinaface import load_retinaface
    from bfr_core.faces.parsing import load_face_parser
    from bfr_core.identity.recognizers import load_recognizer
    from bfr_core.restoration.backbones import load_restorer

    det = _retinaface_file(tmp_path)
    with pytest.raises(registry.WrongKindError) as err:
        load_prior(det)
    msg = str(err.value)
    assert err.value.detected.id == "retinaface_mobilenet0.25" and err.value.expected_kind == "prior"
    assert f"{det} is a RetinaFace MobileNet-0.25 face detector, not a diffusion prior" in msg
    # where the file belongs (registry entry for its name), and where the prior goes (the loader's hint)
    assert "models/facedetection" in msg and "iddpm_ffhq512_ema500000.pth" in msg and "facerestore_models" in msg

    prior = tmp_path / "iddpm.pth"
    _save_prior(_random_state_dict(TINY_CONFIG), prior)
    with pytest.raises(registry.WrongKindError, match=r"iddpm\.pth is a DifFace iDDPM UNet diffusion prior, "
                                                      r"not a restoration backbone"):
        load_restorer(prior)
    with pytest.raises(registry.WrongKindError, match=r"is a RetinaFace MobileNet-0\.25 face detector, not a face-parsing"):
        load_face_parser(det)
    with pytest.raises(registry.WrongKindError, match=r"is a RetinaFace .* not a face recognizer") as err:
        load_recognizer(det)
    assert "models/insightface" in str(err.value)  # the recognizer loader's folder hint is kept
    rec = tmp_path / "backbone.pth"
    torch.save(IResNet(R18).state_dict(), rec)
    with pytest.raises(registry.WrongKindError, match=r"backbone\.pth is an ArcFace IResNet \(arcface_torch\) face "
                                                      r"recognizer, not a face detector"):
        load_retinaface(rec)
    swinir = _save_swinir(tmp_path, _spandrel_net())
    with pytest.raises(registry.WrongKindError, match=r"is a SwinIR restoration backbone, not a diffusion prior"):
        load_prior(swinir)


def test_backbone_without_spandrel_names_other_kinds(tmp_path, monkeypatch):
    from bfr_core.restoration import backbones

    monkeypatch.setattr(backbones, "_import_spandrel", lambda: (_ for _ in ()).throw(ImportError("no spandrel")))
    with pytest.raises(registry.WrongKindError, match="face detector, not a restoration backbone"):
        backbones.load_restorer(_retinaface_file(tmp_path))


def test_loaders_keep_their_classes(tmp_path):
    """The loaders return what they returned before the registry (types, variants, eval + frozen)."""
    from bfr_core.faces.detection import load_detector
    from bfr_core.faces.detection.retinaface import RetinaFaceDetector

    det = load_detector(_retinaface_file(tmp_path))
    assert isinstance(det, RetinaFaceDetector) and det.variant == "mobilenet0.25"
    assert not det.model.training and not any(p.requires_grad for p in det.model.parameters())
    assert RetinaFaceDetector.from_state_dict(RetinaFace("mobilenet0.25").state_dict()).variant == "mobilenet0.25"
