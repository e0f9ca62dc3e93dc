"""scripts/bfr_face_restorer.py as an A1111/Forge extension script, against the stand-ins in tests/a1111_stub that
follow the web UI's modules (face_restoration, shared, devices, paths, script_callbacks, scripts,
scripts_postprocessing, ui_components) and gradio's component calls."""
from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, shared_path

STUB = Path(__file__).parent / "a1111_stub"
PRIOR = "iddpm_ffhq512_ema500000.pth"  # DifFace's name (S-Lab, non-commercial); here a tiny random iDDPM in its layout


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def webui(tmp_path, monkeypatch, yunet_path):
    """The stand-in web UI (gradio included) with the extension script loaded as A1111 loads scripts (by file path)."""
    for name in [m for m in sys.modules if m == "modules" or m.startswith("modules.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(STUB))
    monkeypatch.setitem(sys.modules, "gradio", _load("gradio", STUB / "gradio.py"))
    import modules.paths
    from modules import shared

    (tmp_path / "bfr").mkdir()
    shutil.copy(yunet_path, tmp_path / "bfr" / yunet_path.name)
    monkeypatch.setattr(modules.paths, "models_path", str(tmp_path))
    monkeypatch.setattr(shared, "face_restorers", [])
    monkeypatch.delenv("BFR_COMMERCIAL_ONLY", raising=False)
    return _load("bfr_face_restorer", ROOT / "scripts" / "bfr_face_restorer.py")


@pytest.fixture
def photo() -> np.ndarray:
    """A small uint8 RGB photo with one face (Blake Lively, 350×232)."""
    bgr = cv2.imread(str(shared_path("images/whole/gfpgan_Blake_Lively.jpg")))
    return np.ascontiguousarray(cv2.resize(bgr, (350, 232), interpolation=cv2.INTER_AREA)[..., ::-1])


@pytest.fixture
def portrait() -> np.ndarray:
    """A small uint8 RGB photo with exactly one face (an aligned test face on a border, 220×240)."""
    bgr = cv2.resize(cv2.imread(str(shared_path("images/aligned512/gfpgan_Adele_crop.png"))), (160, 160),
                     interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(cv2.copyMakeBorder(bgr, 40, 40, 30, 30, cv2.BORDER_REFLECT)[..., ::-1])


def _tiny_models(folder: Path) -> None:
    """Random-weight files in the official layouts: a tiny iDDPM prior (named as DifFace's) and a one-unit-per-stage
    arcface_torch IResNet (iresnet18 halved, for speed)."""
    from bfr_core.archs.iddpm_unet import TINY_CONFIG, IDDPMUNet
    from bfr_core.identity import IResNet

    torch.manual_seed(0)
    torch.save({"module." + k: v for k, v in IDDPMUNet(TINY_CONFIG).state_dict().items()}, folder / PRIOR)
    torch.save(IResNet((1, 1, 1, 1)).state_dict(), folder / "backbone.pth")


def test_registers_once_with_settings(webui):
    from modules import script_callbacks, shared

    assert [r.name() for r in shared.face_restorers] == ["DifFace (BFR)"]
    assert isinstance(shared.face_restorers[0], sys.modules["modules.face_restoration"].FaceRestoration)
    for callback in script_callbacks.ui_settings_callbacks:
        callback()
    assert shared.opts.bfr_strength == 0.4 and shared.opts.bfr_steps == 20
    assert shared.opts.bfr_recognizer == "none" and shared.opts.bfr_commercial_only is False
    labels = shared.opts.data_labels
    assert labels["bfr_prior"].section == ("bfr_difface", "DifFace (BFR)")
    assert labels["bfr_identity_mask"].component_args == {"choices": ["features", "none"]}
    for key in webui.SETTINGS:
        # The settings page builds a component per option; with none given, A1111 picks it by the default's type and
        # refuses any type but str, int and bool (ui_settings.create_setting_component).
        info = labels[key]
        assert info.component is not None or type(info.default) in (str, int, bool), key
    webui.__spec__.loader.exec_module(webui)  # a script reload does not register it twice
    assert len(shared.face_restorers) == 1


def test_restore_uint8_rgb_through_restore_faces(webui, photo):
    from modules import face_restoration, shared

    shared.opts.face_restoration_model = "DifFace (BFR)"
    shared.opts.bfr_prior = str(shared_path("models/tiny_ddpm_lfw32"))
    shared.opts.bfr_restorer = "none"
    shared.opts.bfr_strength = 0.3
    shared.opts.bfr_steps = 2
    shared.opts.face_restoration_unload = True
    out = face_restoration.restore_faces(photo)
    assert out.dtype == np.uint8 and out.shape == photo.shape
    diff = np.abs(out.astype(int) - photo.astype(int)).max(axis=2)
    assert diff.max() > 10 and (diff > 0).mean() < 0.5  # the face was re-generated, only the face
    again = face_restoration.restore_faces(photo)  # models cached, same seed: same result
    assert np.array_equal(again, out)


def test_a_missing_model_leaves_the_image_unchanged(webui, caplog):
    from modules import shared

    shared.opts.bfr_prior, shared.opts.bfr_restorer = "nope.pth", "none"
    rgb = np.zeros((64, 64, 3), np.uint8)
    assert shared.face_restorers[0].restore(rgb) is rgb
    assert "unable to restore (model file not found: nope.pth" in caplog.text


def test_settings_exist_without_the_settings_page(webui):
    """API-only (`--nowebui`): the web UI runs no ui_settings callbacks, so the script registers its settings when it
    loads (else POST /sdapi/v1/options refuses bfr_* with a KeyError, as seen in a running Forge)."""
    from modules import script_callbacks, shared

    assert shared.opts.data_labels["bfr_prior"].section == ("bfr_difface", "DifFace (BFR)")
    assert shared.opts.bfr_steps == 20 and shared.opts.bfr_identity_end == 0.0
    for callback in script_callbacks.ui_settings_callbacks:  # the settings page, later: the same settings
        callback()
    assert shared.opts.bfr_strength == 0.4


def _face_identity(recognizer, detector, before: np.ndarray, after: np.ndarray) -> torch.Tensor:
    """Embedding of the face of ``after`` at the place the detector finds it in ``before``."""
    from bfr_core.faces.align import align_faces
    from bfr_core.faces.detection.batch import detect_faces

    to_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    crops, faces = align_faces(to_tensor(after), detect_faces(detector, to_tensor(before)), 512)
    assert len(faces) == 1
    return recognizer.embed(crops)


def test_identity_guidance_settings_make_the_library_recipe(webui, portrait, tmp_path, caplog):
    """The settings become the nodes' recipe (IdentitySettings in a FaceRestorer, the reference photo embedded by
    embed_reference_faces) and the guided restore moves the face toward the reference identity — also inside
    torch.inference_mode(), where Forge calls face restorers."""
    from bfr_core.identity.references import embed_reference_faces
    from bfr_core.identity.settings import IdentitySettings
    from bfr_core.io.images import read_image
    from modules import shared

    _tiny_models(tmp_path / "bfr")
    photo = portrait
    reference = shared_path("images/whole/gfpgan_00.jpg")
    shared.opts.bfr_prior, shared.opts.bfr_restorer, shared.opts.bfr_steps = PRIOR, "none", 2
    shared.opts.bfr_strength = 0.5
    restorer = shared.face_restorers[0]
    detector, recipe = restorer.recipe()
    assert recipe.identity is None  # no recognizer set: no guidance
    plain = restorer.restore(photo)

    shared.opts.bfr_recognizer = "backbone.pth"
    shared.opts.bfr_identity_strength, shared.opts.bfr_identity_start, shared.opts.bfr_identity_end = 4.0, 0.9, 0.1
    shared.opts.bfr_identity_mask = "none"
    shared.opts.bfr_identity_reference = str(reference)
    detector, recipe = restorer.recipe()
    settings = recipe.identity
    assert isinstance(settings, IdentitySettings) and recipe.prior is not None and recipe.steps == 2
    assert (settings.strength, settings.start, settings.end, settings.mask) == (4.0, 0.9, 0.1, "none")
    recognizer = settings.recognizer
    assert recognizer.arch == "iresnet(1,1,1,1)" and recognizer.path.endswith("backbone.pth")
    want = embed_reference_faces(recognizer, read_image(reference).rgb[None], detector)
    torch.testing.assert_close(settings.reference, want)
    with torch.inference_mode():
        guided = restorer.restore(photo)
    assert guided.shape == photo.shape and not np.array_equal(guided, plain)
    target = want.mean(0, keepdim=True)
    sims = [float((_face_identity(recognizer, detector, photo, x) * target).sum()) for x in (plain, guided)]
    assert sims[1] > sims[0] + 0.01, sims

    shared.opts.bfr_identity_reference = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="identity reference photo not found"):
        restorer.recipe()
    shared.opts.bfr_identity_reference = ""
    shared.opts.bfr_identity_start, shared.opts.bfr_identity_end = 0.2, 0.5
    with pytest.raises(ValueError, match="end must not be larger than start"):
        restorer.recipe()
    shared.opts.bfr_identity_start, shared.opts.bfr_prior = 1.0, "none"
    assert restorer.recipe()[1].identity is None  # guidance steers a prior: none without one, and the log says so
    assert "identity guidance steers the diffusion prior, and the prior is 'none'" in caplog.text


def _extras(webui):
    """The Extras tab as the web UI builds it from the script file: the registered ScriptPostprocessing classes."""
    from modules import scripts, scripts_postprocessing

    scripts.register_scripts_from_module(webui, webui.__file__, str(ROOT))
    found = [d.script_class for d in scripts.postprocessing_scripts_data]
    assert found == [webui.BFRExtras]  # only ours: the module holds no other ScriptPostprocessing class
    assert not scripts.scripts_data
    return scripts_postprocessing.ScriptPostprocessingRunner(found)


def test_extras_tab_restores_with_its_own_strength_and_visibility(webui, photo):
    from modules import scripts_postprocessing, shared, ui_components

    shared.opts.face_restoration_model = "CodeFormer"  # the global choice does not matter to the Extras tab
    shared.opts.bfr_prior = str(shared_path("models/tiny_ddpm_lfw32"))
    shared.opts.bfr_restorer, shared.opts.bfr_steps, shared.opts.bfr_strength = "none", 2, 0.9
    runner = _extras(webui)
    controls = runner.scripts[0].controls
    assert list(controls) == ["enable", "bfr_visibility", "bfr_strength"]
    assert isinstance(controls["enable"], ui_components.InputAccordionImpl) and controls["enable"].value is False
    assert controls["bfr_visibility"].value == 1.0 and controls["bfr_strength"].value == 0.4

    def run(image, enable=True, visibility=1.0, strength=0.3):
        pp = scripts_postprocessing.PostprocessedImage(image)
        runner.run(pp, [enable, visibility, strength])
        return pp

    source = Image.fromarray(photo)
    full = run(source)
    assert full.info == {"DifFace (BFR) visibility": 1.0, "DifFace (BFR) strength": 0.3}
    restored = np.asarray(full.image)
    assert np.array_equal(restored, shared.face_restorers[0].run(photo, 0.3))  # the restorer, at the slider's strength
    assert not np.array_equal(restored, shared.face_restorers[0].run(photo))  # not the settings' 0.9
    # Visibility blends over the original; transparency passes through.
    rgba = source.copy()
    rgba.putalpha(Image.fromarray(np.tile((np.arange(350) % 256).astype(np.uint8)[None], (232, 1))))
    half = run(rgba, visibility=0.5)
    assert half.image.mode == "RGBA" and half.image.getchannel("A").tobytes() == rgba.getchannel("A").tobytes()
    blended = np.asarray(Image.blend(source, full.image, 0.5))
    assert np.array_equal(np.asarray(half.image.convert("RGB")), blended)
    assert half.info["DifFace (BFR) visibility"] == 0.5
    # Strength 0 without a backbone: the faces are pasted back as they were (up to resampling).
    near = np.abs(np.asarray(run(source, strength=0.0).image, dtype=int) - photo).mean()
    assert near < 0.5 * np.abs(restored.astype(int) - photo).mean()
    for off in (run(source, enable=False), run(source, visibility=0.0)):
        assert off.image is source and off.info == {}
    # The API's extras endpoints fill only the built-in scripts' arguments: ours arrive as None, meaning off.
    pp = scripts_postprocessing.PostprocessedImage(source)
    runner.run(pp, runner.create_args_for_run({"CodeFormer": {"enable": True}}))
    assert pp.image is source


def test_commercial_only_refuses_non_commercial_files_everywhere(webui, portrait, tmp_path, caplog, monkeypatch):
    from modules import scripts_postprocessing, shared

    photo = portrait
    _tiny_models(tmp_path / "bfr")
    shared.opts.bfr_prior, shared.opts.bfr_restorer, shared.opts.bfr_steps = PRIOR, "none", 2
    restorer = shared.face_restorers[0]
    assert not np.array_equal(restorer.restore(photo), photo)  # allowed, and now loaded
    runner = _extras(webui)
    for switch_on in (lambda: setattr(shared.opts, "bfr_commercial_only", True),
                      lambda: monkeypatch.setenv("BFR_COMMERCIAL_ONLY", "1")):
        shared.opts.bfr_commercial_only = False
        monkeypatch.delenv("BFR_COMMERCIAL_ONLY", raising=False)
        switch_on()  # after the prior was loaded: refused all the same
        caplog.clear()
        assert restorer.restore(photo) is photo
        message = f"commercial-only mode: {PRIOR} is licensed S-Lab License 1.0 (non-commercial)"
        assert message in caplog.text and "Traceback" not in caplog.text
        pp = scripts_postprocessing.PostprocessedImage(Image.fromarray(photo))
        with pytest.raises(RuntimeError, match=re.escape(f"DifFace (BFR): {message}")):
            runner.run(pp, [True, 1.0, 0.4])
    shared.opts.bfr_prior = "none"  # the backbone alone ('none' here): nothing non-commercial left
    shared.opts.bfr_restorer = "none"
    caplog.clear()
    restorer.restore(photo)
    assert "commercial-only" not in caplog.text


def test_interrupt_stops_the_restore(webui, portrait, caplog):
    from modules import scripts_postprocessing, shared

    photo = portrait
    shared.opts.bfr_prior = str(shared_path("models/tiny_ddpm_lfw32"))
    shared.opts.bfr_restorer, shared.opts.bfr_steps = "none", 2
    shared.state.interrupt()
    assert shared.face_restorers[0].restore(photo) is photo and "interrupted" in caplog.text
    pp = scripts_postprocessing.PostprocessedImage(Image.fromarray(photo))
    source = pp.image
    _extras(webui).run(pp, [True, 1.0, 0.4])
    assert pp.image is source and pp.info == {}


def test_extras_ui_before_input_accordions(webui, monkeypatch):
    """A1111 before 1.7 has no ui_components.InputAccordion: the enable box is a plain checkbox, off."""
    import gradio
    from modules import ui_components

    monkeypatch.delattr(ui_components, "InputAccordion")
    controls = webui.BFRExtras().ui()
    assert type(controls["enable"]) is gradio.Checkbox and controls["enable"].value is False
    assert controls["enable"].label == "DifFace (BFR)" and list(controls)[1:] == ["bfr_visibility", "bfr_strength"]
