"""Test clips: tiny video files written with PyAV, and synthetic camera moves over a real photo.

`pan_zoom_frames` renders a known, smooth similarity motion (pan + zoom) of a photo into frames and returns the
per-frame transforms, so the true position of every landmark in every frame is known; `degrade_frames` degrades
each frame independently (blur, noise, JPEG), as a frame-by-frame restorer sees a real video. Used by
tests/test_video.py and bench/bench_video.py (which puts tests/ on sys.path).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor


def write_clip(path: str | Path, frames: np.ndarray, fps: int = 24, audio: bool = False, codec: str = "libx264",
               pix_fmt: str = "yuv420p", rotation: int = 0) -> None:
    """frames [T, H, W, 3] uint8 RGB → a video file; ``audio``: plus a mono AAC 440 Hz tone as long as the video;
    ``rotation``: a display matrix asking players to turn the frames this many degrees counter-clockwise (as phones
    write)."""
    import av

    t, h, w = frames.shape[:3]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if rotation:
            s.set_display_rotation(rotation)
        a = None
        if audio:
            a = c.add_stream("aac", rate=16000)
            a.layout = "mono"
        for arr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            n = int(16000 * t / fps)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.float32)[None]
            for k in range(0, n, 1024):
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, k:k + 1024]), format="fltp", layout="mono")
                f.sample_rate, f.pts = 16000, k
                for p in a.encode(f):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)


def pan_zoom_transforms(num_frames: int, shift: tuple[float, float] = (24.0, 8.0), zoom: float = 1.1,
                        base_scale: float = 1.0) -> np.ndarray:
    """[T, 2, 3] source → frame similarities of a smooth move: a cosine ease of ``shift`` px and ``zoom``×."""
    out = np.zeros((num_frames, 2, 3))
    for i in range(num_frames):
        u = 0.5 - 0.5 * np.cos(np.pi * i / max(1, num_frames - 1))  # smooth start and stop
        s = base_scale * (1 + (zoom - 1) * u)
        out[i] = [[s, 0, -shift[0] * u], [0, s, -shift[1] * u]]
    return out


def pan_zoom_frames(photo: np.ndarray, transforms: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The photo (RGB uint8) rendered through each transform into frames [T, h, w, 3] (size = (w, h))."""
    return np.stack([cv2.warpAffine(photo, m, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
                     for m in transforms])


def apply_transforms(points: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Points [..., 2] in the source mapped into every frame: [T, ..., 2]."""
    return np.stack([points @ m[:, :2].T + m[:, 2] for m in transforms])


def degrade_frames(frames: np.ndarray, seed: int = 0, noise: float = 6.0, jpeg: int = 60, blur: float = 0.8) -> np.ndarray:
    """Every frame degraded on its own: Gaussian blur, Gaussian noise (σ in 8-bit levels), JPEG."""
    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        x = cv2.GaussianBlur(f.astype(np.float32), (0, 0), blur) if blur > 0 else f.astype(np.float32)
        x = np.clip(x + rng.normal(0, noise, x.shape), 0, 255).round().astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", x[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), jpeg])
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    return np.stack(out)


def to_tensor(frames: np.ndarray) -> Tensor:
    """[T, H, W, 3] uint8 → [T, 3, H, W] float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255
