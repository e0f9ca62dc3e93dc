"""Diffusion-prior restoration nodes: prior and backbone loaders, crop restore, all-in-one."""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from ..bfr_core.diffusion.loading import load_prior
from ..bfr_core.diffusion.timesteps import (DEFAULT_STEPS, DEFAULT_STRENGTH, OFFICIAL_ETA, OFFICIAL_STEPS,
                                            OFFICIAL_T_START, SAMPLERS, strength_to_timestep)
from ..bfr_core.faces.detection import SELECT_MODES
from ..bfr_core.faces.detection.batch import DetectOptions
from ..bfr_core.faces.paste import COLOR_MATCH_MODES
from ..bfr_core.faces.smoothing import SmoothingOptions
from ..bfr_core.faces.tracking import track_faces
from ..bfr_core.restoration.backbones import load_restorer
from ..bfr_core.restoration.pipeline import PasteOptions, restore_images
from ..bfr_core.restoration.restorer import FaceRestorer
from ..bfr_core.restoration.temporal import COLOR_SMOOTHING, TrackMemory
from ..bfr_core.utils.layout import split_alpha
from .align import COLOR_REFERENCES
from .comfy_glue import list_models, log, model_path, resolve_dtype, to_bchw, to_bhwc
from .detect import run_detection
from .identity import looks_like_recognizer
from .memory import manage, models_loaded, restore_memory
from .progress import RestoreProgress
from .schema import Detector, Faces, Guidance, Prior, Restorer, checked, node_schema

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")
# Shown when models/facerestore_models holds no such file: the name says what to put where, and loading it
# raises an error naming the folder (instead of ComfyUI's bare "Value not in list").
DEFAULT_PRIOR = "iddpm_ffhq512_ema500000.pth"
DEFAULT_RESTORER = "swinir_restoration512_L1.pth"
DTYPES = ("auto", "fp32", "fp16", "bf16")
TRACKING_CHOICES = ("off", "kalman_rts", "one_euro", "kalman")  # off, then the smoothing methods (append-only)
FRAMES_PER_CALL = 16  # frames restored per restore_images call by BFR Restore Faces


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


class BFRLoadDiffusionPrior(io.ComfyNode):
    SEARCH = ("diffusion prior", "iddpm", "ddpm", "face prior")

    @classmethod
    def define_schema(cls) -> io.Schema:
        # Likely priors first, so the default is one (the folder also holds backbones and recognizers).
        files = sorted(list_models("facerestore_models", WEIGHT_SUFFIXES), key=lambda f: (not _looks_like_prior(f), f))
        return node_schema(
            "BFRLoadDiffusionPrior", "BFR Load Diffusion Prior (DifFace)",
            "Loads a face diffusion prior from ComfyUI/models/facerestore_models: DifFace's "
            "iddpm_ffhq512_ema500000.pth (as released, or converted to .safetensors), or a diffusers UNet2DModel "
            "folder (pick its diffusion_pytorch_model file).",
            inputs=[io.Combo.Input("model_name", options=files or [DEFAULT_PRIOR],
                                   tooltip="The prior's weights in ComfyUI/models/facerestore_models."),
                    _dtype_input("Weights precision. auto: bf16/fp16 on a GPU, fp32 on the CPU.")],
            outputs=[Prior.Output(display_name="prior",
                                  tooltip="The face diffusion prior, for BFR Diffusion Restore or BFR Restore Faces.")],
            search=cls.SEARCH)

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        """A missing file is named with its folder at queue time, instead of ComfyUI's bare "Value not in list"."""
        return checked(lambda: _prior_path(model_name), model_name)

    @classmethod
    def execute(cls, model_name: str, dtype: str) -> io.NodeOutput:
        return io.NodeOutput(manage(load_prior(_prior_path(model_name), device="cpu", dtype=resolve_dtype(dtype))))


def _dtype_input(tooltip: str):
    return io.Combo.Input("dtype", options=list(DTYPES), default="auto", tooltip=tooltip)


def _restorer_files() -> list[str]:
    files = [f for f in list_models("facerestore_models", WEIGHT_SUFFIXES)
             if not _looks_like_prior(f) and not looks_like_recognizer(f)]
    return files or [DEFAULT_RESTORER]


class BFRLoadRestorer(io.ComfyNode):
    SEARCH = ("restorer", "backbone", "swinir", "restoreformer", "face restore model")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRLoadRestorer", "BFR Load Restorer (SwinIR, GFPGAN, RestoreFormer)",
            "Loads the restoration backbone whose estimate the prior refines: DifFace's swinir_restoration512_L1.pth, "
            "or GFPGAN v1.4 / RestoreFormer++ files you already have (loaded through spandrel). 'none' uses the "
            "low-quality crop itself.",
            inputs=[io.Combo.Input("model_name", options=["none"] + _restorer_files(),
                                   tooltip="Backbone weights in ComfyUI/models/facerestore_models, or none."),
                    _dtype_input("Weights precision (falls back to fp32 for models without half-precision support).")],
            outputs=[Restorer.Output(display_name="restorer", tooltip="The restoration backbone (or none), for the "
                                     "restorer input of BFR Diffusion Restore or BFR Restore Faces.")],
            search=cls.SEARCH)

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        """A missing file is named with its folder at queue time, instead of ComfyUI's bare "Value not in list"."""
        return True if model_name == "none" else checked(lambda: model_path("facerestore_models", model_name),
                                                                          model_name)

    @classmethod
    def execute(cls, model_name: str, dtype: str) -> io.NodeOutput:
        if model_name == "none":
            return io.NodeOutput(load_restorer(None))
        path = model_path("facerestore_models", model_name)
        return io.NodeOutput(manage(load_restorer(path, device="cpu", dtype=resolve_dtype(dtype))))


def _sampling_inputs() -> dict[str, io.Input]:
    """The sampling widgets, by name (both restore nodes use them, in their own order)."""
    return {
        "strength": io.Float.Input("strength", default=DEFAULT_STRENGTH, min=0.0, max=1.0, step=0.01,
                                   tooltip="How much the prior re-generates: 0 returns the backbone's estimate, 0.4 "
                                           "is DifFace's setting (t=400); higher is more realistic, less faithful."),
        "steps": io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=1000,
                              tooltip="Denoising steps from the start point to the clean face. DifFace's own setting "
                                      "is 100 DDIM steps; 20 is close in quality and 5x faster."),
        "sampler": io.Combo.Input("sampler", options=list(SAMPLERS), default="ddim",
                                  tooltip="ddim / fast: DDIM (DifFace's sampler) over 'steps' evenly spaced steps; "
                                          "official: DifFace exactly (100 steps at strength 0.4, eta 0.5; ignores "
                                          "steps and eta); dpmsolver++: deterministic, good at few steps."),
        "eta": io.Float.Input("eta", default=0.5, min=0.0, max=1.0, step=0.05,
                              tooltip="DDIM noise per step (DifFace: 0.5); ignored by DPM-Solver++."),
        "seed": io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Noise seed. Face i of the crops uses seed + i; with 'faces' connected, a face "
                                     "uses seed + its track id (BFR Track Faces: the same person gets the same noise in "
                                     "every frame) or else its index within its own image (as BFR Restore Faces), so "
                                     "a face's result does not depend on the other images of the batch."),
        "batch_size": io.Int.Input("batch_size", default=4, min=1, max=64,
                                   tooltip="Faces per UNet call; halves itself automatically on out-of-memory."),
    }


def _model_inputs() -> list[io.Input]:
    """The optional restorer and guidance sockets (appended after the widgets, as in saved workflows)."""
    return [Restorer.Input("restorer", optional=True, tooltip="Backbone from BFR Load Restorer; unconnected = none."),
            Guidance.Input("guidance", optional=True,
                           tooltip="Identity guidance from BFR Identity Guidance (optional).")]


def sampler_settings(sampler: str, steps: int, eta: float, strength: float) -> tuple[str, int | None, float | None]:
    """Widget values → the library's sampler settings.

    `official` fixes its own steps and eta (the widgets always hold some). Workflows saved before the presets
    existed got DifFace's exact sampler from ddim + 100 steps + eta 0.5 at strength 0.4; they still do."""
    if sampler == "ddim" and int(steps) == OFFICIAL_STEPS and float(eta) == OFFICIAL_ETA \
            and strength_to_timestep(strength) == OFFICIAL_T_START:
        sampler = "official"
    if sampler == "official":
        return sampler, None, None
    return sampler, steps, eta


def crop_seeds(faces, count: int, seed: int) -> list[int] | None:
    """Per-face seeds from the crops' BFR_FACES (seed + track id, or + index within its image); None without it."""
    if faces is None:
        return None
    if len(faces) != count:
        raise ValueError(f"'faces' describes {len(faces)} faces but {count} crops were given; connect the BFR_FACES "
                         f"that came with these crops")
    return faces.face_seeds(seed)


def run_restore(restorer: FaceRestorer, crops_bchw: torch.Tensor, seed: int,
                seeds: list[int] | None = None) -> torch.Tensor:
    """The library's restorer with ComfyUI's device, memory, progress and cancel handling."""
    # Crops stay on the CPU: the restorer moves one chunk at a time to the models' device and back,
    # so device memory follows batch_size, not the number of faces (video batches).
    progress = RestoreProgress(crops_bchw.shape[0], restorer.batch_size, restorer.backbone)
    with restorer_on_device(restorer), progress.watching_backbone():
        return restorer(crops_bchw.cpu(), seed=seed, seeds=seeds, progress=progress)


def restorer_on_device(restorer: FaceRestorer):
    """The restorer's networks on ComfyUI's device for the body (through its memory manager: they stay there
    afterwards), with room for batch_size faces' activations."""
    recognizer = restorer.identity.recognizer if restorer.identity is not None else None
    return models_loaded(restorer.prior, restorer.backbone, recognizer, memory_required=restore_memory(restorer))


class BFRDiffusionRestore(io.ComfyNode):
    SEARCH = ("diffusion restore", "restore crops", "ddim")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRDiffusionRestore", "BFR Diffusion Restore (DifFace)",
            "Restores aligned face crops with a diffusion prior (DifFace): the backbone's estimate is noised to an "
            "intermediate step set by 'strength' and denoised by the prior. All faces of all images run batched.",
            inputs=[
                io.Image.Input("crops", tooltip="Aligned face crops from BFR Align Faces."),
                Prior.Input("prior", tooltip="From BFR Load Diffusion Prior."),
                *_sampling_inputs().values(),
                *_model_inputs(),
                Faces.Input("faces", optional=True, tooltip="From BFR Align Faces (optional): seeds each face by its "
                                                            "track id (tracked video frames) or its index within its "
                                                            "own image, like BFR Restore Faces."),
            ],
            outputs=[io.Image.Output(display_name="crops", tooltip="Restored crops, same order and size as the input.")],
            search=cls.SEARCH)

    @classmethod
    def execute(cls, crops, prior, strength, steps, sampler, eta, seed, batch_size, restorer=None, guidance=None,
                faces=None) -> io.NodeOutput:
        rgb, _ = split_alpha(to_bchw(crops))
        seeds = crop_seeds(faces, rgb.shape[0], seed)
        sampler, steps, eta = sampler_settings(sampler, steps, eta, strength)
        face_restorer = FaceRestorer(prior, restorer, strength=strength, steps=steps, sampler=sampler, eta=eta,
                                     identity=guidance, batch_size=batch_size)
        return io.NodeOutput(to_bhwc(run_restore(face_restorer, rgb, seed, seeds)))


class BFRRestoreFaces(io.ComfyNode):
    SEARCH = ("all in one", "restore photo", "face enhance", "face upscale")

    @classmethod
    def define_schema(cls) -> io.Schema:
        sampling = _sampling_inputs()
        return node_schema(
            "BFRRestoreFaces", "BFR Restore Faces (all in one, DifFace)",
            "All in one: detect every face, align, restore with the diffusion prior, paste back. Outputs the image "
            "and the mask of restored faces. Images without faces pass through.",
            inputs=[
                io.Image.Input("image", tooltip="Images to restore (any batch size)."),
                Detector.Input("detector", tooltip="From BFR Load Face Detector."),
                Prior.Input("prior", tooltip="From BFR Load Diffusion Prior."),
                sampling["strength"], sampling["steps"], sampling["seed"],
                io.Combo.Input("select", options=list(SELECT_MODES[:3]), default="all",
                               tooltip="Restore all faces, the largest, or the one closest to the centre."),
                io.Combo.Input("color_match", options=list(COLOR_MATCH_MODES), default="lowpass",
                               tooltip="Keep the original's colours/tones (lowpass keeps the restored detail)."),
                *_model_inputs(),
                # Video (appended: saved workflows keep their widget values; "off" restores as before).
                io.Combo.Input("tracking", options=list(TRACKING_CHOICES), default="off", optional=True,
                               tooltip="Video frames: off restores each image on its own. Otherwise faces are linked "
                                       "into tracks over the batch (the same person gets the same noise seed in "
                                       "every frame) with landmarks smoothed by this filter, as BFR Track Faces: "
                                       "kalman_rts (no lag, steadiest; looks 15 frames ahead), one_euro, kalman."),
                io.Float.Input("fps", default=30.0, min=1.0, max=240.0, step=0.01, optional=True,
                               tooltip="With tracking: frame rate of the batch (Get Video Components gives it), the "
                                       "landmark filters' time scale."),
                io.Float.Input("temporal_blend", default=0.0, min=0.0, max=0.95, step=0.01, optional=True,
                               tooltip="With tracking: weight of a person's previous restored frames in each "
                                       "restored face (aligned space, as BFR Blend Face Tracks). 0 = off; higher = "
                                       "less flicker, but fast expressions trail."),
                io.Combo.Input("color_reference", options=list(COLOR_REFERENCES), default="per_track",
                               optional=True,
                               tooltip="With tracking and color_match: per_track matches a face's colours to a moving "
                                       "average of the person's original frames (no colour flicker); per_face to its "
                                       "own frame. Without tracking every face uses its own frame."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The images with every restored face pasted back "
                                                                   "(unchanged where no face was found)."),
                     io.Mask.Output(display_name="mask", tooltip="Where faces were restored (1 = restored face).")],
            search=cls.SEARCH)

    @classmethod
    def execute(cls, image, detector, prior, strength, steps, seed, select, color_match, restorer=None,
                guidance=None, tracking="off", fps=30.0, temporal_blend=0.0,
                color_reference="per_track") -> io.NodeOutput:
        images = to_bchw(image)
        dets = run_detection(detector, split_alpha(images)[0], DetectOptions(select=select))
        temporal = None
        if tracking != "off":
            dets = track_faces(dets, smoothing=SmoothingOptions(fps=fps, method=tracking))
            color = COLOR_SMOOTHING if color_reference == "per_track" else 0.0
            temporal = TrackMemory(blend=temporal_blend, color=color)
            log.info("BFR Restore Faces: %d track(s) over %d frame(s)",
                     len({t for d in dets for t in d.track_ids.tolist()}), len(dets))
        sampler, steps, eta = sampler_settings("ddim", steps, OFFICIAL_ETA, strength)
        face_restorer = FaceRestorer(prior, restorer, strength=strength, steps=steps, sampler=sampler, eta=eta,
                                     identity=guidance)
        faces = sum(len(d) for d in dets)
        if faces == 0:
            log.info("BFR Restore Faces: no face to restore (none detected, or none passed the selection); "
                     "images returned unchanged")
            return io.NodeOutput(image, torch.zeros(image.shape[:3]))
        progress = RestoreProgress(faces, face_restorer.batch_size, face_restorer.backbone)
        face_restorer.progress = progress
        out, coverage = torch.empty_like(images), images.new_zeros(images.shape[0], *images.shape[-2:])
        # In chunks of frames, so a long video batch holds only a chunk's crops. Every face's seed comes from its
        # key and the TrackMemory carries the tracks from chunk to chunk, so this equals one restore_images call
        # (up to float rounding on GPUs, where other batches of faces change the sums).
        with restorer_on_device(face_restorer), progress.watching_backbone():
            for start in range(0, images.shape[0], FRAMES_PER_CALL):
                part = slice(start, start + FRAMES_PER_CALL)
                progress.next_call(sum(len(d) for d in dets[part]))
                res = restore_images(images[part], None, face_restorer, paste=PasteOptions(color_match=color_match),
                                     seed=seed, detections=dets[part], temporal=temporal)
                out[part], coverage[part] = res.images, res.coverage
        return io.NodeOutput(to_bhwc(out), coverage.float().cpu())
