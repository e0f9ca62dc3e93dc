"""Restoration: backbones, the backbone estimate, the DifFace recipe (`restore_faces`), the whole-image pipeline."""
from .backbones import load_restorer
from .difface import restore_faces
from .estimate import backbone_estimate, resize_crops

__all__ = ["backbone_estimate", "load_restorer", "resize_crops", "restore_faces"]
