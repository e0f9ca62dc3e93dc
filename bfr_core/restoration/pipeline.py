"""Detect → align → (restore) → paste, for batches of whole images."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..faces.detection import FaceDetector, select_faces
from ..faces.align import align_faces
from ..faces.types import AlignedFaces, FaceDetections
from ..faces.masks import template_mask
from ..utils.layout import check_images, merge_alpha, split_alpha
from ..faces.paste import paste_faces

log = logging.getLogger("bfr_core")

# A restorer in pipeline terms: aligned crops [F, 3, S, S] in [0, 1] → restored crops, same shape.
CropRestorer = Callable[[Tensor], Tensor]
Progress = Callable[[int], None]


@dataclass
class DetectOptions:
    """Which faces to detect and keep (see `select_faces`)."""

    score_threshold: float = 0.6
    min_size: float = 0.0
    sort_by: str = "area"
    select: str = "all"
    indices: str = ""
    max_faces: int = 0


@dataclass
class PasteOptions:
    mask: str = "ellipse"  # ellipse | square | parsing (needs a parser)
    feather: float = 0.1
    color_match: str = "none"


@dataclass
class RestoreResult:
    images: Tensor  # [B, C, H, W]
    coverage: Tensor  # [B, H, W], 1 where the restored face replaced the image
    faces: AlignedFaces
    crops: Tensor  # aligned input crops [F, 3, S, S]
    restored: Tensor  # restored crops [F, 3, S, S]
    detections: list[FaceDetections] = field(default_factory=list)


def detect_faces(detector: FaceDetector, images: Tensor, options: DetectOptions | None = None,
                 chunk: int = 8, progress: Progress | None = None) -> list[FaceDetections]:
    """Detect and select faces in every image of a batch [B, C, H, W] (C = 1, 3 or 4)."""
    options = options or DetectOptions()
    check_images(images)
    rgb, _ = split_alpha(images)
    h, w = rgb.shape[-2:]
    results: list[FaceDetections] = []
    for start in range(0, rgb.shape[0], chunk):
        part = rgb[start:start + chunk]
        for dets in detector.detect(part, score_threshold=options.score_threshold):
            results.append(select_faces(dets.to("cpu"), (h, w), options.score_threshold, options.min_size,
                                        options.sort_by, options.select, options.indices, options.max_faces))
        if progress is not None:
            progress(part.shape[0])
    return results


def crop_masks(crops: Tensor, options: PasteOptions, parser=None) -> Tensor:
    """Soft crop-space masks [F, S, S] for paste-back."""
    s = crops.shape[-1]
    if options.mask == "parsing":
        if parser is None:
            raise ValueError("mask 'parsing' needs a face-parsing model (parsing_bisenet.pth or parsing_parsenet.pth)")
        return parser.mask(crops, feather=options.feather * 0.4) * template_mask(s, "square", 0.02, crops.device)
    return template_mask(s, options.mask, options.feather, crops.device).expand(crops.shape[0], -1, -1)


def restore_images(images: Tensor, detector: FaceDetector, restorer: CropRestorer | None = None,
                   detect: DetectOptions | None = None, paste: PasteOptions | None = None,
                   crop_size: int = 512, border: str = "reflect", parser=None,
                   progress: Progress | None = None) -> RestoreResult:
    """The whole pipeline on a batch [B, C, H, W] in [0, 1]. Images without faces pass through."""
    paste = paste or PasteOptions()
    check_images(images)
    rgb, alpha = split_alpha(images)
    detections = detect_faces(detector, images, detect)
    crops, faces = align_faces(rgb, detections, crop_size, border)
    if len(faces) == 0:
        log.info("no faces found in %d image(s); returning them unchanged", images.shape[0])
        return RestoreResult(images.clone(), images.new_zeros(images.shape[0], *images.shape[-2:]), faces,
                             crops, crops, detections)
    restored = crops if restorer is None else restorer(crops)
    masks = crop_masks(restored, paste, parser)
    out, coverage = paste_faces(rgb, restored, faces, masks, paste.color_match, progress)
    return RestoreResult(merge_alpha(out, alpha, images.shape[1]), coverage, faces, crops, restored, detections)
