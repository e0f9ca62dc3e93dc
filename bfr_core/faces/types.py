"""The face types every stage shares: `FaceDetections` (what a detector found in one image) and `AlignedFaces`
(where each aligned crop came from, with its stable per-face key)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class FaceDetections:
    """Faces found in one image, in pixel coordinates of that image.

    boxes:     [N, 4] float32, (x1, y1, x2, y2)
    landmarks: [N, 5, 2] float32, (x, y) of left eye, right eye, nose, left mouth corner,
               right mouth corner ("left" = image-left, the FFHQ template's order)
    scores:    [N] float32 in [0, 1]
    track_ids: [N] int64 ids of the same person across the frames of a video (`faces.tracking`), or None
               (untracked: the face's position in this list stands in)
    """

    boxes: Tensor
    landmarks: Tensor
    scores: Tensor
    track_ids: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.landmarks.shape != (n, 5, 2) or self.scores.shape != (n,):
            raise ValueError(
                f"inconsistent detection shapes: boxes {tuple(self.boxes.shape)}, "
                f"landmarks {tuple(self.landmarks.shape)}, scores {tuple(self.scores.shape)}"
            )
        if self.track_ids is not None:
            self.track_ids = torch.as_tensor(self.track_ids, dtype=torch.long, device=self.boxes.device)
            if self.track_ids.shape != (n,):
                raise ValueError(f"track_ids has shape {tuple(self.track_ids.shape)}, expected one id per face ({n},)")

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> "FaceDetections":
        return FaceDetections(
            torch.zeros(0, 4, device=device), torch.zeros(0, 5, 2, device=device), torch.zeros(0, device=device)
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def index(self, idx: Tensor | list[int]) -> "FaceDetections":
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=self.boxes.device)
        return FaceDetections(self.boxes[idx_t], self.landmarks[idx_t], self.scores[idx_t],
                              None if self.track_ids is None else self.track_ids[idx_t])

    def to(self, device: torch.device | str) -> "FaceDetections":
        return FaceDetections(self.boxes.to(device), self.landmarks.to(device), self.scores.to(device),
                              None if self.track_ids is None else self.track_ids.to(device))

    @property
    def areas(self) -> Tensor:
        wh = (self.boxes[:, 2:] - self.boxes[:, :2]).clamp(min=0)
        return wh[:, 0] * wh[:, 1]

    def to_json(self) -> list[dict]:
        """One dict per face: box, landmarks, score, and ``track`` when the faces are tracked."""
        out = [
            {
                "box": [round(float(v), 2) for v in self.boxes[i]],
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks[i]],
                "score": round(float(self.scores[i]), 4),
            }
            for i in range(len(self))
        ]
        if self.track_ids is not None:
            for face, track in zip(out, self.track_ids.tolist()):
                face["track"] = int(track)
        return out


@dataclass
class AlignedFaces:
    """Faces of a batch of images, in one flat order (image 0's faces, then image 1's, ...).

    image_index [F]: source image of each face; affines [F, 2, 3]: image → crop similarity;
    landmarks [F, 5, 2]: detected landmarks in image pixels; image_sizes: (H, W) of every image of
    the batch, including images without faces.

    A face's stable key is ``(image_index, track_id)``. ``track_id`` [F] names the same person across the
    images of a batch (video frames); until faces are tracked it is the face's detection order within its
    image (0, 1, … per image). Noise seeds derive from the key (`face_seeds`), not from the flat position, so a
    face restores the same whichever batch, chunk or neighbours it comes with.
    """

    image_index: Tensor
    affines: Tensor
    landmarks: Tensor
    scores: Tensor
    crop_size: int
    image_sizes: list[tuple[int, int]]
    border: str = "reflect"
    extra: dict = field(default_factory=dict)
    track_id: Tensor | None = None  # None: detection order within each image
    tracked: bool | None = None  # track ids name people across images (faces.tracking); None: whether track_id given

    def __post_init__(self) -> None:
        if self.tracked is None:
            self.tracked = self.track_id is not None
        if self.track_id is None:
            self.track_id = order_within_groups(self.image_index)
        self.track_id = torch.as_tensor(self.track_id, dtype=torch.long)
        if self.track_id.shape != self.image_index.shape:
            raise ValueError(f"track_id has shape {tuple(self.track_id.shape)}, expected one id per face "
                             f"{tuple(self.image_index.shape)}")

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
                            self.crop_size, list(self.image_sizes), self.border, dict(self.extra), self.track_id[i],
                            self.tracked)

    def keys(self) -> list[tuple[int, int]]:
        """The stable key ``(image index, track id)`` of every face, in flat order."""
        return list(zip(self.image_index.tolist(), self.track_id.tolist()))

    def face_seeds(self, seed: int) -> list[int]:
        """Per-face noise seeds: ``seed + track_id``. The same track gets the same noise in every image (frame);
        a photo's faces get the same seeds whatever its position in the batch."""
        return [int(seed) + t for t in self.track_id.tolist()]


def order_within_groups(group: Tensor) -> Tensor:
    """0, 1, 2, … counting separately inside each group id, in flat order: [0, 0, 1, 1, 1] → [0, 1, 0, 1, 2]."""
    group = torch.as_tensor(group, dtype=torch.long).cpu()
    out = torch.zeros_like(group)
    for g in group.unique().tolist():
        where = group == g
        out[where] = torch.arange(int(where.sum()))
    return out
