"""Restoration: backbones, the backbone estimate, the DifFace recipe (`restore_faces`), the whole-image pipeline."""
from ..lazy import lazy_exports

_EXPORTS = {
    "load_restorer": ".backbones",
    "restore_faces": ".difface",
    "backbone_estimate": ".estimate",
    "resize_crops": ".estimate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

