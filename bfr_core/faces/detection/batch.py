"""Detection over image batches: run a detector in chunks and keep the faces the options select."""
from __future__ import annotations

import logging
from typing import Callable

from torch import Tensor

from ...utils.layout import check_images, split_alpha
from ..types import FaceDetections
from .loading import FaceDetector
from .options import DetectOptions
from .select import select_faces

Progress = Callable[[int], None]
log = logging.getLogger("bfr_core")


def detect_faces(detector: FaceDetector, images: Tensor, options: DetectOptions | None = None,
                 chunk: int = 8, progress: Progress | None = None) -> list[FaceDetections]:
    """Detect and select faces in every image of a batch [B, C, H, W] (C = 1, 3 or 4)."""
    options = options or DetectOptions()
    check_images(images)
    rgb, _ = split_alpha(images)
    h, w = rgb.shape[-2:]
    results: list[FaceDetections] = []
    found = 0
    for start in range(0, rgb.shape[0], chunk):
        part = rgb[start:start + chunk]
        for dets in detector.detect(part, score_threshold=options.score_threshold):
            found += len(dets)
            results.append(select_faces(dets.to("cpu"), (h, w), options.score_threshold, options.min_size,
                                        options.sort_by, options.select, options.indices, options.max_faces))
        if progress is not None:
            progress(part.shape[0])
    kept = sum(len(d) for d in results)
    if found and not kept:  # faces were found, none was kept: say why, not "no faces"
        log.warning("%d face(s) found but none kept by the selection (threshold %.2f, min size %g px, select %s%s)",
                    found, options.score_threshold, options.min_size, options.select,
                    f" {options.indices!r}" if options.select == "indices" else "")
    return results

