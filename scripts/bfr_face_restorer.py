"""Automatic1111 / Forge extension entry: "DifFace (BFR)" in Settings → Face restoration, and in the Extras tab.

A1111 runs every ``scripts/*.py`` of an extension at start-up, after its built-in face restorers (CodeFormer,
GFPGAN) are registered; appending to ``modules.shared.face_restorers`` here puts this one in the settings radio,
whose choices are read when the UI is built. ``restore(np_image)`` takes and returns uint8 HWC RGB (A1111's
contract) and runs the library's recipe: ``bfr_core.restore_images`` with a ``FaceRestorer`` (no facexlib helper),
with identity guidance (``IdentitySettings``) when a recognizer is set — what the ComfyUI nodes build too.

The web UI also collects every ``scripts_postprocessing.ScriptPostprocessing`` subclass defined in a script file
(by scanning the module's names: so this file imports modules, never such classes) into the Extras tab:
`BFRExtras` runs the same restorer there with its own enable box, strength and visibility (restored blended over
the original), whatever face restorer the settings select.

Settings (``shared.opts``, section "DifFace (BFR)"): the prior / backbone / detector / recognizer file names
(looked up in ``<webui>/models/bfr``, then ``$BFR_MODELS_DIR``), strength, steps, identity guidance, and a
commercial-only switch (as ``$BFR_COMMERCIAL_ONLY=1``, which applies too); A1111's own "move face restoration model
to RAM after processing" (``face_restoration_unload``) is honoured. Read against AUTOMATIC1111/stable-diffusion-webui
v1.x (``modules/face_restoration.py``, ``modules/face_restoration_utils.py``, ``modules/shared_options.py``,
``modules/scripts_postprocessing.py``) and Forge (commit dfdcbab6: the same modules, and
``modules_forge.utils.prepare_free_memory``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, NamedTuple

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # the extension folder holds bfr_core; A1111 does not put it on sys.path
    sys.path.append(_ROOT)

from modules import devices, face_restoration, scripts_postprocessing, shared  # noqa: E402

log = logging.getLogger("bfr_a1111")
NAME = "DifFace (BFR)"
SECTION = ("bfr_difface", NAME)
NO_FILE = ("", "none")


class Setting(NamedTuple):
    default: Any
    label: str
    component: str | None = None  # a gradio class name; None: A1111 picks one by the default's type (str, bool)
    args: dict | None = None


_FRACTION = {"minimum": 0.0, "maximum": 1.0, "step": 0.01}
# Appended only: saved settings (config.json) and API calls use these keys.
SETTINGS = {
    "bfr_prior": Setting("iddpm_ffhq512_ema500000.pth", "Diffusion prior file (models/bfr) or diffusers UNet folder; "
                         "'none': the backbone alone"),
    "bfr_restorer": Setting("swinir_restoration512_L1.pth", "Restoration backbone file (models/bfr); 'none': the "
                            "crop itself"),
    "bfr_detector": Setting("face_detection_yunet_2023mar.onnx", "Face detector file (models/bfr)"),
    "bfr_strength": Setting(0.4, "Strength (0 = backbone only, 0.4 = DifFace, 1 = generate)", "Slider",
                            {"minimum": 0.0, "maximum": 1.0, "step": 0.05}),
    "bfr_steps": Setting(20, "Denoising steps", "Slider", {"minimum": 1, "maximum": 100, "step": 1}),
    "bfr_recognizer": Setting("none", "Identity guidance: face recognizer file (models/bfr), e.g. "
                              "recognition_arcface_ir_se50.pth (facexlib, MIT); 'none': no identity guidance"),
    "bfr_identity_strength": Setting(1.0, "Identity guidance strength (0 = off; 1 = a gentle pull; above ~4 can "
                                     "overshoot)", "Slider", {"minimum": 0.0, "maximum": 10.0, "step": 0.05}),
    "bfr_identity_start": Setting(1.0, "Identity guidance from timestep (fraction of T; 1 = from the first step)",
                                  "Slider", _FRACTION),
    "bfr_identity_end": Setting(0.0, "Identity guidance until timestep (fraction of T; 0 = to the last step)",
                                "Slider", _FRACTION),
    "bfr_identity_mask": Setting("features", "Identity guidance changes the eyes, nose and mouth (features) or the "
                                 "whole face (none)", "Radio", {"choices": ["features", "none"]}),
    "bfr_identity_reference": Setting("", "Identity guidance toward the person in this photo (file path; empty: "
                                      "keep each face's own identity)"),
    "bfr_commercial_only": Setting(False, "Commercial use only: refuse model files licensed non-commercially (DifFace's "
                                   "prior and SwinIR, insightface recognizers)"),
}


def _opt(key: str):
    value = getattr(shared.opts, key, None)
    return SETTINGS[key].default if value is None else value


def _models_dir() -> str | None:
    try:
        from modules.paths import models_path
    except ImportError:
        return None
    return os.path.join(models_path, "bfr")


def _device():
    device = getattr(devices, "device_codeformer", None)  # A1111's device for face restorers
    return device if device is not None else devices.get_optimal_device()


def _free_memory() -> None:
    """Forge: make room in its memory manager before moving our networks to the GPU (A1111 has no such call)."""
    try:
        from modules_forge.utils import prepare_free_memory
    except ImportError:
        return
    prepare_free_memory()


class Interrupted(Exception):
    """The user pressed Interrupt in the web UI while faces were being restored."""


def _check_interrupt(done: int, total: int) -> None:
    # Called per denoising step: a restore takes minutes on a CPU, A1111's Interrupt button must stop it.
    if getattr(getattr(shared, "state", None), "interrupted", False):
        raise Interrupted


class BFRFaceRestoration(face_restoration.FaceRestoration):
    def __init__(self) -> None:
        super().__init__()
        self._models: dict[str, tuple[str, Any]] = {}  # setting key → (file, loaded model)
        self._reference: tuple[tuple, Any] | None = None  # (recognizer file, photo, mtime) → embedding [1, D]

    def name(self):
        return NAME

    def _model(self, key: str, loader, commercial_only: bool | None):
        """The model file named by setting ``key`` (None for 'none'), loaded once per file; its licence is checked on
        every call, since the commercial-only switch may be turned on after loading."""
        from bfr_core.models.files import check_licence, resolve_model

        name = str(_opt(key)).strip()
        if name.lower() in NO_FILE:
            return None
        path = str(resolve_model(name, _models_dir()))
        check_licence(path, commercial_only)
        if self._models.get(key, (None,))[0] != path:
            self._models.pop(key, None)  # the old model goes before the new one loads
            self._models[key] = (path, loader(path))
        return self._models[key][1]

    def _identity(self, detector, commercial_only: bool | None):
        """`IdentitySettings` from the settings (None without a recognizer or at strength 0), as the nodes build."""
        from bfr_core.identity import load_recognizer
        from bfr_core.identity.settings import IdentitySettings

        strength = float(_opt("bfr_identity_strength"))
        recognizer = None if strength == 0 else self._model("bfr_recognizer", load_recognizer, commercial_only)
        if recognizer is None:
            return None
        settings = IdentitySettings(recognizer, strength, float(_opt("bfr_identity_start")),
                                    float(_opt("bfr_identity_end")), str(_opt("bfr_identity_mask")))
        photo = str(_opt("bfr_identity_reference")).strip()
        if photo:
            settings.reference = self._reference_embedding(recognizer, detector, photo)
        return settings

    def _reference_embedding(self, recognizer, detector, photo: str):
        from bfr_core.identity.references import embed_reference_faces
        from bfr_core.io.images import read_image

        if not os.path.isfile(photo):
            raise FileNotFoundError(f"identity reference photo not found: {photo} (setting 'Identity guidance toward "
                                    f"the person in this photo'; empty: keep each face's own identity)")
        key = (recognizer.path, os.path.abspath(photo), os.path.getmtime(photo))
        if self._reference is None or self._reference[0] != key:
            try:
                embedding = embed_reference_faces(recognizer, read_image(photo).rgb[None], detector).cpu()
            except ValueError as exc:
                raise ValueError(f"identity reference photo {photo}: {exc}") from exc
            self._reference = (key, embedding)
        return self._reference[1]

    def recipe(self, strength: float | None = None):
        """(detector, `FaceRestorer`) from the settings, models loaded on the CPU (cached); ``strength`` overrides the
        setting (the Extras tab's slider). Raises what stops it: a missing file, a licence refusal, a bad value."""
        from bfr_core.diffusion.loading import load_prior
        from bfr_core.faces.detection.loading import load_detector
        from bfr_core.restoration.backbones import load_restorer
        from bfr_core.restoration.restorer import FaceRestorer

        commercial_only = True if _opt("bfr_commercial_only") else None  # None: $BFR_COMMERCIAL_ONLY decides
        detector = self._model("bfr_detector", load_detector, commercial_only)
        if detector is None:
            raise ValueError("no face detector: set 'Face detector file' (e.g. face_detection_yunet_2023mar.onnx)")
        backbone = self._model("bfr_restorer", load_restorer, commercial_only)
        prior = self._model("bfr_prior", load_prior, commercial_only)
        identity = None
        if prior is not None:
            identity = self._identity(detector, commercial_only)
        elif str(_opt("bfr_recognizer")).strip().lower() not in NO_FILE:
            log.warning("%s: identity guidance steers the diffusion prior, and the prior is 'none': no guidance", NAME)
        strength = float(_opt("bfr_strength") if strength is None else strength)
        return detector, FaceRestorer(prior, backbone, strength=strength, steps=int(_opt("bfr_steps")),
                                      identity=identity, progress=_check_interrupt)

    def _place(self, restorer, detector, device) -> None:
        import torch

        device = torch.device(device)
        if hasattr(restorer.prior, "to"):
            restorer.prior.to(device)  # its network and schedule tensors
        for module in restorer.modules():
            module.to(device)
        if hasattr(detector, "to"):  # RetinaFace; YuNet runs in OpenCV on the CPU
            detector.to(device)

    def run(self, np_image, strength: float | None = None):
        """Restore the faces of a uint8 HWC RGB(A) image (alpha kept) with the settings' models; raises on failure
        (`restore` is A1111's forgiving entry, the Extras tab reports errors)."""
        import numpy as np
        import torch

        from bfr_core.restoration.pipeline import restore_images

        # Forge restores inside torch.inference_mode(): identity guidance needs autograd, and models loaded in
        # inference mode could never take part in it.
        with torch.inference_mode(False):
            detector, restorer = self.recipe(strength)
            device = _device()
            if torch.device(device).type != "cpu":
                _free_memory()
            try:
                self._place(restorer, detector, device)
                hwc = np.array(np_image, dtype=np.uint8)  # a copy: PIL's arrays are read-only
                image = torch.from_numpy(hwc.reshape(*hwc.shape[:2], -1)).to(device)  # gray: one channel
                image = image.permute(2, 0, 1)[None].float() / 255.0
                with torch.no_grad():  # guidance turns gradients on where it needs them
                    result = restore_images(image, detector, restorer)
                out = (result.images[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0)
                return out.cpu().numpy().reshape(hwc.shape)
            finally:
                if getattr(shared.opts, "face_restoration_unload", False):
                    self._place(restorer, detector, devices.cpu)
                devices.torch_gc()

    def restore(self, np_image):
        from bfr_core.models.files import LicenceError

        try:
            return self.run(np_image)
        except Interrupted:
            log.warning("%s: interrupted; image left unchanged", NAME)
        except LicenceError as exc:  # the user's own switch: say why, not a traceback
            log.error("%s: %s Image left unchanged.", NAME, exc)
        except Exception as exc:  # as A1111's own restorers: a model that cannot load leaves the image as it is
            log.warning("%s: unable to restore (%s); image left unchanged", NAME, exc, exc_info=True)
        return np_image


class BFRExtras(scripts_postprocessing.ScriptPostprocessing):
    """Extras tab: the restorer with its own strength, blended over the original by visibility."""

    name = NAME
    order = 3100  # after A1111's GFPGAN (2000) and CodeFormer (3000)

    def ui(self):
        import gradio as gr

        with _enable_box() as enable:
            with gr.Row():
                visibility = gr.Slider(minimum=0.0, maximum=1.0, step=0.001, value=1.0, label="Visibility",
                                       elem_id="extras_bfr_visibility")
                strength = gr.Slider(minimum=0.0, maximum=1.0, step=0.05, value=SETTINGS["bfr_strength"].default,
                                     label="Strength (0 = backbone only, 0.4 = DifFace, 1 = generate)",
                                     elem_id="extras_bfr_strength")
        return {"enable": enable, "bfr_visibility": visibility, "bfr_strength": strength}

    def process(self, pp: scripts_postprocessing.PostprocessedImage, enable=False, bfr_visibility=1.0,
                bfr_strength=None):
        # The API's extras endpoints fill only the built-in scripts' arguments: ours come as None (off).
        if not enable or not bfr_visibility:
            return
        import numpy as np
        from PIL import Image

        source = pp.image.convert("RGB")
        try:
            restored = Image.fromarray(_restorer().run(np.asarray(source), bfr_strength))
        except Interrupted:
            return
        except Exception as exc:  # shown in the web UI (its call wrapper reports exceptions)
            raise RuntimeError(f"{NAME}: {exc}") from exc
        if bfr_visibility < 1.0:
            restored = Image.blend(source, restored, float(bfr_visibility))
        if pp.image.mode == "RGBA":  # transparency is not the faces' business
            restored.putalpha(pp.image.getchannel("A"))
        pp.image = restored
        pp.info[f"{NAME} visibility"] = round(float(bfr_visibility), 3)
        pp.info[f"{NAME} strength"] = round(float(_opt("bfr_strength") if bfr_strength is None else bfr_strength), 3)


def _enable_box():
    """A1111 ≥ 1.7 and Forge: an accordion that is also the enable checkbox (as their GFPGAN/CodeFormer scripts)."""
    try:
        from modules.ui_components import InputAccordion
    except ImportError:
        import gradio as gr

        return contextlib.nullcontext(gr.Checkbox(False, label=NAME))
    return InputAccordion(False, label=NAME)


def _restorer() -> BFRFaceRestoration:
    return next(r for r in shared.face_restorers if r.name() == NAME)


def _on_ui_settings() -> None:
    import gradio as gr

    for key, s in SETTINGS.items():
        component = getattr(gr, s.component) if s.component else None
        shared.opts.add_option(key, shared.OptionInfo(s.default, s.label, component, s.args, section=SECTION))


if not any(r.name() == NAME for r in shared.face_restorers):  # a script reload must not add it twice
    shared.face_restorers.append(BFRFaceRestoration())
try:  # now as well: API-only (--nowebui) runs no ui_settings callbacks, and /sdapi/v1/options would refuse bfr_*
    _on_ui_settings()
except ImportError:  # no gradio: not inside a web UI
    pass
try:
    from modules import script_callbacks

    script_callbacks.on_ui_settings(_on_ui_settings)
except ImportError:
    pass
