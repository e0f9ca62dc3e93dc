"""Video files ↔ frame tensors with PyAV (which ComfyUI installs), streamed in chunks so memory does not grow with
the clip's length.

`read_video` yields [n, 3, H, W] float32 RGB chunks in [0, 1], upright: a rotation the file asks players to apply
(a phone's display matrix, the old "rotate" tag) is applied on read, as players and OpenCV do, so faces stand
upright for detection. `VideoWriter` encodes frames with the source's timestamps (same frame count, frame rate and
displayed size) into the same container type, upright and without a rotation, and copies the source's audio streams
packet by packet (no re-encoding) when the container has audio. Audio packets are muxed as the video reaches their
time, not after it: the muxer waits for every stream before it writes, so audio kept for the end made it hold up to
its interleave limit (10 s) of encoded video. Results appear whole or not at all.
"""
from __future__ import annotations

import logging
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
log = logging.getLogger(__name__)


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
    width: int  # as displayed: the frames `read_video` yields (sides swapped by a quarter-turn rotation)
    height: int
    frames: int  # as the container states it (0 when it does not say)
    fps: Fraction  # average frame rate
    time_base: Fraction
    has_audio: bool
    rotation: int = 0  # degrees counter-clockwise that `read_video` turns the stored frames (0, 90, 180, 270)


def display_rotation(degrees: float | None, where: str = "") -> int:
    """A display rotation (degrees counter-clockwise, PyAV's ``VideoFrame.rotation``) as a quarter-turn multiple in
    0..270; one that is not within 1 degree of a quarter turn is ignored with a warning (as FFmpeg does)."""
    if not degrees:
        return 0
    quarter = round(degrees / 90)
    if abs(degrees - 90 * quarter) > 1:
        log.warning("%s: display rotation of %.1f degrees is not a quarter turn; frames are read as stored",
                    where, degrees)
        return 0
    return 90 * quarter % 360


def first_frame_rotation(container, path) -> int:
    """The display rotation of a container's first video frame (FFmpeg puts the stream's display matrix on every
    decoded frame; PyAV exposes no stream-level getter)."""
    for frame in container.decode(container.streams.video[0]):
        return display_rotation(frame.rotation, str(path))
    return 0


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
            w, h = stream.codec_context.width, stream.codec_context.height
            rotation = first_frame_rotation(container, path)
            if rotation in (90, 270):
                w, h = h, w
            return VideoInfo(w, h, int(stream.frames or 0), Fraction(rate), Fraction(stream.time_base),
                             bool(container.streams.audio), rotation)
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"cannot read video {path}: {exc}") from None


def frames_to_tensor(frames: list[np.ndarray]) -> Tensor:
    import numpy as np
    import torch

    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255)


def read_video(path: str | os.PathLike, chunk: int = 16) -> Iterator[tuple[Tensor, list[int | None]]]:
    """Chunks of decoded frames: ([n, 3, H, W] float32 RGB in [0, 1], their timestamps in the stream's time base)."""
    import numpy as np

    av = import_av()
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 frame, got {chunk}")
    # the stream's display rotation, read once (FFmpeg puts the same matrix on every frame; per frame it would also
    # repeat a non-quarter-turn warning for each one)
    quarter = probe_video(path).rotation // 90
    frames: list[np.ndarray] = []
    pts: list[int | None] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                frames.append(np.ascontiguousarray(np.rot90(rgb, quarter)) if quarter else rgb)
                pts.append(frame.pts)
                if len(frames) == chunk:
                    yield frames_to_tensor(frames), pts
                    frames, pts = [], []
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"cannot decode video {path}: {exc}") from None
    if frames:
        yield frames_to_tensor(frames), pts


class VideoWriter:
    """Writes frames like ``source``'s: same container type (by ``path``'s suffix), displayed size, timestamps and
    audio; upright, with no display rotation.

    ``write(frames, pts)`` takes [n, 3, H, W] in [0, 1] with the timestamps `read_video` gave, and muxes the
    source's audio packets up to the last frame's time; ``close()`` finishes the video, copies the rest of the audio
    and publishes the file (use as a context manager; an exception inside leaves no file behind).
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
        self.count = 0
        self.next_pts = 0
        # the source's audio, read alongside the video as it is written: (source stream index → output stream),
        # the packet iterator and the packet read ahead (the first one past the video written so far)
        self.audio: dict = {}
        self.audio_src = self.audio_packets = self.audio_next = None
        if info.has_audio:
            self.audio_src = av.open(str(source))
            for a in self.audio_src.streams.audio:
                self.audio[a.index] = self.container.add_stream_from_template(a)
            self.audio_packets = iter(self.audio_src.demux(*self.audio_src.streams.audio))

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
        self.mux_audio(self.next_pts * self.info.time_base)

    def mux_audio(self, until: Fraction | None) -> None:
        """Copies the source's audio packets that start before ``until`` seconds (None: all that are left)."""
        while self.audio_packets is not None:
            packet = self.audio_next or next(self.audio_packets, None)
            self.audio_next = None
            if packet is None:
                self.audio_packets = None
                return
            if packet.dts is None:  # demuxers end each stream with an empty packet
                continue
            start = packet.pts if packet.pts is not None else packet.dts
            if until is not None and start * packet.time_base >= until:
                self.audio_next = packet
                return
            packet.stream = self.audio[packet.stream.index]
            self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.mux_audio(None)
            self.container.close()
            publish(self.tmp, self.path)
        finally:
            self.close_source()
            self.tmp.unlink(missing_ok=True)

    def close_source(self) -> None:
        self.audio_packets = self.audio_next = None
        if self.audio_src is not None:
            self.audio_src.close()
            self.audio_src = None

    def abort(self) -> None:
        self.close_source()
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
