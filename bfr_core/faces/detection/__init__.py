"""Face detectors (YuNet via OpenCV, RetinaFace in torch) behind one `detect()` interface."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from .select import SELECT_MODES, SORT_MODES, parse_indices, select_faces
from ..types import FaceDetections

# Short names the CLI and nodes accept, mapped to the registry's file names.
DETECTOR_ALIASES = {
    "yunet": "face_detection_yunet_2023mar.onnx",
    "retinaface_resnet50": "detection_Resnet50_Final.pth",
    "retinaface_mobilenet": "detection_mobilenet0.25_Final.pth",
}


class FaceDetector(Protocol):
    """What every detector offers: images [B, 3, H, W] RGB in [0, 1] → one result per image."""

    name: str

    def detect(self, images: Tensor, score_threshold: float = 0.5) -> list[FaceDetections]: ...


def load_detector(path: str | os.PathLike, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> FaceDetector:
    """Load a detector by file type: `.onnx` → YuNet (OpenCV), `.pth/.safetensors` → RetinaFace."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from .yunet import YuNetDetector

        return YuNetDetector(path)
    from .retinaface import load_retinaface

    return load_retinaface(path, device=device, dtype=dtype)


__all__ = ["DETECTOR_ALIASES", "FaceDetections", "FaceDetector", "SELECT_MODES", "SORT_MODES",
           "load_detector", "parse_indices", "select_faces"]
