"""Restoration: backbones, the backbone estimate, and the whole-image pipeline."""
from .backbones import load_restorer
from .estimate import backbone_estimate, resize_crops

__all__ = ["backbone_estimate", "load_restorer", "resize_crops"]
