"""Cut FFHQ-aligned crops out of images: landmarks → similarity → warp, for every face of a batch."""
from __future__ import annotations

import torch
from torch import Tensor

from ..utils.layout import check_images
from .geometry import align_matrices
from .types import AlignedFaces, FaceDetections
from .warp import warp_faces

MIN_CROP_SIZE = 16  # below this a face has no features left to restore


def check_crop_size(crop_size) -> int:
    """The aligned crop size as an int, or a ValueError naming it."""
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int,)) and not (
            hasattr(crop_size, "__index__")):
        raise ValueError(f"crop_size must be a whole number of pixels, got {crop_size!r}")
    size = int(crop_size)
    if size < MIN_CROP_SIZE:
        raise ValueError(f"crop_size must be at least {MIN_CROP_SIZE} px (512 is the usual), got {size}")
    return size


def track_ids_of(detections: list[FaceDetections]) -> Tensor | None:
    """The detections' track ids in flat order, or None when untracked (ids then default to the detection order)."""
    with_faces = [d for d in detections if len(d)]
    tracked = [d.track_ids is not None for d in with_faces]
    if not with_faces or not any(tracked):
        return None
    if not all(tracked):
        raise ValueError("some images' faces are tracked and others not: track every frame of the batch (or none)")
    return torch.cat([d.track_ids.cpu() for d in with_faces])


def align_faces(images: Tensor, detections: list[FaceDetections], crop_size: int = 512,
                border: str = "reflect") -> tuple[Tensor, AlignedFaces]:
    """Cut FFHQ-aligned crops for every detected face of every image.

    images [B, C, H, W] in [0, 1]; detections: one per image. Returns crops [F, C, S, S] on the
    images' device and the `AlignedFaces` that paste-back needs; tracked detections (`faces.tracking`) give their
    track ids to `AlignedFaces.track_id` (so a person's noise seed is the same in every frame).
    """
    check_images(images, allow_empty=True)
    crop_size = check_crop_size(crop_size)
    if len(detections) != images.shape[0]:
        raise ValueError(f"got {len(detections)} detection lists for a batch of {images.shape[0]} images")
    counts = [len(d) for d in detections]
    image_index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
    if sum(counts):
        landmarks = torch.cat([d.landmarks.cpu().float() for d in detections])
        scores = torch.cat([d.scores.cpu().float() for d in detections])
    else:
        landmarks, scores = torch.zeros(0, 5, 2), torch.zeros(0)
    affines = align_matrices(landmarks, crop_size)
    h, w = images.shape[-2:]
    faces = AlignedFaces(image_index, affines, landmarks, scores, crop_size, [(int(h), int(w))] * len(counts), border,
                         track_id=track_ids_of(detections))
    crops = warp_faces(images, image_index.to(images.device), affines.to(images.device), crop_size, border)
    return crops, faces
