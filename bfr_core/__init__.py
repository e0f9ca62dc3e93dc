"""bfr_core: blind face restoration with diffusion priors, in plain PyTorch (no ComfyUI imports).

Main entry points:
    load_detector(path)                    YuNet (.onnx) or RetinaFace (.pth) face detector
    detect_faces(detector, images, opts)   batched detection + face selection
    align_faces(images, detections)        FFHQ-aligned crops + AlignedFaces
    paste_faces(images, crops, faces)      seamless paste-back → (images, coverage mask)
    restore_images(images, detector, ...)  the whole pipeline
    track_faces(detections) / FaceTracker  face tracks across video frames, landmarks smoothed per track
    restore_clip(chunks, detector, ...)    a video's frame chunks restored with tracks, per-track noise and memory
    read_video(path) / VideoWriter         video files in chunks (PyAV), same timing and audio out
    load_prior(path) / load_restorer(path) the DifFace prior and backbone (or diffusers / spandrel models)
    restore_faces(crops, prior, ...)       DifFace restoration of aligned crops (batched, seeded per face)
    generate_pseudo_targets(crops, prior)  DT-BFR pseudo-targets (prior-refined backbone estimates) for adaptation
    finetune_backbone(f, pairs, ...)       DT-BFR adaptation: fine-tune the backbone on (crop, pseudo-target) pairs
    FaceRestorer(prior, backbone, ...)     the whole restore recipe as one object: restorer(crops) → restored crops
    load_recognizer(path)                  ArcFace recognizer (insightface ONNX / arcface_torch / facexlib)
    IdentityGuidance(recognizer, ...)      masked identity guidance: restore_faces(..., guidance=...)

The house (one folder per concept) is drawn in docs/ARCHITECTURE.md.
"""
from .lazy import lazy_exports

_EXPORTS = {
    "load_prior": ".diffusion.loading",
    "DiffusionPrior": ".diffusion.priors",
    "DenoiserPrior": ".diffusion.priors",
    "LatentPrior": ".diffusion.priors",
    "LatentDiffusionPrior": ".diffusion.latent",
    "PromptEmbeddings": ".diffusion.latent",
    "Prior": ".diffusion.priors",
    "Guidance": ".diffusion.sampling",
    "SAMPLERS": ".diffusion.timesteps",
    "official_timesteps": ".diffusion.timesteps",
    "strength_to_timestep": ".diffusion.timesteps",
    "align_faces": ".faces.align",
    "load_detector": ".faces.detection",
    "select_faces": ".faces.detection",
    "align_matrices": ".faces.geometry",
    "estimate_similarity": ".faces.geometry",
    "ffhq_template": ".faces.geometry",
    "template_mask": ".faces.masks",
    "match_colors": ".faces.paste",
    "paste_faces": ".faces.paste",
    "AlignedFaces": ".faces.types",
    "FaceDetections": ".faces.types",
    "warp_affine": ".faces.warp",
    "warp_faces": ".faces.warp",
    "SmoothingOptions": ".faces.smoothing",
    "FaceTracker": ".faces.tracking",
    "TrackOptions": ".faces.tracking",
    "track_faces": ".faces.tracking",
    "VideoWriter": ".io.video",
    "probe_video": ".io.video",
    "read_video": ".io.video",
    "TrackMemory": ".restoration.temporal",
    "restore_clip": ".restoration.video",
    "IdentityGuidance": ".identity",
    "cosine_distance": ".identity",
    "load_recognizer": ".identity",
    "CheckpointError": ".models.errors",
    "load_state_dict": ".models.checkpoint",
    "load_restorer": ".restoration.backbones",
    "restore_faces": ".restoration.difface",
    "backbone_estimate": ".restoration.estimate",
    "generate_pseudo_targets": ".restoration.pseudo_targets",
    "write_pseudo_targets": ".training.pseudo_targets",
    "FinetuneConfig": ".training.finetune",
    "finetune_backbone": ".training.finetune",
    "save_backbone": ".training.backbones",
    "DetectOptions": ".faces.detection.batch",
    "PasteOptions": ".restoration.pipeline",
    "RestoreResult": ".restoration.pipeline",
    "detect_faces": ".faces.detection.batch",
    "restore_images": ".restoration.pipeline",
    "FaceRestorer": ".restoration.restorer",
    "IdentitySettings": ".identity.settings",
    "embed_reference_faces": ".identity.references",
}
__version__ = "0.1.0"
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

