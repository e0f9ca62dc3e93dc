"""`load_detector`: a face detector from its file (YuNet ONNX via OpenCV, RetinaFace .pth via the registry)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from ..types import FaceDetections
from ...models.files import check_licence


class FaceDetector(Protocol):
    """What every detector offers: images [B, 3, H, W] RGB in [0, 1] → one result per image."""

    name: str

    def detect(self, images: Tensor, score_threshold: float = 0.5) -> list[FaceDetections]: ...


def load_detector(path: str | os.PathLike, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> FaceDetector:
    """Load a detector by file type: `.onnx` → YuNet (OpenCV), `.pth/.safetensors` → RetinaFace."""
    path = Path(path)
    check_licence(path)  # $BFR_COMMERCIAL_ONLY
    if path.suffix.lower() == ".onnx":
        from .yunet import YuNetDetector

        return YuNetDetector(path)
    from .retinaface import load_retinaface

    return load_retinaface(path, device=device, dtype=dtype)
