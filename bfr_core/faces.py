"""`AlignedFaces`: everything paste-back needs to put aligned crops back where they came from."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .align import align_matrices, warp_faces
from .detection.types import FaceDetections


@dataclass
class AlignedFaces:
    """Faces of a batch of images, in one flat order (image 0's faces, then image 1's, ...).

    image_index [F]: source image of each face; affines [F, 2, 3]: image → crop similarity;
    landmarks [F, 5, 2]: detected landmarks in image pixels; image_sizes: (H, W) of every image of
    the batch, including images without faces.
    """

    image_index: Tensor
    affines: Tensor
    landmarks: Tensor
    scores: Tensor
    crop_size: int
    image_sizes: list[tuple[int, int]]
    border: str = "reflect"
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    @property
    def num_images(self) -> int:
        return len(self.image_sizes)

    def faces_of(self, image: int) -> list[int]:
        return torch.nonzero(self.image_index == image).flatten().tolist()

    def counts(self) -> list[int]:
        return [len(self.faces_of(b)) for b in range(self.num_images)]

    def subset(self, idx: list[int]) -> "AlignedFaces":
        """The same batch of images with only the faces `idx` (flat indices)."""
        i = torch.as_tensor(idx, dtype=torch.long)
        return AlignedFaces(self.image_index[i], self.affines[i], self.landmarks[i], self.scores[i],
                            self.crop_size, list(self.image_sizes), self.border, dict(self.extra))


def align_faces(images: Tensor, detections: list[FaceDetections], crop_size: int = 512,
                border: str = "reflect") -> tuple[Tensor, AlignedFaces]:
    """Cut FFHQ-aligned crops for every detected face of every image.

    images [B, C, H, W] in [0, 1]; detections: one per image. Returns crops [F, C, S, S] on the
    images' device and the `AlignedFaces` that paste-back needs.
    """
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
    faces = AlignedFaces(image_index, affines, landmarks, scores, crop_size, [(int(h), int(w))] * len(counts), border)
    crops = warp_faces(images, image_index.to(images.device), affines.to(images.device), crop_size, border)
    return crops, faces
