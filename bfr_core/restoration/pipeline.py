"""Detect → align → restore → paste, for batches of whole images (`restore_images`), and the paste masks."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor

from ..faces.align import align_faces
from ..faces.detection import FaceDetector
from ..faces.detection.batch import DetectOptions, detect_faces
from ..faces.masks import template_mask
from ..faces.paste import paste_faces
from ..faces.types import AlignedFaces, FaceDetections
from ..utils.layout import check_images, merge_alpha, split_alpha
from .restorer import FaceRestorer
from .temporal import TrackMemory

log = logging.getLogger("bfr_core")

# A restorer in pipeline terms: aligned crops [F, 3, S, S] in [0, 1] → restored crops, same shape.
CropRestorer = Callable[[Tensor], Tensor]
Progress = Callable[[int], None]


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


def crop_masks(crops: Tensor, options: PasteOptions, parser=None) -> Tensor:
    """Soft crop-space masks [F, S, S] for paste-back."""
    s = crops.shape[-1]
    if options.mask == "parsing":
        if parser is None:
            raise ValueError("mask 'parsing' needs a face-parsing model (parsing_bisenet.pth or parsing_parsenet.pth)")
        return parser.mask(crops, feather=options.feather * 0.4) * template_mask(s, "square", 0.02, crops.device)
    return template_mask(s, options.mask, options.feather, crops.device).expand(crops.shape[0], -1, -1)


def restore_images(images: Tensor, detector: FaceDetector | None, restorer: CropRestorer | None = None,
                   detect: DetectOptions | None = None, paste: PasteOptions | None = None,
                   crop_size: int | None = None, border: str = "reflect", parser=None,
                   progress: Progress | None = None, *, seed: int = 0,
                   detections: list[FaceDetections] | None = None,
                   temporal: TrackMemory | None = None) -> RestoreResult:
    """The whole pipeline on a batch [B, C, H, W] in [0, 1]. Images without faces pass through.

    ``restorer``: a `FaceRestorer` (its crop size is the default ``crop_size``; each face's noise seed derives from
    its stable key, `AlignedFaces.face_seeds(seed)`), any crops → crops callable, or None (align + paste only).
    ``detections``: already detected faces (one per image) instead of running ``detector``; tracked ones
    (`faces.tracking`) make a person's noise the same in every frame.
    ``temporal``: the clip's `TrackMemory` (consecutive chunks of one video, in order): per-track moving averages of
    the restored crops and of the colour-matching reference, in aligned space.
    """
    paste = paste or PasteOptions()
    check_images(images)
    rgb, alpha = split_alpha(images)
    if detections is None:
        if detector is None:
            raise ValueError("restore_images needs a detector or detections")
        detections = detect_faces(detector, images, detect)
    if crop_size is None:
        crop_size = restorer.crop_size if isinstance(restorer, FaceRestorer) else 512
    crops, faces = align_faces(rgb, detections, crop_size, border)
    if len(faces) == 0:
        log.info("no faces found in %d image(s); returning them unchanged", images.shape[0])
        if temporal is not None:
            temporal.advance(images.shape[0])
        return RestoreResult(images.clone(), images.new_zeros(images.shape[0], *images.shape[-2:]), faces,
                             crops, crops, detections)
    if restorer is None:
        restored = crops
    elif isinstance(restorer, FaceRestorer):
        restored = restorer(crops, seeds=faces.face_seeds(seed))
    else:
        restored = restorer(crops)
    if temporal is not None:
        restored = temporal.restored(restored, faces.track_id, faces.image_index)
    masks = crop_masks(restored, paste, parser)
    reference = None
    if temporal is not None:  # colours matched to the track's steady reference, not the frame's own crop
        reference = temporal.color_reference_of(faces.track_id, faces.image_index)
    out, coverage = paste_faces(rgb, restored, faces, masks, paste.color_match, progress, color_reference=reference)
    if temporal is not None:
        temporal.advance(images.shape[0])
    return RestoreResult(merge_alpha(out, alpha, images.shape[1]), coverage, faces, crops, restored, detections)
