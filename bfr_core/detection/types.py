"""The one result type every face detector returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class FaceDetections:
    """Faces found in one image, in pixel coordinates of that image.

    boxes:     [N, 4] float32, (x1, y1, x2, y2)
    landmarks: [N, 5, 2] float32, (x, y) of left eye, right eye, nose, left mouth corner,
               right mouth corner ("left" = image-left, the FFHQ template's order)
    scores:    [N] float32 in [0, 1]
    """

    boxes: Tensor
    landmarks: Tensor
    scores: Tensor

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.landmarks.shape != (n, 5, 2) or self.scores.shape != (n,):
            raise ValueError(
                f"inconsistent detection shapes: boxes {tuple(self.boxes.shape)}, "
                f"landmarks {tuple(self.landmarks.shape)}, scores {tuple(self.scores.shape)}"
            )

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> "FaceDetections":
        return FaceDetections(
            torch.zeros(0, 4, device=device), torch.zeros(0, 5, 2, device=device), torch.zeros(0, device=device)
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def index(self, idx: Tensor | list[int]) -> "FaceDetections":
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=self.boxes.device)
        return FaceDetections(self.boxes[idx_t], self.landmarks[idx_t], self.scores[idx_t])

    def to(self, device: torch.device | str) -> "FaceDetections":
        return FaceDetections(self.boxes.to(device), self.landmarks.to(device), self.scores.to(device))

    @property
    def areas(self) -> Tensor:
        wh = (self.boxes[:, 2:] - self.boxes[:, :2]).clamp(min=0)
        return wh[:, 0] * wh[:, 1]

    def to_json(self) -> list[dict]:
        return [
            {
                "box": [round(float(v), 2) for v in self.boxes[i]],
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks[i]],
                "score": round(float(self.scores[i]), 4),
            }
            for i in range(len(self))
        ]
