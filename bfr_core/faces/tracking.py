"""Face tracks across video frames: the same person keeps one id, and its landmarks are smoothed along the track.

Frame to frame, every open track is matched to at most one detection (greedy, cheapest pair first). A pair may
match when the boxes overlap (IoU >= ``iou_threshold``) or, for faces that moved fast or came back after a gap,
when the detection's centre lies within ``max_distance`` face sizes of where the track was last seen and its size
changed by at most ``max_size_change``×. The cost of a pair is 1 − IoU plus the mean landmark distance in face
sizes (so crossing faces keep their own ids), plus a small penalty per missed frame (recent tracks first).
A track missing from up to ``max_gap`` frames keeps its id when the face comes back; after that it is closed.
Unmatched detections start new tracks with ids 0, 1, 2, … in order of appearance.

The tracker is a stream (`FaceTracker.update` per frame, state kept between calls), so a long video can be
processed chunk by chunk; `track_faces` runs it over a list of frames. With a look-ahead smoother (kalman_rts) a
frame's landmarks are final only once the following ``lookahead`` frames are in: use ``push`` (per frame: the frames
now final, in order, possibly none) and ``flush`` (at the end: the rest); they work with every method.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .smoothing import KalmanFilter, KalmanSmoother, OneEuroFilter, SmoothingOptions, make_filter
from .types import FaceDetections


@dataclass(frozen=True)
class TrackOptions:
    """How detections are linked into tracks (see the module docstring)."""

    iou_threshold: float = 0.3
    max_distance: float = 1.0  # face sizes between where a track was and a detection
    max_size_change: float = 1.5
    max_gap: int = 30  # frames a lost track waits for its face to come back
    gap_penalty: float = 0.05  # cost per missed frame

    def __post_init__(self) -> None:
        if not 0 <= self.iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in [0, 1], got {self.iou_threshold}")
        if not (self.max_distance >= 0 and math.isfinite(self.max_distance)):
            raise ValueError(f"max_distance must be >= 0 face sizes, got {self.max_distance}")
        if not self.max_size_change >= 1:
            raise ValueError(f"max_size_change must be >= 1 (a ratio), got {self.max_size_change}")
        if int(self.max_gap) != self.max_gap or self.max_gap < 0:
            raise ValueError(f"max_gap must be a whole number of frames >= 0, got {self.max_gap}")


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2) → [N, M]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter).clamp_min(1e-9)


def box_sizes(boxes: Tensor) -> Tensor:
    """sqrt(area) of boxes [N, 4]: the face size that distances are measured in."""
    return (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6).prod(-1).sqrt()


def match_cost(track_boxes: Tensor, track_landmarks: Tensor, gaps: Tensor, boxes: Tensor, landmarks: Tensor,
               options: TrackOptions) -> Tensor:
    """Cost [T, D] of continuing each track with each detection; inf where the pair may not match."""
    iou = box_iou(track_boxes, boxes)
    size_t, size_d = box_sizes(track_boxes), box_sizes(boxes)
    centre_t = (track_boxes[:, :2] + track_boxes[:, 2:]) / 2
    centre_d = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = torch.cdist(centre_t, centre_d) / size_t[:, None]
    ratio = size_d[None] / size_t[:, None]
    near = (dist <= options.max_distance) & (ratio <= options.max_size_change) & (ratio >= 1 / options.max_size_change)
    allowed = (iou >= options.iou_threshold) | near
    lm = (track_landmarks[:, None] - landmarks[None]).norm(dim=-1).mean(-1) / size_t[:, None]
    cost = (1 - iou) + lm + options.gap_penalty * (gaps[:, None] - 1)
    return torch.where(allowed, cost, torch.full_like(cost, math.inf))


def greedy_assignment(cost: Tensor) -> list[tuple[int, int]]:
    """(row, column) pairs of finite cost, cheapest first, each row and column used at most once."""
    pairs: list[tuple[int, int]] = []
    if cost.numel() == 0:
        return pairs
    used_r: set[int] = set()
    used_c: set[int] = set()
    flat = cost.flatten()
    for k in torch.argsort(flat, stable=True).tolist():
        if not math.isfinite(float(flat[k])):
            break
        r, c = divmod(k, cost.shape[1])
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r)
            used_c.add(c)
    return pairs


@dataclass
class _Track:
    box: Tensor  # last detected box [4]
    landmarks: Tensor  # last detected landmarks [5, 2]
    last_frame: int
    smoother: OneEuroFilter | KalmanFilter | None = field(default=None, repr=False)


class FaceTracker:
    """Assigns track ids to each frame's detections and smooths each track's landmarks (None = no smoothing).

    ``update(dets)`` takes the next frame's `FaceDetections` (any device) and returns them on the CPU with
    ``track_ids`` set and the landmarks smoothed along each track; boxes and scores stay as detected.
    """

    def __init__(self, options: TrackOptions | None = None, smoothing: SmoothingOptions | None = None) -> None:
        self.options = options or TrackOptions()
        self.smoothing = smoothing
        self.tracks: dict[int, _Track] = {}
        self.frame = -1
        self.next_id = 0
        # frames whose landmarks wait for their look-ahead: (detections, track ids, each face's smoother)
        self.pending: deque[tuple[FaceDetections, list[int], list[KalmanSmoother | None]]] = deque()

    @property
    def delay(self) -> int:
        """Frames by which ``push`` trails its input (the smoother's look-ahead; 0 for causal filters)."""
        return 0 if self.smoothing is None else self.smoothing.delay

    def sizes(self) -> dict[str, int]:
        """What the tracker holds, all bounded whatever the clip's length: open tracks (those seen in the last
        ``max_gap`` frames), frames waiting for their look-ahead (at most ``lookahead``), and the look-ahead
        smoother's kept states (at most ``lookahead`` + 1 per face of those frames)."""
        smoothers = {id(t.smoother): t.smoother for t in self.tracks.values() if t.smoother is not None}
        smoothers.update({id(s): s for _, _, ss in self.pending for s in ss if s is not None})
        return dict(tracks=len(self.tracks), pending=len(self.pending),
                    smoother_states=sum(len(getattr(s, "states", ())) for s in smoothers.values()))

    def update(self, dets: FaceDetections) -> FaceDetections:
        """The next frame's detections tracked and smoothed, at once (causal smoothing methods only)."""
        if self.delay:
            raise ValueError(f"the {self.smoothing.method} smoother needs later frames: use push() and flush()")
        return self._track(dets)

    def push(self, dets: FaceDetections) -> list[FaceDetections]:
        """Adds the next frame; returns the frames whose landmarks are now final, in order (with a look-ahead of L
        frames, frame k comes out when frame k + L goes in)."""
        tracked = self._track(dets)
        if not self.delay:
            return [tracked]
        out = []
        while len(self.pending) > self.delay:
            out.append(self._finish())
        return out

    def flush(self) -> list[FaceDetections]:
        """The frames still waiting for their look-ahead (end of the stream), in order."""
        return [self._finish() for _ in range(len(self.pending))]

    def _finish(self) -> FaceDetections:
        dets, ids, smoothers = self.pending.popleft()
        landmarks = dets.landmarks.clone()
        for j, s in enumerate(smoothers):
            if s is not None:
                landmarks[j] = s.pop().to(landmarks.dtype)
        return FaceDetections(dets.boxes, landmarks, dets.scores, torch.tensor(ids, dtype=torch.long))

    def _track(self, dets: FaceDetections) -> FaceDetections:
        self.frame += 1
        dets = dets.to("cpu")
        boxes, landmarks = dets.boxes.double(), dets.landmarks.double()
        ids = list(self.tracks)
        ids_out = [-1] * len(dets)
        if ids and len(dets):
            t_boxes = torch.stack([self.tracks[i].box for i in ids])
            t_lms = torch.stack([self.tracks[i].landmarks for i in ids])
            gaps = torch.tensor([self.frame - self.tracks[i].last_frame for i in ids], dtype=torch.float64)
            for r, c in greedy_assignment(match_cost(t_boxes, t_lms, gaps, boxes, landmarks, self.options)):
                ids_out[c] = ids[r]
        for j in range(len(dets)):
            if ids_out[j] < 0:
                ids_out[j] = self.next_id
                self.next_id += 1
                self.tracks[ids_out[j]] = _Track(boxes[j], landmarks[j], self.frame)
        smoothed = landmarks.clone()
        sizes = box_sizes(boxes)
        for j, tid in enumerate(ids_out):
            track = self.tracks[tid]
            track.box, track.landmarks, track.last_frame = boxes[j], landmarks[j], self.frame
            if self.smoothing is not None:
                if track.smoother is None:
                    track.smoother = make_filter(self.smoothing)
                smoothed[j] = track.smoother.filter(landmarks[j], self.frame / self.smoothing.fps, sizes[j])
        if self.delay:  # landmarks as detected until the look-ahead is in; each face's smoother kept with it
            self.pending.append((dets, ids_out, [self.tracks[t].smoother for t in ids_out]))
        for tid in [t for t, tr in self.tracks.items() if self.frame - tr.last_frame > self.options.max_gap]:
            del self.tracks[tid]
        return FaceDetections(dets.boxes, smoothed.to(dets.landmarks.dtype), dets.scores,
                              torch.tensor(ids_out, dtype=torch.long))


def track_faces(detections: list[FaceDetections], options: TrackOptions | None = None,
                smoothing: SmoothingOptions | None = SmoothingOptions()) -> list[FaceDetections]:
    """Tracks over the frames of a clip, in order (one `FaceDetections` per frame): ids and smoothed landmarks."""
    tracker = FaceTracker(options, smoothing)
    return [t for d in detections for t in tracker.push(d)] + tracker.flush()
