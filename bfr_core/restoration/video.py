"""Video restoration as a stream: chunks of frames in, restored chunks out, the state of the clip (face tracks,
smoothed landmarks, per-track memory) carried from chunk to chunk, so memory does not grow with the clip's length.

Each chunk: detect → track and smooth (`faces.tracking.FaceTracker`) → `restore_images` with the tracked detections
(a person's noise seed is ``seed + track id`` in every frame) and the clip's `TrackMemory`.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from torch import Tensor

from ..faces.detection import FaceDetector
from ..faces.detection.batch import DetectOptions, detect_faces
from ..faces.smoothing import SmoothingOptions
from ..faces.tracking import FaceTracker
from .pipeline import CropRestorer, PasteOptions, RestoreResult, restore_images
from .temporal import TrackMemory


def restore_clip(chunks: Iterable[Tensor], detector: FaceDetector, restorer: CropRestorer | None = None,
                 detect: DetectOptions | None = None, paste: PasteOptions | None = None, crop_size: int | None = None,
                 *, seed: int = 0, tracker: FaceTracker | None = None, temporal: TrackMemory | None = None,
                 border: str = "reflect", parser=None) -> Iterator[RestoreResult]:
    """Restore the consecutive frame chunks [n, C, H, W] of one clip, yielding one `RestoreResult` per chunk.

    ``tracker``: default tracks with One-Euro smoothing at 30 fps (pass one with the clip's frame rate);
    ``temporal``: default no blending, colour reference averaged per track with weight 0.5.
    """
    tracker = tracker or FaceTracker(smoothing=SmoothingOptions())
    temporal = temporal or TrackMemory(color=0.5)
    for frames in chunks:
        detections = [tracker.update(d) for d in detect_faces(detector, frames, detect)]
        yield restore_images(frames, None, restorer, paste=paste, crop_size=crop_size, border=border, parser=parser,
                             seed=seed, detections=detections, temporal=temporal)
