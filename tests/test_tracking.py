"""Face tracks (faces/tracking.py), One-Euro landmark smoothing (faces/smoothing.py) on analytic signals, track ids
through alignment, and per-track temporal memory (restoration/temporal.py)."""
from __future__ import annotations

import math

import pytest
import torch

from bfr_core.faces.align import align_faces
from bfr_core.faces.geometry import ffhq_template
from bfr_core.faces.smoothing import OneEuroFilter, SmoothingOptions, one_euro
from bfr_core.faces.tracking import FaceTracker, TrackOptions, track_faces
from bfr_core.faces.types import FaceDetections
from bfr_core.restoration.temporal import TrackMemory

SIZE = 100.0  # face size (px) of the synthetic faces


def _face(cx: float, cy: float, size: float = SIZE, score: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Box [4] and FFHQ-template landmarks [5, 2] of a face of this size centred at (cx, cy)."""
    lm = (ffhq_template(512).float() - 256) * size / 512 * 1.6 + torch.tensor([cx, cy])
    box = torch.tensor([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
    return box, lm


def _frame(*centres) -> FaceDetections:
    if not centres:
        return FaceDetections.empty()
    parts = [_face(*c) for c in centres]
    return FaceDetections(torch.stack([b for b, _ in parts]), torch.stack([l for _, l in parts]),
                          torch.full((len(parts),), 0.9))


# ------------------------------------------------------------------------------------------------ smoothing
def test_still_face_jitter_is_reduced_at_least_3x():
    """Constant landmarks + 1 px Gaussian noise: the filtered track's error is at least 3x smaller."""
    g = torch.Generator().manual_seed(0)
    truth = _face(200, 150)[1].double()
    noisy = truth + torch.randn(150, 5, 2, generator=g, dtype=torch.float64)
    out = one_euro(noisy, SmoothingOptions(fps=30), size=SIZE)
    raw_err = (noisy[20:] - truth).norm(dim=-1).mean()
    err = (out[20:] - truth).norm(dim=-1).mean()
    assert err * 3 <= raw_err, (float(err), float(raw_err))


def test_ramp_lag_is_bounded_by_the_speed_dependent_cutoff():
    """A face moving at constant speed v: after settling, the lag L is the steady state of a first-order low-pass
    whose cutoff the speed raises, L = (1 − α)(L + v·te) with α = α(min_cutoff + beta·speed/size) and the speed
    measured against the previous filtered value (as in the 1€ paper), speed = v + L/te; so beta removes most of a
    plain low-pass's lag."""
    fps, v = 30.0, 90.0  # px/s = 3 px per frame
    t = torch.arange(120, dtype=torch.float64) / fps
    truth = _face(100, 100)[1].double()[None] + torch.stack([v * t, 0 * t], -1)[:, None]
    opts = SmoothingOptions(min_cutoff=0.5, beta=4.0, d_cutoff=1.0, fps=fps)
    lag = (truth[60:, :, 0] - one_euro(truth, opts, size=SIZE)[60:, :, 0]).mean()
    te, expected = 1 / fps, 0.0
    for _ in range(200):  # fixed point of the steady state
        alpha = 1 / (1 + 1 / (2 * math.pi * (opts.min_cutoff + opts.beta * (v + expected / te) / SIZE) * te))
        expected = v * te * (1 - alpha) / alpha
    assert float(lag) == pytest.approx(expected, rel=0.05)
    assert float(lag) <= SIZE / (2 * math.pi * opts.beta)  # the bound for any speed
    plain = (truth[60:, :, 0] - one_euro(truth, SmoothingOptions(0.5, 0.0, 1.0, fps), size=SIZE)[60:, :, 0]).mean()
    assert lag * 3 < plain  # without the speed term the same filter trails far behind


def test_smoothing_checks_its_inputs():
    with pytest.raises(ValueError, match="min_cutoff"):
        SmoothingOptions(min_cutoff=0)
    with pytest.raises(ValueError, match="beta"):
        SmoothingOptions(beta=-1)
    f = OneEuroFilter()
    f.filter(torch.zeros(5, 2), 1.0)
    with pytest.raises(ValueError, match="time must increase"):
        f.filter(torch.zeros(5, 2), 1.0)


# ------------------------------------------------------------------------------------------------- tracking
def test_ids_follow_faces_whatever_the_detection_order():
    """Two faces walking right; the detector lists them in a different order every other frame."""
    frames = []
    for t in range(6):
        a, b = (100 + 5 * t, 100), (400 + 5 * t, 120)
        frames.append(_frame(a, b) if t % 2 == 0 else _frame(b, a))
    tracked = track_faces(frames)
    for t, d in enumerate(tracked):
        left = int(torch.argmin(d.boxes[:, 0]))
        assert int(d.track_ids[left]) == 0 and int(d.track_ids[1 - left]) == 1, (t, d.track_ids)


def test_crossing_faces_keep_their_ids():
    """Two faces passing each other vertically offset: landmarks and overlap keep each on its own track."""
    frames = [_frame((100 + 40 * t, 100), (500 - 40 * t, 170)) for t in range(11)]
    tracked = track_faces(frames, smoothing=None)
    for d in tracked:
        upper = int(torch.argmin(d.boxes[:, 1]))
        assert int(d.track_ids[upper]) == 0 and int(d.track_ids[1 - upper]) == 1


def test_gap_and_reentry():
    """A face missing for a few frames keeps its id; one missing longer than max_gap gets a new one; a face far
    from every track is a new person."""
    opts = TrackOptions(max_gap=5)
    frames = [_frame((200, 200))] * 3 + [_frame()] * 4 + [_frame((230, 205))]  # back after 4 frames, moved a bit
    tracked = track_faces(frames, opts)
    assert [d.track_ids.tolist() for d in tracked if len(d)] == [[0], [0], [0], [0]]
    frames = [_frame((200, 200))] + [_frame()] * 6 + [_frame((200, 200))]  # 6 missing > max_gap 5
    assert track_faces(frames, opts)[-1].track_ids.tolist() == [1]
    tracked = track_faces([_frame((200, 200)), _frame((200, 200), (600, 200))], opts)
    assert tracked[1].track_ids.tolist() == [0, 1]
    # A smaller face at the same place is not the same person (size change beyond max_size_change, no overlap).
    tracked = track_faces([_frame((200, 200)), _frame(), FaceDetections(*[x[None] for x in _face(200, 200, 30)],
                                                                     torch.tensor([0.9]))], opts)
    assert tracked[2].track_ids.tolist() == [1]


def test_tracked_faces_are_smoothed_and_streamed():
    """The tracker smooths landmarks per track; chunked updates equal one pass over the whole clip."""
    g = torch.Generator().manual_seed(1)
    frames = []
    for _ in range(40):
        d = _frame((150, 150), (400, 150))
        frames.append(FaceDetections(d.boxes, d.landmarks + torch.randn(2, 5, 2, generator=g), d.scores))
    whole = track_faces(frames)
    tracker = FaceTracker(smoothing=SmoothingOptions())
    chunked = [tracker.update(d) for d in frames[:17]] + [tracker.update(d) for d in frames[17:]]
    for a, b in zip(whole, chunked):
        assert torch.equal(a.landmarks, b.landmarks) and torch.equal(a.track_ids, b.track_ids)
    truth = _frame((150, 150), (400, 150)).landmarks
    raw = torch.stack([(f.landmarks - truth).norm(dim=-1).mean() for f in frames[10:]]).mean()
    smooth = torch.stack([(f.landmarks - truth).norm(dim=-1).mean() for f in whole[10:]]).mean()
    assert smooth * 2.5 < raw
    assert torch.equal(whole[5].boxes, frames[5].boxes)  # boxes stay as detected


def test_track_ids_reach_aligned_faces_and_their_seeds():
    """Tracked detections give AlignedFaces their ids: a person's seed is the same in every frame, whatever
    the detection order; untracked faces fall back to the order within each image."""
    frames = [_frame((100, 100), (300, 100)), _frame((300, 100), (100, 100))]
    images = torch.rand(2, 3, 240, 420)
    _, faces = align_faces(images, track_faces(frames), 64)
    seeds = faces.face_seeds(7)
    assert seeds == [7, 8, 8, 7]
    _, untracked = align_faces(images, frames, 64)
    assert untracked.face_seeds(7) == [7, 8, 7, 8]
    mixed = [track_faces(frames[:1])[0], frames[1]]
    with pytest.raises(ValueError, match="tracked"):
        align_faces(images, mixed, 64)
    d = track_faces(frames)[1]
    assert [f["track"] for f in d.to_json()] == [1, 0]
    assert d.index([1]).track_ids.tolist() == [0]
    with pytest.raises(ValueError, match="track_ids"):
        FaceDetections(d.boxes, d.landmarks, d.scores, torch.tensor([0]))


def test_track_options_are_checked():
    with pytest.raises(ValueError, match="iou_threshold"):
        TrackOptions(iou_threshold=2)
    with pytest.raises(ValueError, match="max_gap"):
        TrackOptions(max_gap=-1)
    with pytest.raises(ValueError, match="max_size_change"):
        TrackOptions(max_size_change=0.5)


# ----------------------------------------------------------------------------------------- temporal memory
def test_temporal_blend_is_a_per_track_moving_average_across_chunks():
    g = torch.Generator().manual_seed(0)
    crops = torch.rand(6, 3, 8, 8, generator=g)  # frames 0..5, one face each, all track 3
    memory = TrackMemory(blend=0.5)
    tracks = torch.full((3,), 3)
    out = torch.cat([memory.restored(crops[:3], tracks, torch.arange(3)), ])
    memory.advance(3)
    out = torch.cat([out, memory.restored(crops[3:], tracks, torch.arange(3))])
    expected = [crops[0]]
    for c in crops[1:]:
        expected.append(0.5 * expected[-1] + 0.5 * c)
    torch.testing.assert_close(out, torch.stack(expected))
    # Flicker (frame-to-frame change) of i.i.d. crops drops: variance of an EMA is (1−w)/(1+w) = 1/3 of the input.
    assert (out[1:] - out[:-1]).abs().mean() < (crops[1:] - crops[:-1]).abs().mean()
    # Another track, and a track back after more than max_gap frames, start afresh.
    memory = TrackMemory(blend=0.5, max_gap=2)
    memory.restored(crops[:1], torch.tensor([0]), torch.tensor([0]))
    assert torch.equal(memory.restored(crops[1:2], torch.tensor([1]), torch.tensor([1]))[0], crops[1])
    assert torch.equal(memory.restored(crops[2:3], torch.tensor([0]), torch.tensor([5]))[0], crops[2])
    assert torch.equal(TrackMemory().restored(crops, torch.zeros(6, dtype=torch.long), torch.arange(6)), crops)
    with pytest.raises(ValueError, match="blend"):
        TrackMemory(blend=1.0)


# --------------------------------------------------------------------------- through restore_images
def _two_face_frames(faces64: torch.Tensor, order: list[tuple[int, int]]):
    """Identical frames [T, 3, 80, 180] holding two faces side by side (aligned, 64 px; each the average of two
    of the analytic prior's faces, so the noise decides where the prior takes it), and their detections listed in
    the given order of slots per frame."""
    canvas = torch.full((3, 80, 180), 0.5)
    offsets = [(8, 10), (100, 10)]
    for slot, (a, b) in enumerate(((0, 2), (1, 3))):
        x, y = offsets[slot]
        canvas[:, y:y + 64, x:x + 64] = (faces64[a] + faces64[b]) / 2
    template = ffhq_template(512).float() * 64 / 512
    frames, dets = [], []
    for slots in order:
        lms = torch.stack([template + torch.tensor(offsets[s], dtype=torch.float32) for s in slots])
        boxes = torch.stack([torch.tensor([x, y, x + 64, y + 64], dtype=torch.float32)
                             for x, y in (offsets[s] for s in slots)])
        frames.append(canvas)
        dets.append(FaceDetections(boxes, lms, torch.full((len(slots),), 0.9)))
    return torch.stack(frames), dets


def test_a_tracked_person_gets_the_same_noise_in_every_frame(faces64, one_thread):
    """Two identical frames whose detector lists the two people in opposite orders: tracked, each person is
    restored with the same noise in both frames (the frames come out identical); untracked, the noise follows the
    list position and the frames differ."""
    from types import SimpleNamespace

    from analytic_prior import linear_alphas_cumprod
    from bfr_core.restoration.pipeline import restore_images
    from bfr_core.restoration.restorer import FaceRestorer

    frames, dets = _two_face_frames(faces64, [(0, 1), (1, 0)])
    # A prior that predicts no noise at all: every bit of the sampler's noise stays in the result (the analytic
    # prior would pull both seeds onto the same face and hide the difference).
    keep_noise = SimpleNamespace(model=lambda x, t: torch.zeros_like(x), alphas_cumprod=linear_alphas_cumprod(),
                                 sample_size=64, in_channels=3, learned_variance=False)
    restorer = FaceRestorer(keep_noise, strength=0.3, steps=4, sampler="ddim", eta=1.0)
    tracked = restore_images(frames, None, restorer, crop_size=64, seed=5, detections=track_faces(dets))
    assert tracked.faces.track_id.tolist() == [0, 1, 1, 0]
    assert torch.equal(tracked.images[0], tracked.images[1])
    untracked = restore_images(frames, None, restorer, crop_size=64, seed=5, detections=dets)
    assert (untracked.images[0] - untracked.images[1]).abs().max() > 0.01


def test_restore_images_blends_per_track_across_chunks(faces64):
    """TrackMemory in restore_images: chunk 2's restored crop is the moving average with chunk 1's, per track."""
    from bfr_core.restoration.pipeline import PasteOptions, restore_images

    frames, dets = _two_face_frames(faces64, [(0, 1), (1, 0)])
    frames = frames.clone()
    frames[1] = (frames[1] * 0.8).clamp(0, 1)  # the second frame darker
    tracked = track_faces(dets)
    plain = restore_images(frames, None, None, crop_size=64, detections=tracked)
    memory = TrackMemory(blend=0.25)
    first = restore_images(frames[:1], None, None, crop_size=64, detections=tracked[:1], temporal=memory)
    second = restore_images(frames[1:], None, None, crop_size=64, detections=tracked[1:], temporal=memory)
    torch.testing.assert_close(first.restored, plain.restored[:2])
    # frame 1 lists track 1 first: its crops blend with frame 0's crops of the same tracks (0 ↔ 1 swapped)
    expected = 0.25 * plain.restored[:2].flip(0) + 0.75 * plain.restored[2:]
    torch.testing.assert_close(second.restored, expected)
    assert memory.frame == 2
    # Colour matching against the track's averaged input: frame 1's faces get the mean of both frames' colours
    # (mean_std on a uniformly darker copy is exact), where matching to the frame's own crop changes nothing.
    memory = TrackMemory(color=0.5)
    opts = PasteOptions(color_match="mean_std")
    restore_images(frames[:1], None, None, paste=opts, crop_size=64, detections=tracked[:1], temporal=memory)
    steady = restore_images(frames[1:], None, None, paste=opts, crop_size=64, detections=tracked[1:], temporal=memory)
    own = restore_images(frames[1:], None, None, paste=opts, crop_size=64, detections=tracked[1:])
    face = steady.coverage[0] > 0.99
    mid = (frames[0] + frames[1]) / 2
    assert (steady.images[0] - mid).abs()[:, face].mean() < 0.01
    assert (own.images[0] - frames[1]).abs()[:, face].mean() < 0.01


def test_kalman_follows_a_steady_pan_without_lag_and_removes_jitter():
    """Constant velocity + 1 px noise: the constant-velocity Kalman filter's steady-state lag is ~0 (a One-Euro
    filter trails), and the jitter is at least 3x lower than the raw landmarks'."""
    from bfr_core.faces.smoothing import KalmanFilter, smooth_points

    g = torch.Generator().manual_seed(2)
    fps, v = 30.0, 90.0
    t = torch.arange(150, dtype=torch.float64) / fps
    truth = _face(100, 100)[1].double()[None] + torch.stack([v * t, 0.5 * v * t], -1)[:, None]
    noisy = truth + torch.randn(truth.shape, generator=g, dtype=torch.float64)
    opts = SmoothingOptions(fps=fps, method="kalman", process_noise=0.5, measurement_noise=0.01)
    out = smooth_points(noisy, opts, size=SIZE)
    lag = (truth[60:] - out[60:]).mean((0, 1))
    assert lag.abs().max() < 0.3  # px, against 3 px of motion per frame
    euro_lag = (truth[60:] - one_euro(noisy, opts, size=SIZE)[60:]).mean((0, 1))
    assert euro_lag[0] > 1.0
    jitter = lambda x: (x[61:] - x[60:-1] - (truth[61:] - truth[60:-1])).norm(dim=-1).mean()  # noqa: E731
    assert jitter(out) * 3 < jitter(noisy)
    # Still face: it moves at least 3x less from frame to frame than the raw landmarks, and stays near the truth.
    still = truth[:1].expand(150, -1, -1) + torch.randn(150, 5, 2, generator=g, dtype=torch.float64)
    out = smooth_points(still, opts, size=SIZE)
    shake = lambda x: (x[31:] - x[30:-1]).norm(dim=-1).mean()  # noqa: E731
    assert shake(out) * 3 < shake(still)
    assert (out[30:] - truth[0]).norm(dim=-1).mean() < (still[30:] - truth[0]).norm(dim=-1).mean()
    with pytest.raises(ValueError, match="method"):
        SmoothingOptions(method="median")
    f = KalmanFilter(opts)
    f.filter(torch.zeros(5, 2), 0.0)
    with pytest.raises(ValueError, match="time must increase"):
        f.filter(torch.zeros(5, 2), 0.0)


# ------------------------------------------------------------------------------------------------ look-ahead (RTS)
def _eased_pan(n: int, fps: float, g: torch.Generator, noise: float = 1.0):
    """A face panning with cosine easing (it speeds up, then slows down: 60 px over n frames) and its noisy
    landmarks: the truth [n, 5, 2] and the measurements."""
    t = torch.arange(n, dtype=torch.float64)
    move = 60 * (1 - torch.cos(math.pi * t / (n - 1))) / 2
    truth = _face(100, 100)[1].double()[None] + torch.stack([move, move / 3], -1)[:, None]
    return truth, truth + noise * torch.randn(truth.shape, generator=g, dtype=torch.float64)


def test_rts_smoother_has_no_lag_and_removes_jitter():
    """kalman_rts: no lag where the causal Kalman filter trails (a pan that speeds up), no lag on a steady ramp
    either, jitter >= 3x lower than raw on the ramp and on a still face."""
    from bfr_core.faces.smoothing import smooth_points

    g = torch.Generator().manual_seed(3)
    fps, n = 24.0, 48
    truth, noisy = _eased_pan(n, fps, g)
    causal = smooth_points(noisy, SmoothingOptions(fps=fps, method="kalman"), size=SIZE)
    rts = smooth_points(noisy, SmoothingOptions(fps=fps, method="kalman_rts"), size=SIZE)
    lag = lambda out: (out[:n // 2] - truth[:n // 2])[..., 0].mean()  # noqa: E731  signed, while speeding up
    assert lag(causal) < -0.4 and abs(lag(rts)) < 0.25 and abs(lag(rts)) * 4 < abs(lag(causal))
    jitter = lambda x: (x[1:] - x[:-1] - (truth[1:] - truth[:-1])).norm(dim=-1).mean()  # noqa: E731
    assert jitter(rts) * 3 < jitter(causal) and jitter(rts) * 3 < jitter(noisy)
    # Constant velocity: ~zero mean error over the ramp, jitter >= 3x lower than raw.
    t = torch.arange(n, dtype=torch.float64)[:, None, None]
    ramp = _face(100, 100)[1].double()[None] + torch.tensor([4.0, 1.5], dtype=torch.float64) * t
    noisy = ramp + torch.randn(ramp.shape, generator=g, dtype=torch.float64)
    out = smooth_points(noisy, SmoothingOptions(fps=fps, method="kalman_rts"), size=SIZE)
    assert (out - ramp).mean((0, 1)).abs().max() < 0.15  # px, against 4 px of motion per frame
    truth = ramp
    assert jitter(out) * 3 < jitter(noisy)
    # Still face: steadier than the raw landmarks and nearer the truth.
    still = ramp[:1].expand(n, -1, -1) + torch.randn(n, 5, 2, generator=g, dtype=torch.float64)
    out = smooth_points(still, SmoothingOptions(fps=fps, method="kalman_rts"), size=SIZE)
    shake = lambda x: (x[1:] - x[:-1]).norm(dim=-1).mean()  # noqa: E731
    assert shake(out) * 3 < shake(still)
    assert (out - ramp[0]).norm(dim=-1).mean() < (still - ramp[0]).norm(dim=-1).mean() / 2


def test_rts_fixed_lag_is_chunk_independent_and_matches_the_whole_clip():
    """A frame's estimate uses the next `lookahead` frames only: chunked pushes equal one pass; with a look-ahead
    of the whole clip it is the fixed-interval RTS smoother; lookahead 0 is the causal Kalman filter."""
    from bfr_core.faces.smoothing import KalmanSmoother, rts_smooth, smooth_points

    g = torch.Generator().manual_seed(4)
    fps, n = 24.0, 40
    _, noisy = _eased_pan(n, fps, g)
    opts = SmoothingOptions(fps=fps, method="kalman_rts", lookahead=6)
    whole = rts_smooth(noisy, opts, size=SIZE)
    assert torch.allclose(smooth_points(noisy, SmoothingOptions(fps=fps, method="kalman_rts", lookahead=n),
                                        size=SIZE), whole, atol=1e-9)
    assert torch.allclose(smooth_points(noisy, SmoothingOptions(fps=fps, method="kalman_rts", lookahead=0),
                                        size=SIZE), smooth_points(noisy, SmoothingOptions(fps=fps, method="kalman"),
                                                                  size=SIZE), atol=1e-9)
    fixed = smooth_points(noisy, opts, size=SIZE)
    assert (fixed[-6:] - whole[-6:]).abs().max() < 1e-9  # the last frames see the whole rest of the clip
    assert (fixed - whole).norm(dim=-1).mean() < 0.3  # 6 frames of look-ahead: near the whole clip's (1 px noise)
    s = KalmanSmoother(opts)
    assert len(s.states) == 0
    with pytest.raises(ValueError, match="no measurement"):
        s.pop()
    # Through the tracker: two faces, chunks of any size, pushes trail by `lookahead` frames, flush gives the rest.
    frames = []
    for i in range(n):
        d = _frame((150 + 2 * i, 150), (400, 150))
        frames.append(FaceDetections(d.boxes, d.landmarks + torch.randn(2, 5, 2, generator=g), d.scores))
    one = track_faces(frames, smoothing=opts)
    assert len(one) == n
    tracker = FaceTracker(smoothing=opts)
    assert tracker.delay == 6
    with pytest.raises(ValueError, match="push"):
        tracker.update(frames[0])
    chunked, sizes = [], []
    for lo, hi in ((0, 3), (3, 17), (17, n)):
        ready = [t for d in frames[lo:hi] for t in tracker.push(d)]
        sizes.append(len(ready))
        chunked += ready
    chunked += tracker.flush()
    assert sizes == [0, 11, 23] and len(chunked) == n
    for a, b in zip(one, chunked):
        assert torch.equal(a.landmarks, b.landmarks) and torch.equal(a.track_ids, b.track_ids)
        assert torch.equal(a.boxes, b.boxes)
    with pytest.raises(ValueError, match="lookahead"):
        SmoothingOptions(method="kalman_rts", lookahead=-1)
    assert FaceTracker(smoothing=SmoothingOptions(method="kalman", lookahead=6)).delay == 0
    causal = FaceTracker(smoothing=SmoothingOptions(method="kalman_rts", lookahead=0))
    assert causal.delay == 0 and len(causal.update(frames[0])) == 2
    assert not isinstance(causal.tracks[0].smoother, KalmanSmoother)  # keeps no states


def test_rts_tracks_with_gaps_and_new_faces():
    """Faces that come and go inside the look-ahead window: every frame comes out once, in order, with its faces'
    ids, and a face seen in a single frame keeps its detected landmarks."""
    g = torch.Generator().manual_seed(5)
    frames = []
    for i in range(20):
        centres = [(150 + i, 150)] + ([(400, 150)] if i % 5 else []) + ([(300, 400)] if i == 12 else [])
        d = _frame(*centres)
        frames.append(FaceDetections(d.boxes, d.landmarks + 0.5 * torch.randn(d.landmarks.shape, generator=g),
                                     d.scores))
    out = track_faces(frames, TrackOptions(max_gap=0), SmoothingOptions(method="kalman_rts", lookahead=4))
    assert [len(d) for d in out] == [len(d) for d in frames]
    lone = int(out[12].track_ids[-1])  # the face seen in one frame only
    assert [i for i, d in enumerate(out) if lone in d.track_ids.tolist()] == [12]
    assert torch.allclose(out[12].landmarks[-1], frames[12].landmarks[-1])
    assert [int(d.track_ids[0]) for d in out] == [0] * 20


def test_streaming_state_stays_bounded_however_long_the_clip():
    """What a clip's stream keeps (tracker: open tracks, frames waiting for the look-ahead, smoother states; the
    TrackMemory's stored crops) depends on the faces of the last max_gap frames, not on the clip's length: people
    keep walking through the picture (one enters every 4 frames and stays 12), 200 frames."""
    g = torch.Generator().manual_seed(0)
    max_gap, lookahead = 10, 5
    tracker = FaceTracker(TrackOptions(max_gap=max_gap), SmoothingOptions(method="kalman_rts", lookahead=lookahead))
    memory = TrackMemory(blend=0.5, color=0.5, max_gap=max_gap)
    sizes, ids = [], set()
    for i in range(200):
        people = [k for k in range(max(0, i // 4 - 3), i // 4 + 1) if 4 * k <= i < 4 * k + 12]
        for d in tracker.push(_frame(*[(150 + 250 * (k % 6) + (i - 4 * k), 200) for k in people])):
            crops = torch.rand(len(d), 3, 4, 4, generator=g)
            index = torch.zeros(len(d), dtype=torch.long)
            memory.restored(crops, d.track_ids, index)
            memory.color_reference(crops, d.track_ids, index)
            memory.advance(1)
            ids.update(d.track_ids.tolist())
        sizes.append({**tracker.sizes(), **{f"memory_{k}": v for k, v in memory.sizes().items()}})
    # one id per person who entered before the last look-ahead window (the rest still waits for later frames)
    assert len(ids) == len([k for k in range(50) if 4 * k < 200 - lookahead]) == 49
    # Periodic input, so the steady state repeats: what is held after 200 frames is what was held after 100.
    assert sizes[199] == sizes[99]
    for key in sizes[0]:
        assert max(s[key] for s in sizes[100:]) == max(s[key] for s in sizes[50:100]), key
    concurrent = 3 + max_gap // 4 + 1  # on screen + those that left less than max_gap frames ago
    assert max(s["tracks"] for s in sizes) <= concurrent
    assert max(s["pending"] for s in sizes) == lookahead
    assert max(s["smoother_states"] for s in sizes) <= 3 * (lookahead + 1) + lookahead
    assert max(max(s["memory_restored"], s["memory_color"]) for s in sizes) <= concurrent
