"""Steady landmarks: a One-Euro filter (Casiez, Roussel & Vogel, CHI 2012) or a constant-velocity Kalman filter
over a face track's landmarks.

A first-order low-pass whose cutoff rises with the signal's speed: a still face is filtered hard (its detected
landmarks jitter by a pixel or two from frame to frame, so its aligned crop would shake), a moving one lightly (no
lag on real motion). Per frame, with te = the time since the previous sample:

    dx  = (x − x̂_prev) / te,           d̂x = low-pass(dx, d_cutoff)
    fc  = min_cutoff + beta · speed,   x̂  = low-pass(x, fc),    low-pass(v, fc) = x̂_prev + α (v − x̂_prev),
    α(fc) = 1 / (1 + 1 / (2π fc te))

Times are in seconds (frame index / fps) and cutoffs in Hz. Unlike the paper, ``speed`` is measured in face sizes
per second (the mean landmark speed divided by the face's size), so one ``beta`` suits small and large faces alike,
and one cutoff is used for all 5 points of a face, so the landmark constellation is filtered as a whole (the
alignment's similarity transform does not warp from uneven smoothing). Batched over faces: x is [..., P, 2].

The Kalman filter (``method="kalman"``) models each coordinate as position + velocity with white acceleration
noise of ``process_noise`` face sizes/s² and measurement noise of ``measurement_noise`` face sizes (KEEP filters
its keypoints this way). It follows a steady pan or zoom without lag (a One-Euro filter always trails a moving
face a little) and smooths as hard as the two noise levels say; it lags only while the motion changes speed.

Both are causal: a frame's estimate uses only that frame and earlier ones, so a face that speeds up is trailed for a
few frames. Where later frames are available (files, IMAGE batches), ``method="kalman_rts"`` runs the same Kalman
filter forward and a Rauch-Tung-Striebel backward pass over the following ``lookahead`` frames (a fixed-lag
smoother: frame k's estimate uses the measurements up to frame k + lookahead). It has no lag on changes of speed
either, and smooths with the frames on both sides. `KalmanSmoother` keeps only the last ``lookahead`` + 1 states per
face, so a stream's memory stays constant; its estimates come out ``lookahead`` frames late (see
`faces.tracking.FaceTracker.push`). A fixed-lag estimate depends only on the frames up to k + lookahead, so any
chunking of the stream gives the same result, and equals the whole-clip (fixed-interval) RTS smoother when
``lookahead`` >= the clip's length.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import torch
from torch import Tensor


SMOOTHING_METHODS = ("one_euro", "kalman", "kalman_rts")
LOOKAHEAD_METHODS = ("kalman_rts",)  # methods whose estimates need later frames


@dataclass(frozen=True)
class SmoothingOptions:
    """Landmark filter settings. One-Euro: min_cutoff (Hz): lower = steadier still faces, more lag on slow motion;
    beta (per face size): higher = less lag on fast motion; d_cutoff (Hz): smoothing of the speed estimate.
    Kalman: process_noise (face sizes/s²): higher = follows changes of speed sooner, smooths less;
    measurement_noise (face sizes): the detector's landmark noise. kalman_rts: the Kalman settings plus lookahead
    (frames of later measurements each estimate uses; the estimates come out that many frames late). fps: frame
    rate of the frames' times (video files give theirs; 30 for image batches)."""

    min_cutoff: float = 0.5
    beta: float = 4.0
    d_cutoff: float = 1.0
    fps: float = 30.0
    method: str = "one_euro"
    process_noise: float = 0.5
    measurement_noise: float = 0.01
    lookahead: int = 15

    def __post_init__(self) -> None:
        if self.method not in SMOOTHING_METHODS:
            raise ValueError(f"smoothing method must be one of {SMOOTHING_METHODS}, got {self.method!r}")
        for name in ("min_cutoff", "d_cutoff", "fps", "process_noise", "measurement_noise"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"smoothing {name} must be a positive number, got {v!r}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"smoothing beta must be >= 0, got {self.beta!r}")
        if isinstance(self.lookahead, bool) or int(self.lookahead) != self.lookahead or self.lookahead < 0:
            raise ValueError(f"smoothing lookahead must be a whole number of frames >= 0, got {self.lookahead!r}")

    @property
    def delay(self) -> int:
        """Frames by which this method's estimates trail the measurements (0 for the causal filters)."""
        return int(self.lookahead) if self.method in LOOKAHEAD_METHODS else 0


def smoothing_factor(cutoff: Tensor, te: Tensor) -> Tensor:
    """α of a first-order low-pass with this cutoff (Hz) sampled every te seconds."""
    return 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * te))


class OneEuroFilter:
    """Streaming One-Euro filter of points [..., P, 2] (e.g. [F, 5, 2] for F faces followed together).

    ``filter(x, t, size)``: x the new points, t the time in seconds (increasing), size [...] the faces' sizes in
    pixels (speeds are divided by them). The first call returns x unchanged.
    """

    def __init__(self, options: SmoothingOptions | None = None) -> None:
        self.options = options or SmoothingOptions()
        self.x: Tensor | None = None  # filtered points
        self.dx: Tensor | None = None  # filtered velocity (pixels / s)
        self.t: float | None = None

    def filter(self, x: Tensor, t: float, size: Tensor | float = 1.0) -> Tensor:
        o = self.options
        x = x.double()
        if self.x is None or self.t is None:
            self.x, self.dx, self.t = x.clone(), torch.zeros_like(x), float(t)
            return x.clone()
        te_f = float(t) - self.t
        if te_f <= 0:
            raise ValueError(f"One-Euro filter: time must increase (got {t} after {self.t})")
        te = torch.tensor(te_f, dtype=torch.float64)
        dx = (x - self.x) / te
        self.dx = self.dx + smoothing_factor(torch.tensor(o.d_cutoff, dtype=torch.float64), te) * (dx - self.dx)
        size_t = torch.as_tensor(size, dtype=torch.float64).clamp_min(1e-6)
        speed = self.dx.norm(dim=-1).mean(-1) / size_t  # [...]: face sizes per second, one value per face
        cutoff = o.min_cutoff + o.beta * speed
        alpha = smoothing_factor(cutoff, te)[..., None, None]
        self.x = self.x + alpha * (x - self.x)
        self.t = float(t)
        return self.x.clone()


class KalmanFilter:
    """Streaming constant-velocity Kalman filter of points [..., P, 2], with `OneEuroFilter`'s interface.

    Every coordinate is [position, velocity] with the same model and measurement times, so one 2×2 covariance per
    face serves all its coordinates. Noise levels scale with the face's size (``size`` [...], pixels).
    """

    def __init__(self, options: SmoothingOptions | None = None) -> None:
        self.options = options or SmoothingOptions(method="kalman")
        self.x: Tensor | None = None  # positions
        self.v: Tensor | None = None  # velocities (pixels / s)
        self.cov: Tensor | None = None  # [..., 2, 2] covariance of (position, velocity), pixels
        self.t: float | None = None
        # the last step's prediction (None after the first measurement): positions, velocities, covariance, time step
        self.predicted: tuple[Tensor, Tensor, Tensor, float] | None = None

    def filter(self, x: Tensor, t: float, size: Tensor | float = 1.0) -> Tensor:
        o = self.options
        x = x.double()
        size_t = torch.as_tensor(size, dtype=torch.float64).clamp_min(1e-6).expand(x.shape[:-2])
        r = (o.measurement_noise * size_t) ** 2  # [...]
        if self.x is None or self.t is None:
            self.x, self.v, self.t = x.clone(), torch.zeros_like(x), float(t)
            big = (10 * size_t) ** 2  # velocity unknown: wide prior
            self.cov = torch.stack([torch.stack([r, torch.zeros_like(r)], -1),
                                    torch.stack([torch.zeros_like(r), big], -1)], -2)
            self.predicted = None
            return x.clone()
        te = float(t) - self.t
        if te <= 0:
            raise ValueError(f"Kalman filter: time must increase (got {t} after {self.t})")
        q = (o.process_noise * size_t) ** 2
        f = torch.tensor([[1.0, te], [0.0, 1.0]], dtype=torch.float64)
        g = torch.tensor([[te ** 4 / 4, te ** 3 / 2], [te ** 3 / 2, te ** 2]], dtype=torch.float64)
        cov = f @ self.cov @ f.T + q[..., None, None] * g  # predict
        pred = self.x + self.v * te
        self.predicted = (pred, self.v, cov, te)
        s = cov[..., 0, 0] + r
        k_pos, k_vel = (cov[..., 0, 0] / s)[..., None, None], (cov[..., 1, 0] / s)[..., None, None]
        innovation = x - pred
        self.x, self.v = pred + k_pos * innovation, self.v + k_vel * innovation
        gain = torch.stack([cov[..., 0, 0] / s, cov[..., 1, 0] / s], -1)[..., :, None]  # [..., 2, 1]
        self.cov = cov - gain @ cov[..., :1, :]  # (I − K H) P
        self.t = float(t)
        return self.x.clone()


class KalmanSmoother(KalmanFilter):
    """Fixed-lag Rauch-Tung-Striebel smoother over `KalmanFilter`: ``filter`` runs the forward filter and keeps its
    states; ``pop()`` returns the smoothed points of the oldest kept measurement given all the later ones kept (call
    it once the ``lookahead`` following measurements are in, or at the end of the stream) and forgets that state.
    At most ``lookahead`` + 1 states need to be kept."""

    def __init__(self, options: SmoothingOptions | None = None) -> None:
        super().__init__(options or SmoothingOptions(method="kalman_rts"))
        # per measurement: filtered positions, velocities, covariance; its prediction (None for the first)
        self.states: deque[tuple[Tensor, Tensor, Tensor, tuple | None]] = deque()

    def filter(self, x: Tensor, t: float, size: Tensor | float = 1.0) -> Tensor:
        out = super().filter(x, t, size)
        self.states.append((self.x, self.v, self.cov, self.predicted))
        return out

    def pop(self) -> Tensor:
        """Smoothed points of the oldest kept measurement (backward pass from the newest)."""
        if not self.states:
            raise ValueError("Kalman smoother: no measurement left to smooth")
        xs, vs, _, pred_next = self.states[-1]
        for x, v, cov, pred in reversed(list(self.states)[:-1]):
            px, pv, pcov, te = pred_next
            # G = P F^T (P⁻)^-1 with F = [[1, te], [0, 1]]
            f = torch.tensor([[1.0, te], [0.0, 1.0]], dtype=torch.float64)
            g = cov @ f.T @ torch.linalg.inv(pcov)
            dx, dv = xs - px, vs - pv
            g = g[..., None, None, :, :]  # per face, broadcast over the points' coordinates
            xs, vs = x + g[..., 0, 0] * dx + g[..., 0, 1] * dv, v + g[..., 1, 0] * dx + g[..., 1, 1] * dv
            pred_next = pred
        self.states.popleft()
        return xs.clone()


def make_filter(options: SmoothingOptions) -> OneEuroFilter | KalmanFilter:
    if options.method == "kalman_rts" and options.delay:
        return KalmanSmoother(options)
    if options.method == "kalman_rts":  # no look-ahead: the causal filter (a smoother would keep every state)
        return KalmanFilter(options)
    return KalmanFilter(options) if options.method == "kalman" else OneEuroFilter(options)


def rts_smooth(points: Tensor, options: SmoothingOptions | None = None, size: Tensor | float = 1.0) -> Tensor:
    """Fixed-interval RTS smoothing of a whole sequence of points [T, ..., P, 2] sampled every 1/fps seconds (every
    estimate uses all T measurements; ``lookahead`` is ignored). Same shape, float64."""
    f = KalmanSmoother(replace(options or SmoothingOptions(), method="kalman_rts"))
    fps = f.options.fps
    for i in range(points.shape[0]):
        f.filter(points[i], i / fps, size)
    return torch.stack([f.pop() for _ in range(points.shape[0])])


def smooth_points(points: Tensor, options: SmoothingOptions | None = None, size: Tensor | float = 1.0) -> Tensor:
    """A filtered sequence of points [T, ..., P, 2] sampled every 1/fps seconds (same shape, float64). kalman_rts:
    each estimate uses the following ``lookahead`` measurements (the last ones, those up to the end)."""
    f = make_filter(options or SmoothingOptions())
    fps, out = f.options.fps, []
    for i in range(points.shape[0]):
        causal = f.filter(points[i], i / fps, size)
        if isinstance(f, KalmanSmoother):
            if i >= f.options.lookahead:
                out.append(f.pop())
        else:
            out.append(causal)
    while isinstance(f, KalmanSmoother) and f.states:
        out.append(f.pop())
    return torch.stack(out)


def one_euro(points: Tensor, options: SmoothingOptions | None = None, size: Tensor | float = 1.0) -> Tensor:
    """One-Euro filtered sequence of points [T, ..., P, 2] sampled every 1/fps seconds (same shape, float64)."""
    return smooth_points(points, replace(options or SmoothingOptions(), method="one_euro"), size)
