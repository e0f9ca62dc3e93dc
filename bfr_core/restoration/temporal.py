"""Temporal consistency of restored video faces, per track, in aligned space.

Kept across the chunks of a clip (one `TrackMemory` per clip):

- ``blend``: the restored crop of a track is an exponential moving average over its frames,
  out_t = blend · out_{t−1} + (1 − blend) · restored_t. Aligned crops of a tracked, smoothed face show the face in
  the same place every frame, so the average removes flicker; it also trails fast expressions (0 = off, default).
- ``color``: colour matching (`PasteOptions.color_match`) compares the restored crop with a moving average of the
  track's input crops instead of the frame's own crop, so per-frame noise and compression of the input do not make
  the matched colours flicker (0 = the frame's own crop).

A track not seen for more than ``max_gap`` frames starts afresh (it may have changed light, pose or person), and its
stored crops are dropped then, so the memory holds only the tracks of the last ``max_gap`` frames, however long the
clip and however many people pass through it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import Tensor


# The weight of a track's earlier frames in its colour reference where the user does not set it (CLI, nodes).
COLOR_SMOOTHING = 0.5


@dataclass
class TrackMemory:
    blend: float = 0.0
    color: float = 0.0
    max_gap: int = 30
    frame: int = 0  # index of the first frame of the next call
    _stores: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("blend", "color"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ValueError(f"temporal {name} must be in [0, 1) (0 = off), got {v!r}")

    def average(self, kind: str, crops: Tensor, tracks: Tensor, frames: Tensor, weight: float) -> Tensor:
        """Per-track moving average of crops [F, C, S, S] (faces in frame order; frames = clip frame indices)."""
        if weight == 0 or crops.shape[0] == 0:
            return crops
        store = self._stores.setdefault(kind, {})
        out = []
        for crop, track, frame in zip(crops, tracks.tolist(), frames.tolist()):
            prev = store.get(track)
            if prev is not None and frame - prev[1] <= self.max_gap and prev[0].shape == crop.shape:
                crop = weight * prev[0].to(crop) + (1 - weight) * crop
            store[track] = (crop.detach(), frame)
            out.append(crop)
        return torch.stack(out)

    def restored(self, crops: Tensor, tracks: Tensor, image_index: Tensor) -> Tensor:
        return self.average("restored", crops, tracks, image_index.cpu() + self.frame, self.blend)

    def color_reference(self, originals: Tensor, tracks: Tensor, image_index: Tensor) -> Tensor:
        return self.average("color", originals, tracks, image_index.cpu() + self.frame, self.color)

    def color_reference_of(self, tracks: Tensor, image_index: Tensor) -> Callable[[Tensor], Tensor]:
        """`color_reference` for the given faces, as `faces.paste.paste_faces(color_reference=)` takes it."""
        return partial(self.color_reference, tracks=tracks, image_index=image_index)

    def advance(self, num_frames: int) -> None:
        """Move past a chunk of ``num_frames`` frames (restore_images calls this) and forget the tracks that can no
        longer continue (last seen more than ``max_gap`` frames before the next frame)."""
        self.frame += int(num_frames)
        for store in self._stores.values():
            for track in [t for t, (_, last) in store.items() if self.frame - last > self.max_gap]:
                del store[track]

    def sizes(self) -> dict[str, int]:
        """Tracks stored per kind (``restored``, ``color``): bounded by the tracks seen in the last max_gap frames."""
        return {kind: len(self._stores.get(kind, ())) for kind in ("restored", "color")}
