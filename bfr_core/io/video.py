"""Video files ↔ frame tensors with PyAV (which ComfyUI installs), streamed in chunks so memory does not grow with
the clip's length.

`read_video` yields [n, 3, H, W] float32 RGB chunks in [0, 1]; `VideoWriter` encodes frames with the source's
timestamps (same frame count, frame rate and size) into the same container type, and copies the source's audio
streams packet by packet (no re-encoding) when the container has audio. Results appear whole or not at all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .atomic import publish, temp_beside

if TYPE_CHECKING:  # torch and numpy load on first use: the CLI imports this module for VIDEO_SUFFIXES
    import numpy as np
    from torch import Tensor

# suffix → (container format, video encoder, encoder options); libx264 CRF 16 is visually lossless for faces.
CONTAINERS = {
    ".mp4": ("mp4", "libx264", {"crf": "16", "preset": "medium"}),
    ".m4v": ("mp4", "libx264", {"crf": "16", "preset": "medium"}),
    ".mov": ("mov", "libx264", {"crf": "16", "preset": "medium"}),
    ".mkv": ("matroska", "libx264", {"crf": "16", "preset": "medium"}),
    ".webm": ("webm", "libvpx-vp9", {"crf": "20", "b": "0"}),
    ".avi": ("avi", "mpeg4", {"qscale": "2"}),
}
VIDEO_SUFFIXES = tuple(CONTAINERS)


class VideoReadError(ValueError):
    """A video file that cannot be opened or decoded (the message names the file)."""


def import_av():
    try:
        import av
    except ImportError:  # ComfyUI installs PyAV; a bare library install may not have it
        raise ValueError("reading and writing video files needs PyAV: pip install av") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frames: int  # as the container states it (0 when it does not say)
    fps: Fraction  # average frame rate
    time_base: Fraction
    has_audio: bool


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, frame count, frame rate and audio presence of a video file (ValueError naming the file if unreadable)."""
    av = import_av()
    if not Path(path).is_file():
        raise VideoReadError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise VideoReadError(f"{path}: the video stream states no frame rate")
            return VideoInfo(stream.codec_context.width, stream.codec_context.height, int(stream.frames or 0),
                             Fraction(rate), Fraction(stream.time_base), bool(container.streams.audio))
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"cannot read video {path}: {exc}") from None


def frames_to_tensor(frames: list[np.ndarray]) -> Tensor:
    import numpy as np
    import torch

    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255)


def read_video(path: str | os.PathLike, chunk: int = 16) -> Iterator[tuple[Tensor, list[int | None]]]:
    """Chunks of decoded frames: ([n, 3, H, W] float32 RGB in [0, 1], their timestamps in the stream's time base)."""
    av = import_av()
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 frame, got {chunk}")
    probe_video(path)
    frames: list[np.ndarray] = []
    pts: list[int | None] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                pts.append(frame.pts)
                if len(frames) == chunk:
                    yield frames_to_tensor(frames), pts
                    frames, pts = [], []
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"cannot decode video {path}: {exc}") from None
    if frames:
        yield frames_to_tensor(frames), pts


class VideoWriter:
    """Writes frames like ``source``'s: same container type (by ``path``'s suffix), size, timestamps and audio.

    ``write(frames, pts)`` takes [n, 3, H, W] in [0, 1] with the timestamps `read_video` gave; ``close()``
    finishes the video, copies the audio packets and publishes the file (use as a context manager; an exception
    inside leaves no file behind).
    """

    def __init__(self, path: str | os.PathLike, source: str | os.PathLike) -> None:
        av = import_av()
        self.path, self.source = Path(path), Path(source)
        suffix = self.path.suffix.lower()
        if suffix not in CONTAINERS:
            raise ValueError(f"cannot write {self.path.name}: video files must end in {', '.join(VIDEO_SUFFIXES)}")
        fmt, codec, options = CONTAINERS[suffix]
        info = probe_video(source)
        self.info = info
        fd, self.tmp = temp_beside(self.path)
        os.close(fd)
        self.container = av.open(str(self.tmp), "w", format=fmt)
        self.stream = self.container.add_stream(codec, rate=info.fps, options=dict(options))
        self.stream.width, self.stream.height = info.width, info.height
        # 4:2:0 needs even sides; odd-sized sources keep their size in 4:4:4 rather than being cropped
        even = info.width % 2 == 0 and info.height % 2 == 0
        self.stream.pix_fmt = "yuv420p" if even or codec == "mpeg4" else "yuv444p"
        self.stream.codec_context.time_base = info.time_base
        self.audio = []
        with av.open(str(source)) as src:
            for a in src.streams.audio:
                self.audio.append((a.index, self.container.add_stream_from_template(a)))
        self.count = 0
        self.next_pts = 0

    def write(self, frames: Tensor, pts: list[int | None] | None = None) -> None:
        import torch

        av = import_av()
        if frames.ndim != 4 or frames.shape[1] != 3 or tuple(frames.shape[-2:]) != (self.info.height, self.info.width):
            raise ValueError(f"frames must be [n, 3, {self.info.height}, {self.info.width}], got {tuple(frames.shape)}")
        arr = (frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
               .contiguous().cpu().numpy())
        step = max(1, round(1 / (self.info.fps * self.info.time_base)))  # ticks per frame, for missing stamps
        for i, rgb in enumerate(arr):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            p = pts[i] if pts is not None and pts[i] is not None else self.next_pts
            frame.pts, frame.time_base = p, self.info.time_base
            self.next_pts = p + step
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.count += 1

    def close(self) -> None:
        av = import_av()
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
            if self.audio:
                outputs = dict(self.audio)
                with av.open(str(self.source)) as src:
                    for packet in src.demux(*[src.streams[i] for i in outputs]):
                        if packet.dts is None:  # demuxers end each stream with an empty packet
                            continue
                        packet.stream = outputs[packet.stream.index]
                        self.container.mux(packet)
            self.container.close()
            publish(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 — the half-written file is deleted anyway
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
