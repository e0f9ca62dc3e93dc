"""bfr_core: blind face restoration with diffusion priors, in plain PyTorch (no ComfyUI imports).

Main entry points:
    load_detector(path)                    YuNet (.onnx) or RetinaFace (.pth) face detector
    detect_faces(detector, images, opts)   batched detection + face selection
    align_faces(images, detections)        FFHQ-aligned crops + AlignedFaces
    paste_faces(images, crops, faces)      seamless paste-back → (images, coverage mask)
    restore_images(images, detector, ...)  the whole pipeline
    load_prior(path) / load_restorer(path) the DifFace prior and backbone (or diffusers / spandrel models)
    restore_faces(crops, prior, ...)       DifFace restoration of aligned crops (batched, seeded per face)
    load_recognizer(path)                  ArcFace recognizer (insightface ONNX / arcface_torch / facexlib)
    IdentityGuidance(recognizer, ...)      masked identity guidance: restore_faces(..., guidance=...)

The house (one folder per concept) is drawn in docs/ARCHITECTURE.md.
"""
from .diffusion.loading import load_prior
from .diffusion.priors import DiffusionPrior
from .diffusion.priors import DenoiserPrior, LatentPrior, Prior
from .diffusion.sampling import Guidance
from .diffusion.timesteps import SAMPLERS, official_timesteps, strength_to_timestep
from .faces.align import align_faces
from .faces.detection import load_detector, select_faces
from .faces.geometry import align_matrices, estimate_similarity, ffhq_template
from .faces.masks import template_mask
from .faces.paste import match_colors, paste_faces
from .faces.types import AlignedFaces, FaceDetections
from .faces.warp import warp_affine, warp_faces
from .identity import IdentityGuidance, cosine_distance, load_recognizer
from .models.checkpoint import CheckpointError, load_state_dict
from .restoration.backbones import load_restorer
from .restoration.difface import restore_faces
from .restoration.estimate import backbone_estimate
from .restoration.pipeline import DetectOptions, PasteOptions, RestoreResult, detect_faces, restore_images

__version__ = "0.1.0"

__all__ = [
    "AlignedFaces", "CheckpointError", "DenoiserPrior", "DetectOptions", "DiffusionPrior", "FaceDetections",
    "Guidance", "IdentityGuidance", "LatentPrior", "Prior", "SAMPLERS", "PasteOptions", "RestoreResult", "backbone_estimate", "cosine_distance",
    "load_prior", "load_recognizer", "load_restorer", "official_timesteps", "restore_faces", "strength_to_timestep",
    "align_faces", "align_matrices", "detect_faces", "estimate_similarity", "ffhq_template", "load_detector",
    "load_state_dict", "match_colors", "paste_faces", "restore_images", "select_faces", "template_mask",
    "warp_affine", "warp_faces",
]
