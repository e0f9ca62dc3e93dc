"""YuNet face detector through OpenCV's `cv2.FaceDetectorYN` (ONNX model, no torch weights)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...models.checkpoint import CheckpointError
from ..types import FaceDetections


@contextlib.contextmanager
def _opencv_errors_only():
    """OpenCV 5's DNN prints a harmless 'setPreferableTarget … new graph engine' warning for every YuNet; keep its
    log to errors meanwhile, and give the process its own level back (other packs may rely on it)."""
    import cv2

    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:
        yield
        return
    level = logging_api.getLogLevel()
    logging_api.setLogLevel(min(level, logging_api.LOG_LEVEL_ERROR))
    try:
        yield
    finally:
        logging_api.setLogLevel(level)


class YuNetDetector:
    """`face_detection_yunet_2023mar.onnx` run by OpenCV on the CPU, one image at a time.

    `top_k` caps the candidates kept *before* NMS: OpenCV's default of 5000 is needed for crowded
    photos (with 100, the 1927 Solvay photo loses 7 of its 29 faces).
    """

    name = "yunet"

    def __init__(self, path: str | os.PathLike, top_k: int = 5000, nms_threshold: float = 0.3) -> None:
        import cv2

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"YuNet model not found: {self.path}")
        try:
            with _opencv_errors_only():
                self._net = cv2.FaceDetectorYN.create(str(self.path), "", (320, 320), 0.5, nms_threshold, top_k)
        except cv2.error as exc:
            from ...models.files import expectation_hint

            raise CheckpointError(
                f"OpenCV cannot read {self.path} as a YuNet ONNX model ({exc.err or exc}). "
                f"Expected face_detection_yunet_2023mar.onnx; download it again"
                f"{expectation_hint('face_detection_yunet_2023mar.onnx')}."
            ) from exc

    def detect(self, images: Tensor, score_threshold: float = 0.5) -> list[FaceDetections]:
        """images: [B, 3, H, W] RGB in [0, 1] → one FaceDetections per image (CPU, float32)."""
        results = []
        batch = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        batch = batch.flip(1).permute(0, 2, 3, 1).cpu().numpy()  # RGB → BGR, channels last
        self._net.setScoreThreshold(float(score_threshold))
        for img in batch:
            h, w = img.shape[:2]
            self._net.setInputSize((w, h))
            with _opencv_errors_only():
                _, rows = self._net.detect(np.ascontiguousarray(img))
            if rows is None or len(rows) == 0:
                results.append(FaceDetections.empty())
                continue
            rows_t = torch.from_numpy(np.asarray(rows, dtype=np.float32))
            boxes = torch.cat([rows_t[:, :2], rows_t[:, :2] + rows_t[:, 2:4]], 1)
            dets = FaceDetections(boxes, rows_t[:, 4:14].reshape(-1, 5, 2), rows_t[:, 14].clamp(0, 1))
            results.append(dets.index(torch.argsort(dets.scores, descending=True)))
        return results
