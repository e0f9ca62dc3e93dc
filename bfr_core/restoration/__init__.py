"""Restoration: backbones, the backbone estimate, the DifFace recipe (`restore_faces`), DT-BFR pseudo-targets,
the whole-image pipeline, video clips (per-track memory, chunked streams)."""
from ..lazy import lazy_exports

_EXPORTS = {
    "load_restorer": ".backbones",
    "restore_faces": ".difface",
    "backbone_estimate": ".estimate",
    "resize_crops": ".estimate",
    "generate_pseudo_targets": ".pseudo_targets",
    "TrackMemory": ".temporal",
    "restore_clip": ".video",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

