"""Video restoration as a stream: chunks of frames in, restored chunks out, the state of the clip (face tracks,
smoothed landmarks, per-track memory) carried from chunk to chunk, so memory does not grow with the clip's length.

Each chunk: detect → track and smooth (`faces.tracking.FaceTracker`) → `restore_images` with the tracked detections
(a person's noise seed is ``seed + track id`` in every frame) and the clip's `TrackMemory`. With a look-ahead
smoother (kalman_rts, ``lookahead`` L frames) the last L frames of a chunk wait for the next chunk's detections, so
results trail the chunks by L frames (at most chunk + L frames are held) and the rest comes out at the end, restored
in pieces no larger than the largest chunk (so the end needs no more memory than the middle).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor

from ..faces.detection import FaceDetector
from ..faces.detection.batch import DetectOptions, detect_faces
from ..faces.smoothing import SmoothingOptions
from ..faces.tracking import FaceTracker
from .pipeline import CropRestorer, PasteOptions, RestoreResult, restore_images
from .temporal import COLOR_SMOOTHING, TrackMemory


def restore_clip(chunks: Iterable[Tensor], detector: FaceDetector, restorer: CropRestorer | None = None,
                 detect: DetectOptions | None = None, paste: PasteOptions | None = None, crop_size: int | None = None,
                 *, seed: int = 0, tracker: FaceTracker | None = None, temporal: TrackMemory | None = None,
                 border: str = "reflect", parser=None) -> Iterator[RestoreResult]:
    """Restore the consecutive frame chunks [n, C, H, W] of one clip, yielding `RestoreResult`s of consecutive frames
    in order: one per chunk with a causal smoother; with a look-ahead smoother they trail the chunks by
    ``tracker.delay`` frames (count the frames of each result, not the results).

    ``tracker``: default tracks with One-Euro smoothing at 30 fps (pass one with the clip's frame rate);
    ``temporal``: default no blending, colour reference averaged per track with weight 0.5.
    """
    tracker = tracker or FaceTracker(smoothing=SmoothingOptions())
    temporal = temporal or TrackMemory(color=COLOR_SMOOTHING)
    waiting: Tensor | None = None  # frames whose detections wait for the smoother's look-ahead
    largest = 1  # frames in the largest chunk: the size of the pieces the end is restored in

    def restore(frames: Tensor, detections) -> RestoreResult:
        return restore_images(frames, None, restorer, paste=paste, crop_size=crop_size, border=border, parser=parser,
                              seed=seed, detections=detections, temporal=temporal)

    for frames in chunks:
        largest = max(largest, frames.shape[0])
        ready = [t for d in detect_faces(detector, frames, detect) for t in tracker.push(d)]
        waiting = frames if waiting is None else torch.cat([waiting, frames])
        if ready:
            yield restore(waiting[:len(ready)], ready)
            waiting = waiting[len(ready):]
    ready = tracker.flush()
    for start in range(0, len(ready), largest):
        yield restore(waiting[start:start + largest], ready[start:start + largest])
