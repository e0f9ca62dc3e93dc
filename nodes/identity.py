"""Identity nodes: face recognizer loader, identity guidance settings, face similarity."""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from ..bfr_core.identity import load_recognizer
from ..bfr_core.identity.recognizers import (DEFAULT_RECOGNIZER, DEFAULT_RECOGNIZER_FOLDER, FOLDER_HINT,
                                             recognizer_spellings)
from ..bfr_core.identity.guidance import check_guidance_settings
from ..bfr_core.identity.references import embed_reference_faces
from ..bfr_core.identity.settings import IdentitySettings
from ..bfr_core.utils.layout import split_alpha
from .comfy_glue import list_models, model_path, resolve_dtype, to_bchw
from .memory import ARCFACE_SIZE, activation_bytes, manage, models_loaded
from .schema import Detector, Guidance, Recognizer, checked, node_schema

RECOGNIZER_FOLDERS = ("insightface", "facerestore_models")
RECOGNIZER_SUFFIXES = (".onnx", ".pth", ".pt", ".safetensors")
DEFAULT_CHOICE = f"{DEFAULT_RECOGNIZER_FOLDER}:{DEFAULT_RECOGNIZER}"


def _recognizer_files() -> list[str]:
    """`folder:file` entries: ONNX/torch files in models/insightface, ArcFace-named files in facerestore_models.

    The default (facexlib's MIT IR-SE50 in facerestore_models) comes first. A file in insightface's own layout
    (`models/insightface/models/<pack>/<file>`) is also listed as `insightface:<pack>/<file>`, the spelling
    workflows saved by earlier versions hold, so they still validate; both spellings load the same file.
    """
    insight = list_models("insightface", RECOGNIZER_SUFFIXES)
    out = {f"insightface:{f}" for f in insight}
    out |= {f"insightface:{recognizer_spellings(f)[1]}" for f in insight if f.startswith("models/")}
    out |= {f"facerestore_models:{f}" for f in list_models("facerestore_models", RECOGNIZER_SUFFIXES)
            if looks_like_recognizer(f)}
    if not out:  # a placeholder that says what to put where; loading it names the folder
        return [DEFAULT_CHOICE]
    return sorted(out, key=lambda c: (c != DEFAULT_CHOICE, not c.endswith("/" + DEFAULT_RECOGNIZER), c))


def recognizer_path(model_name: str) -> str:
    """Absolute path of a `folder:file` choice, trying both insightface layouts (and both folders for a bare
    file name, as API callers may send); a clear error naming the folders when the file is in none."""
    folder, sep, name = model_name.partition(":")
    if not sep:
        folder, name = "", model_name
    folders = [folder] if folder else list(RECOGNIZER_FOLDERS)
    for f in folders:
        names = recognizer_spellings(name) if f == "insightface" else [name]
        for n in names:
            try:
                return model_path(f, n)
            except FileNotFoundError:
                continue
    where = " or ".join(f"ComfyUI/models/{f}" for f in folders)
    raise FileNotFoundError(f"face recognizer {name} not found in {where}. {FOLDER_HINT} Put the file there and "
                            f"refresh (R) the page.")


def _embed_memory(recognizer, faces: int) -> int:
    return activation_bytes(recognizer, faces, ARCFACE_SIZE, ARCFACE_SIZE)


def looks_like_recognizer(name: str) -> bool:
    """ArcFace files by their usual names; they share models/facerestore_models with priors and backbones."""
    base = os.path.basename(name).lower()
    return any(k in base for k in ("arcface", "recognition", "backbone", "glint", "w600k"))


class BFRLoadFaceRecognizer(io.ComfyNode):
    SEARCH = ("arcface", "insightface", "identity", "face recognition")

    @classmethod
    def define_schema(cls) -> io.Schema:
        files = _recognizer_files()
        return node_schema(
            "BFRLoadFaceRecognizer", "BFR Load Face Recognizer",
            "Loads an ArcFace face recognizer for identity guidance and similarity: facexlib's "
            "recognition_arcface_ir_se50.pth in models/facerestore_models (MIT, the default), insightface ONNX models "
            "you keep for other packs (antelopev2/glintr100.onnx, buffalo_l/w600k_r50.onnx in "
            "models/insightface/<pack>/ or models/insightface/models/<pack>/; non-commercial) or an arcface_torch "
            "backbone.pth (iresnet18-100). ONNX files are converted to PyTorch so gradients flow (needs the optional "
            "onnx package).",
            inputs=[io.Combo.Input("model_name", options=files, default=files[0],
                                   tooltip="Recognizer file. Default: facexlib's recognition_arcface_ir_se50.pth (MIT) "
                                           "in models/facerestore_models. insightface files are found in "
                                           "models/insightface/<pack>/ and models/insightface/models/<pack>/."),
                    io.Combo.Input("dtype", options=["fp32", "fp16", "bf16"], default="fp32",
                                   tooltip="Weights precision (fp32 is safe everywhere; half saves memory on GPUs).")],
            outputs=[Recognizer.Output(display_name="recognizer", tooltip="The ArcFace recognizer, for BFR Identity "
                                       "Guidance and BFR Face Similarity.")],
            search=cls.SEARCH)

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        """Any spelling of a file that exists passes (both insightface layouts, a bare file name); a missing one is
        named with the folders to put it in, at queue time, instead of ComfyUI's bare "Value not in list"."""
        return checked(lambda: recognizer_path(model_name), model_name)

    @classmethod
    def execute(cls, model_name: str, dtype: str) -> io.NodeOutput:
        dt = resolve_dtype(dtype)
        # Outside inference mode: guidance back-propagates through these weights, and tensors made under
        # ComfyUI's torch.inference_mode() cannot be saved for backward.
        with torch.inference_mode(False):
            return io.NodeOutput(manage(load_recognizer(recognizer_path(model_name), device="cpu", dtype=dt)))


class BFRIdentityGuidance(io.ComfyNode):
    SEARCH = ("identity", "clr-face", "arcface", "keep identity")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRIdentityGuidance", "BFR Identity Guidance",
            "Identity guidance for BFR Diffusion Restore / BFR Restore Faces (CLR-Face idea): during sampling, the "
            "face recognizer's gradient pulls each predicted face toward a target identity, only inside a mask (eyes, "
            "nose, mouth by default). Target: the backbone's estimate of the same face (blind), or the mean identity "
            "of reference photos.",
            inputs=[
                Recognizer.Input("recognizer", tooltip="From BFR Load Face Recognizer."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="How hard identity is pushed each step (0 = off; 1 = a visible but gentle pull; "
                                       "above ~4 can overshoot)."),
                io.Float.Input("start", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Guide steps with timestep ≤ start × 1000 (in strength units: with restore "
                                       "strength 0.4, start ≥ 0.4 guides from the first step)."),
                io.Float.Input("end", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Stop guiding below timestep end × 1000 (must be below start)."),
                io.Combo.Input("mask_mode", options=["features", "none"], default="features",
                               tooltip="Confine the correction to eyes, nose and mouth (features) or apply it "
                                       "everywhere (none). A MASK input overrides this."),
                io.Float.Input("fidelity", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Also pull each step toward the backbone's estimate inside the mask "
                                       "(PGDiff-style); 0 = off."),
                io.Image.Input("reference", optional=True, tooltip="Photos of the person (any size). Unconnected: "
                                                                   "keep the identity of the input itself."),
                Detector.Input("detector", optional=True, tooltip="Detects the face in the reference photos; "
                                                                  "unconnected, the references must already be "
                                                                  "aligned crops."),
                io.Mask.Input("mask", optional=True, tooltip="Crop-space mask (same size as the aligned crops): where "
                                                             "guidance may change the face. One mask for all faces, or "
                                                             "one per face."),
            ],
            outputs=[Guidance.Output(display_name="guidance", tooltip="Identity guidance settings, for the guidance "
                                     "input of BFR Diffusion Restore or BFR Restore Faces.")],
            search=cls.SEARCH)

    @classmethod
    def validate_inputs(cls, start: float, end: float) -> bool | str:
        """end > start (or either outside [0, 1]) is refused before the run, with the library's message. Only
        start and end are declared: declared inputs lose ComfyUI's own min/max check, strength and fidelity keep it."""
        return checked(lambda: check_guidance_settings(strength=0.0, fidelity=0.0, start=start, end=end),
                       start, end)

    @classmethod
    def execute(cls, recognizer, strength, start, end, mask_mode, fidelity=0.0, reference=None, detector=None,
                mask=None) -> io.NodeOutput:
        # Settings first: bad values fail here, before any reference photo is embedded.
        settings = IdentitySettings(recognizer, strength, start, end, mask if mask is not None else mask_mode,
                                    None, fidelity)
        if reference is not None:
            with models_loaded(recognizer, memory_required=_embed_memory(recognizer, reference.shape[0])):
                settings.reference = embed_reference_faces(recognizer, to_bchw(reference).to(recognizer.device),
                                                           detector).cpu()
        return io.NodeOutput(settings)


class BFRFaceSimilarity(io.ComfyNode):
    SEARCH = ("identity", "similarity", "arcface", "compare faces")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRFaceSimilarity", "BFR Face Similarity",
            "Cosine similarity of face identities between two batches of aligned face crops (e.g. input crops and "
            "restored crops): pair i with i, or one face against all. Higher = more alike (same person is typically "
            "> 0.4 with a trained ArcFace).",
            inputs=[Recognizer.Input("recognizer", tooltip="From BFR Load Face Recognizer."),
                    io.Image.Input("faces_a", tooltip="Aligned face crops (BFR Align Faces output or restored crops)."),
                    io.Image.Input("faces_b", tooltip="Aligned face crops to compare with; same count, or one face.")],
            outputs=[io.Float.Output(display_name="similarity", is_output_list=True,
                                     tooltip="Cosine similarity per face pair (a list: one FLOAT per pair)."),
                     io.String.Output(display_name="report",
                                      tooltip="The similarities as text, one line per face and their mean.")],
            search=cls.SEARCH)

    @classmethod
    def execute(cls, recognizer, faces_a, faces_b) -> io.NodeOutput:
        a, b = split_alpha(to_bchw(faces_a))[0], split_alpha(to_bchw(faces_b))[0]
        if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
            raise ValueError(f"faces_a has {a.shape[0]} faces and faces_b {b.shape[0]}: give the same number, or "
                             f"one face to compare with all")
        with models_loaded(recognizer, memory_required=_embed_memory(recognizer, max(a.shape[0], b.shape[0]))), \
                torch.no_grad():
            ea = embed_reference_faces(recognizer, a.to(recognizer.device))
            eb = embed_reference_faces(recognizer, b.to(recognizer.device))
        sims = (ea * eb).sum(1).clamp(-1, 1).float().cpu().tolist()
        lines = [f"face {i}: {s:.4f}" for i, s in enumerate(sims)]
        lines.append(f"mean: {sum(sims) / len(sims):.4f}")
        return io.NodeOutput(sims, "\n".join(lines))
