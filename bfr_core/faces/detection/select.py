"""Which detected faces to keep: threshold, minimum size, ordering, choice and count."""
from __future__ import annotations

import logging

import torch

from ..types import FaceDetections
from .options import check_selection, parse_indices

log = logging.getLogger("bfr_core")


def face_size(dets: FaceDetections) -> torch.Tensor:
    """Face size in pixels: the shorter side of the box."""
    wh = (dets.boxes[:, 2:] - dets.boxes[:, :2]).clamp(min=0)
    return wh.min(1).values


def select_faces(dets: FaceDetections, image_hw: tuple[int, int], score_threshold: float = 0.0,
                 min_size: float = 0.0, sort_by: str = "area", select: str = "all",
                 indices: str | list[int] = "", max_faces: int = 0) -> FaceDetections:
    """Filter and order one image's detections.

    Order: drop faces under `score_threshold` or smaller than `min_size` px; sort by `sort_by`
    (area and score descending, positions ascending); then `select`: all | largest | center
    (closest to the image centre) | indices (positions in the sorted list, negative from the end);
    finally keep at most `max_faces` (0 = no limit).
    """
    check_selection(score_threshold, min_size, sort_by, select, indices, max_faces)
    keep = (dets.scores >= score_threshold) & (face_size(dets) >= min_size)
    dets = dets.index(torch.nonzero(keep).flatten())
    if len(dets) == 0:
        return dets
    centres = (dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2
    key = {"area": -dets.areas, "score": -dets.scores, "left_to_right": centres[:, 0],
           "top_to_bottom": centres[:, 1]}[sort_by]
    dets = dets.index(torch.argsort(key, stable=True))
    centres = (dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2
    if select == "largest":
        dets = dets.index([int(torch.argmax(dets.areas))])
    elif select == "center":
        h, w = image_hw
        dist = ((centres - torch.tensor([w / 2, h / 2])) ** 2).sum(1)
        dets = dets.index([int(torch.argmin(dist))])
    elif select == "indices":
        wanted = parse_indices(indices) if isinstance(indices, str) else list(indices)
        n = len(dets)
        picked = [i if i >= 0 else n + i for i in wanted]
        outside = [w for w, i in zip(wanted, picked) if not 0 <= i < n]
        if outside:
            log.warning("face index %s out of range: %d face(s) found (indices count from 0, negative from the end)",
                        ", ".join(map(str, outside)), n)
        picked = list(dict.fromkeys(i for i in picked if 0 <= i < n))  # a face listed twice is kept once
        dets = dets.index(picked)
    if max_faces > 0:
        dets = dets.index(list(range(min(max_faces, len(dets)))))
    return dets
