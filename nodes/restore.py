"""Diffusion-prior restoration nodes: prior and backbone loaders, crop restore, all-in-one."""
from __future__ import annotations

import os

import torch

from ..bfr_core.faces.detection import SELECT_MODES
from ..bfr_core.faces.align import align_faces
from ..bfr_core.faces.paste import COLOR_MATCH_MODES, paste_faces
from ..bfr_core.restoration.pipeline import DetectOptions, PasteOptions, crop_masks
from ..bfr_core.utils.layout import merge_alpha, split_alpha
from ..bfr_core.diffusion.loading import load_prior
from ..bfr_core.restoration.backbones import load_restorer
from ..bfr_core.diffusion.timesteps import DEFAULT_STEPS, DEFAULT_STRENGTH, SAMPLERS
from ..bfr_core.restoration.difface import restore_faces
from ..bfr_core.restoration.estimate import backbone_estimate, resize_crops
from .comfy_glue import (StepProgress, list_models, log, model_path, on_device, resolve_dtype, to_bchw,
                         to_bhwc)
from .detect import run_detection
from .identity import looks_like_recognizer

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")
DTYPES = ("auto", "fp32", "fp16", "bf16")
CATEGORY = "face restore/BFR"


def _prior_path(name: str) -> str:
    """A file of a diffusers UNet folder stands for the folder (config.json beside it)."""
    path = model_path("facerestore_models", name)
    folder = os.path.dirname(path)
    if os.path.basename(path).startswith("diffusion_pytorch_model") and os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    return path


def _looks_like_prior(name: str) -> bool:
    """Diffusion priors share models/facerestore_models with backbones; keep them out of the backbone list."""
    base = os.path.basename(name).lower()
    return "iddpm" in base or "ddpm" in base or base.startswith("diffusion_pytorch_model")


class BFRLoadDiffusionPrior:
    DESCRIPTION = ("Loads a face diffusion prior from ComfyUI/models/facerestore_models: DifFace's "
                   "iddpm_ffhq512_ema500000.pth (as released, or converted to .safetensors), or a diffusers "
                   "UNet2DModel folder (pick its diffusion_pytorch_model file).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("BFR_PRIOR",)
    RETURN_NAMES = ("prior",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        # Likely priors first, so the default is one (the folder also holds backbones and recognizers).
        files = sorted(list_models("facerestore_models", WEIGHT_SUFFIXES), key=lambda f: (not _looks_like_prior(f), f))
        files = files or ["iddpm_ffhq512_ema500000.pth"]
        return {"required": {
            "model_name": (files, {"tooltip": "The prior's weights in ComfyUI/models/facerestore_models."}),
            "dtype": (list(DTYPES), {"default": "auto",
                                     "tooltip": "Weights precision. auto: bf16/fp16 on a GPU, fp32 on the CPU."}),
        }}

    def load(self, model_name, dtype):
        return (load_prior(_prior_path(model_name), device="cpu", dtype=resolve_dtype(dtype)),)


class BFRLoadRestorer:
    DESCRIPTION = ("Loads the restoration backbone whose estimate the prior refines: DifFace's "
                   "swinir_restoration512_L1.pth, or GFPGAN v1.4 / RestoreFormer++ files you already have "
                   "(loaded through spandrel). 'none' uses the low-quality crop itself.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("BFR_RESTORER",)
    RETURN_NAMES = ("restorer",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (["none"] + [f for f in list_models("facerestore_models", WEIGHT_SUFFIXES)
                                       if not _looks_like_prior(f) and not looks_like_recognizer(f)],
                           {"tooltip": "Backbone weights in ComfyUI/models/facerestore_models, or none."}),
            "dtype": (list(DTYPES), {"default": "auto", "tooltip": "Weights precision (falls back to fp32 for "
                                                                   "models without half-precision support)."}),
        }}

    def load(self, model_name, dtype):
        if model_name == "none":
            return (load_restorer(None),)
        return (load_restorer(model_path("facerestore_models", model_name), device="cpu", dtype=resolve_dtype(dtype)),)


def _sampling_inputs():
    return {
        "strength": ("FLOAT", {"default": DEFAULT_STRENGTH, "min": 0.0, "max": 1.0, "step": 0.01,
                               "tooltip": "How much the prior re-generates: 0 returns the backbone's estimate, "
                                          "0.4 is DifFace's setting (t=400); higher is more realistic, less "
                                          "faithful."}),
        "steps": ("INT", {"default": DEFAULT_STEPS, "min": 1, "max": 1000,
                          "tooltip": "Denoising steps from the start point to the clean face. DifFace's own "
                                     "setting is 100 DDIM steps; 20 is close in quality and 5x faster."}),
        "sampler": (list(SAMPLERS), {"default": "ddim", "tooltip": "ddim / fast: DDIM (DifFace's sampler) over "
                                                                   "'steps' evenly spaced steps; official: DifFace "
                                                                   "exactly (100 steps at strength 0.4, eta 0.5; "
                                                                   "ignores steps and eta); dpmsolver++: "
                                                                   "deterministic, good at few steps."}),
        "eta": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                          "tooltip": "DDIM noise per step (DifFace: 0.5); ignored by DPM-Solver++."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": True,
                         "tooltip": "Noise seed; face i uses seed + i, so a face's result does not depend on "
                                    "the batch."}),
        "batch_size": ("INT", {"default": 4, "min": 1, "max": 64,
                               "tooltip": "Faces per UNet call; halves itself automatically on out-of-memory."}),
    }


def run_restore(crops_bchw: torch.Tensor, prior, restorer, strength, steps, sampler, eta, seed, batch_size,
                guidance=None):
    """restore_faces with ComfyUI's device, memory, progress and cancel handling.

    With identity guidance the backbone runs once up front: its estimates are both the blind identity
    target and the sampler's input (restore_faces(f(y), restorer=None) ≡ restore_faces(y, restorer=f)).
    """
    modules = [prior.model] + ([restorer] if isinstance(restorer, torch.nn.Module) else [])
    if guidance is not None:
        modules.append(guidance.recognizer.model)
    # Crops stay on the CPU: restore_faces moves one chunk at a time to the models' device and back,
    # so device memory follows batch_size, not the number of faces (video batches).
    crops = crops_bchw.cpu()
    with on_device(*modules, extra_bytes=batch_size * 512 * 512 * 4 * 64):
        hook, size = None, tuple(crops.shape[-2:])
        if guidance is not None:
            # The backbone runs here, at the prior's resolution as inside restore_faces, so that its
            # estimates can also be the blind identity target.
            crops = backbone_estimate(crops, restorer, int(prior.sample_size), batch_size, progress=StepProgress())
            restorer = None
            hook = guidance.build(crops, prior.alphas_cumprod)
        if sampler == "official":  # the preset fixes its own steps and eta
            steps = eta = None
        out = restore_faces(crops, prior, restorer=restorer, strength=strength, steps=steps, sampler=sampler,
                            eta=eta, seed=seed, guidance=hook, batch_size=batch_size, progress=StepProgress())
    return resize_crops(out, size)  # guided runs come back at the prior's size


class BFRDiffusionRestore:
    DESCRIPTION = ("Restores aligned face crops with a diffusion prior (DifFace): the backbone's estimate is "
                   "noised to an intermediate step set by 'strength' and denoised by the prior. All faces of all "
                   "images run batched.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("crops",)
    OUTPUT_TOOLTIPS = ("Restored crops, same order and size as the input.",)
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "crops": ("IMAGE", {"tooltip": "Aligned face crops from BFR Align Faces."}),
            "prior": ("BFR_PRIOR", {"tooltip": "From BFR Load Diffusion Prior."}),
            **_sampling_inputs(),
        }, "optional": {
            "restorer": ("BFR_RESTORER", {"tooltip": "Backbone from BFR Load Restorer; unconnected = none."}),
            "guidance": ("BFR_GUIDANCE", {"tooltip": "Identity guidance from BFR Identity Guidance (optional)."}),
        }}

    def restore(self, crops, prior, strength, steps, sampler, eta, seed, batch_size, restorer=None, guidance=None):
        rgb, _ = split_alpha(to_bchw(crops))
        out = run_restore(rgb, prior, restorer, strength, steps, sampler, eta, seed, batch_size, guidance)
        return (to_bhwc(out),)


class BFRRestoreFaces:
    DESCRIPTION = ("All in one: detect every face, align, restore with the diffusion prior, paste back. "
                   "Outputs the image and the mask of restored faces. Images without faces pass through.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls):
        sampling = _sampling_inputs()
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Images to restore (any batch size)."}),
            "detector": ("BFR_DETECTOR", {"tooltip": "From BFR Load Face Detector."}),
            "prior": ("BFR_PRIOR", {"tooltip": "From BFR Load Diffusion Prior."}),
            "strength": sampling["strength"],
            "steps": sampling["steps"],
            "seed": sampling["seed"],
            "select": (list(SELECT_MODES[:3]), {"default": "all", "tooltip": "Restore all faces, the largest, or "
                                                                             "the one closest to the centre."}),
            "color_match": (list(COLOR_MATCH_MODES), {"default": "lowpass",
                                                      "tooltip": "Keep the original's colours/tones (lowpass "
                                                                 "keeps the restored detail)."}),
        }, "optional": {
            "restorer": ("BFR_RESTORER", {"tooltip": "Backbone from BFR Load Restorer; unconnected = none."}),
            "guidance": ("BFR_GUIDANCE", {"tooltip": "Identity guidance from BFR Identity Guidance (optional)."}),
        }}

    def restore(self, image, detector, prior, strength, steps, seed, select, color_match, restorer=None,
                guidance=None):
        images = to_bchw(image)
        rgb, alpha = split_alpha(images)
        dets = run_detection(detector, rgb, DetectOptions(select=select))
        crops, faces = align_faces(rgb, dets, prior.sample_size if prior.sample_size >= 256 else 512)
        if len(faces) == 0:
            log.info("BFR Restore Faces: no faces found; images returned unchanged")
            return (image, torch.zeros(image.shape[:3]))
        restored = run_restore(crops, prior, restorer, strength, steps, "ddim", 0.5, seed, 4, guidance).cpu()
        masks = crop_masks(restored, PasteOptions(color_match=color_match))
        out, coverage = paste_faces(rgb, restored, faces, masks, color_match)
        return (to_bhwc(merge_alpha(out, alpha, images.shape[1])), coverage.float().cpu())
