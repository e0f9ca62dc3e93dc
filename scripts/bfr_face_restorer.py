"""Automatic1111 / Forge extension entry: "DifFace (BFR)" in Settings → Face restoration.

A1111 runs every ``scripts/*.py`` of an extension at start-up, after its built-in face restorers (CodeFormer,
GFPGAN) are registered; appending to ``modules.shared.face_restorers`` here puts this one in the settings radio,
whose choices are read when the UI is built. ``restore(np_image)`` takes and returns uint8 HWC RGB (A1111's
contract) and runs the library's recipe: ``bfr_core.restore_images`` with a ``FaceRestorer`` (no facexlib helper).

Settings (``shared.opts``, section "DifFace (BFR)"): the prior / backbone / detector file names (looked up in
``<webui>/models/bfr``, then ``$BFR_MODELS_DIR``), strength and steps; A1111's own "move face restoration model
to RAM after processing" (``face_restoration_unload``) is honoured. ``$BFR_COMMERCIAL_ONLY=1`` applies (every
loader checks it). Read against AUTOMATIC1111/stable-diffusion-webui v1.x (``modules/face_restoration.py``,
``modules/face_restoration_utils.py``, ``modules/shared_options.py``) and Forge's
``modules_forge.utils.prepare_free_memory``.
"""
from __future__ import annotations

import logging
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # the extension folder holds bfr_core; A1111 does not put it on sys.path
    sys.path.append(_ROOT)

from modules import devices, face_restoration, shared  # noqa: E402

log = logging.getLogger("bfr_a1111")
NAME = "DifFace (BFR)"
SECTION = ("bfr_difface", NAME)
# key: (default, label, slider args or None)
SETTINGS = {
    "bfr_prior": ("iddpm_ffhq512_ema500000.pth", "Diffusion prior file (models/bfr) or diffusers UNet folder; "
                  "'none': the backbone alone", None),
    "bfr_restorer": ("swinir_restoration512_L1.pth", "Restoration backbone file (models/bfr); 'none': the crop "
                     "itself", None),
    "bfr_detector": ("face_detection_yunet_2023mar.onnx", "Face detector file (models/bfr)", None),
    "bfr_strength": (0.4, "Strength (0 = backbone only, 0.4 = DifFace, 1 = generate)",
                     {"minimum": 0.0, "maximum": 1.0, "step": 0.05}),
    "bfr_steps": (20, "Denoising steps", {"minimum": 1, "maximum": 100, "step": 1}),
}


def _opt(key: str):
    value = getattr(shared.opts, key, None)
    return SETTINGS[key][0] if value is None else value


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


class BFRFaceRestoration(face_restoration.FaceRestoration):
    def __init__(self) -> None:
        super().__init__()
        self._key = None
        self._detector = None
        self._restorer = None

    def name(self):
        return NAME

    def _load(self):
        from bfr_core.diffusion.loading import load_prior
        from bfr_core.faces.detection.loading import load_detector
        from bfr_core.models.files import resolve_model
        from bfr_core.restoration.backbones import load_restorer
        from bfr_core.restoration.restorer import FaceRestorer

        key = tuple(_opt(k) for k in SETTINGS)
        if key == self._key:
            return
        prior_name, restorer_name, detector_name, strength, steps = key
        models_dir = _models_dir()
        self._detector = load_detector(resolve_model(detector_name, models_dir))
        backbone = None if str(restorer_name).strip().lower() in ("", "none") else load_restorer(
            resolve_model(restorer_name, models_dir))
        prior = None if str(prior_name).strip().lower() in ("", "none") else load_prior(
            resolve_model(prior_name, models_dir))
        self._restorer = FaceRestorer(prior, backbone, strength=float(strength), steps=int(steps))
        self._key = key

    def _place(self, device) -> None:
        import torch

        device = torch.device(device)
        if hasattr(self._restorer.prior, "to"):
            self._restorer.prior.to(device)  # its network and schedule tensors
        for module in self._restorer.modules():
            module.to(device)
        if hasattr(self._detector, "to"):  # RetinaFace; YuNet runs in OpenCV on the CPU
            self._detector.to(device)

    def restore(self, np_image):
        import numpy as np
        import torch

        try:
            self._load()
        except Exception:  # as A1111's own restorers: a model that cannot load leaves the image as it is
            log.warning("%s: unable to load the models; image left unchanged", NAME, exc_info=True)
            return np_image
        device = _device()
        if torch.device(device).type != "cpu":
            _free_memory()
        from bfr_core.restoration.pipeline import restore_images

        try:
            self._place(device)
            image = torch.from_numpy(np.ascontiguousarray(np_image[..., :3])).to(device)
            image = image.permute(2, 0, 1)[None].float() / 255.0
            with torch.no_grad():
                result = restore_images(image, self._detector, self._restorer)
            out = (result.images[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0)
            return out.cpu().numpy()
        finally:
            if getattr(shared.opts, "face_restoration_unload", False):
                self._place(devices.cpu)
            devices.torch_gc()


def _on_ui_settings() -> None:
    import gradio as gr

    for key, (default, label, slider) in SETTINGS.items():
        info = (shared.OptionInfo(default, label, gr.Slider, slider, section=SECTION) if slider else
                shared.OptionInfo(default, label, section=SECTION))
        shared.opts.add_option(key, info)


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
