"""Embeddings of reference photos: the identity a user wants the restored faces to keep."""
from __future__ import annotations

import torch
from torch import Tensor

from ..faces.align import align_faces
from ..faces.detection.batch import DetectOptions, detect_faces
from ..utils.layout import split_alpha


def embed_reference_faces(recognizer, images: Tensor, detector=None, score_threshold: float = 0.5,
                          batch_size: int = 8) -> Tensor:
    """Normalised embeddings [N, D] (recognizer's device) of the largest face of each image [N, C, H, W] in [0, 1].

    With a ``detector`` each photo's largest face is detected and aligned first (a photo without a face is an error
    naming it); without one the images must already be aligned face crops.
    """
    rgb, _ = split_alpha(images)
    if detector is not None:
        dets = detect_faces(detector, rgb, DetectOptions(select="largest", score_threshold=score_threshold))
        missing = [i for i, d in enumerate(dets) if len(d) == 0]
        if missing:
            raise ValueError(f"no face found in reference image(s) {missing} (counting from 0); each reference "
                             f"photo needs one clearly visible face")
        rgb, _ = align_faces(rgb, dets, 512)
    with torch.no_grad():
        return torch.cat([recognizer.embed(rgb[i:i + batch_size].contiguous())
                          for i in range(0, rgb.shape[0], batch_size)])
