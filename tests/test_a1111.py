"""scripts/bfr_face_restorer.py as an A1111/Forge extension script, against the stand-ins in tests/a1111_stub that
follow A1111 v1.x's modules (face_restoration, shared, devices, paths, script_callbacks)."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT, shared_path

STUB = str(Path(__file__).parent / "a1111_stub")


@pytest.fixture
def webui(tmp_path, monkeypatch, yunet_path):
    """The stand-in web UI with the extension script loaded as A1111 loads scripts (by file path)."""
    for name in [m for m in sys.modules if m == "modules" or m.startswith("modules.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(STUB)
    import modules.paths
    from modules import shared

    (tmp_path / "bfr").mkdir()
    shutil.copy(yunet_path, tmp_path / "bfr" / yunet_path.name)
    monkeypatch.setattr(modules.paths, "models_path", str(tmp_path))
    monkeypatch.setattr(shared, "face_restorers", [])
    spec = importlib.util.spec_from_file_location("bfr_face_restorer", ROOT / "scripts" / "bfr_face_restorer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_registers_once_with_settings(webui, monkeypatch):
    from modules import script_callbacks, shared

    assert [r.name() for r in shared.face_restorers] == ["DifFace (BFR)"]
    assert isinstance(shared.face_restorers[0], sys.modules["modules.face_restoration"].FaceRestoration)
    gradio = type(sys)("gradio")
    gradio.Slider = object
    monkeypatch.setitem(sys.modules, "gradio", gradio)
    for callback in script_callbacks.ui_settings_callbacks:
        callback()
    assert shared.opts.bfr_strength == 0.4 and shared.opts.bfr_steps == 20
    assert shared.opts.data_labels["bfr_prior"].section == ("bfr_difface", "DifFace (BFR)")
    webui.__spec__.loader.exec_module(webui)  # a script reload does not register it twice
    assert len(shared.face_restorers) == 1


def test_restore_uint8_rgb_through_restore_faces(webui):
    from modules import face_restoration, shared

    shared.opts.face_restoration_model = "DifFace (BFR)"
    shared.opts.bfr_prior = str(shared_path("models/tiny_ddpm_lfw32"))
    shared.opts.bfr_restorer = "none"
    shared.opts.bfr_strength = 0.3
    shared.opts.bfr_steps = 2
    shared.opts.face_restoration_unload = True
    bgr = cv2.imread(str(shared_path("images/whole/gfpgan_Blake_Lively.jpg")))
    rgb = np.ascontiguousarray(cv2.resize(bgr, (350, 232), interpolation=cv2.INTER_AREA)[..., ::-1])
    out = face_restoration.restore_faces(rgb)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    diff = np.abs(out.astype(int) - rgb.astype(int)).max(axis=2)
    assert diff.max() > 10 and (diff > 0).mean() < 0.5  # the face was re-generated, only the face
    again = face_restoration.restore_faces(rgb)  # models cached, same seed: same result
    assert np.array_equal(again, out)


def test_a_missing_model_leaves_the_image_unchanged(webui, caplog):
    from modules import shared

    shared.opts.bfr_prior = "nope.pth"
    rgb = np.zeros((64, 64, 3), np.uint8)
    assert shared.face_restorers[0].restore(rgb) is rgb
    assert "unable to load" in caplog.text


@pytest.fixture
def gradio_stub(monkeypatch):
    gradio = type(sys)("gradio")
    gradio.Slider = object
    monkeypatch.setitem(sys.modules, "gradio", gradio)


def test_settings_exist_without_the_settings_page(gradio_stub, webui):
    """API-only (`--nowebui`): the web UI runs no ui_settings callbacks, so the script registers its settings when it
    loads (else POST /sdapi/v1/options refuses bfr_* with a KeyError, as seen in a running Forge)."""
    from modules import script_callbacks, shared

    assert shared.opts.data_labels["bfr_prior"].section == ("bfr_difface", "DifFace (BFR)")
    assert shared.opts.bfr_steps == 20
    for callback in script_callbacks.ui_settings_callbacks:  # the settings page, later: the same settings
        callback()
    assert shared.opts.bfr_strength == 0.4
