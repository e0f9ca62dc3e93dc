"""Video files (io/video.py) and video through the CLI: same frame count, rate and size, audio kept, chunks; detect
--json per frame with tracks; the same person restored with the same noise in every frame."""
from __future__ import annotations

import json
import os
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from bfr_core.cli import main
from conftest import shared_path
from video_clips import apply_transforms, degrade_frames, pan_zoom_frames, pan_zoom_transforms, write_clip

try:
    import av
except ImportError:  # the test extra installs PyAV (ComfyUI ships it); CI must not skip these silently
    if os.environ.get("CI"):
        raise
    pytest.skip("PyAV (av) is not installed", allow_module_level=True)


def _pattern(t: int, h: int, w: int) -> np.ndarray:
    """Frames whose content differs per frame (a moving bar on a ramp)."""
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, None]
    for i in range(t):
        frames[i, h // 4:h // 2, 2 + 3 * i:8 + 3 * i] = 255
    return frames


def _streams(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        fps, size = Fraction(v.average_rate), (v.codec_context.width, v.codec_context.height)
        audio = [(a.codec_context.name, a.sample_rate) for a in c.streams.audio]
        audio_packets = sum(1 for p in c.demux(*c.streams.audio) if p.dts is not None) if audio else 0
    with av.open(str(path)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    return dict(frames=frames, fps=fps, size=size, audio=audio, audio_packets=audio_packets)


@pytest.mark.parametrize("audio", [True, False])
def test_read_write_keeps_frames_rate_size_and_audio(tmp_path, audio):
    from bfr_core.io.video import VideoWriter, probe_video, read_video

    src = tmp_path / "clip.mp4"
    frames = _pattern(7, 48, 64)
    write_clip(src, frames, fps=25, audio=audio)
    info = probe_video(src)
    assert (info.width, info.height, info.fps, info.has_audio) == (64, 48, 25, audio)
    chunks = list(read_video(src, chunk=3))
    assert [c.shape[0] for c, _ in chunks] == [3, 3, 1]  # streamed, not read whole
    decoded = torch.cat([c for c, _ in chunks])
    assert decoded.shape == (7, 3, 48, 64) and decoded.dtype == torch.float32
    # The decoded frames are the written ones (up to the codec's loss).
    assert (decoded * 255 - torch.from_numpy(frames).permute(0, 3, 1, 2)).abs().mean() < 4
    out = tmp_path / "out" / "clip.mp4"
    with VideoWriter(out, src) as writer:
        for chunk, pts in chunks:
            writer.write(chunk, pts)
    a, b = _streams(src), _streams(out)
    assert a == b
    assert b["audio"] == ([("aac", 16000)] if audio else [])
    again = torch.cat([c for c, _ in read_video(out, chunk=16)])
    assert (again - decoded).abs().mean() < 2 / 255
    assert not list(out.parent.glob(".*.part"))  # no temp file left behind


def _packet_order(path) -> list[tuple[str, float]]:
    """(stream type, decoding time in s) of every packet in file order."""
    with av.open(str(path)) as c:
        return [(p.stream.type, float(p.dts * p.time_base)) for p in c.demux() if p.dts is not None]


def test_audio_is_interleaved_with_the_video_as_it_is_written(tmp_path):
    """The source's audio packets go to the muxer as the video reaches their time, not after all the video: the
    muxer writes a packet only once every stream has caught up, so audio kept for the end made it hold the encoded
    video (up to its 10 s interleave limit: memory growing with the clip). A 16 s clip at 4 fps in chunks of 2 s:
    no video packet reaches the muxer more than 1 s ahead of the audio, and every audio packet and time is kept."""
    from bfr_core.io.video import VideoWriter, read_video

    src = tmp_path / "long.mp4"
    write_clip(src, _pattern(64, 48, 64) // 2, fps=4, audio=True)  # 16 s
    out = tmp_path / "o" / "long.mp4"
    fed: list[tuple[str, float]] = []  # what the writer handed the muxer, in order: (stream type, decoding time)

    class Recorder:  # the output container, recording each packet it is given
        def __init__(self, container):
            self.container = container

        def mux(self, packet):
            fed.append((packet.stream.type, float(packet.dts * packet.time_base)))
            return self.container.mux(packet)

        def __getattr__(self, name):
            return getattr(self.container, name)

    with VideoWriter(out, src) as writer:
        writer.container = Recorder(writer.container)
        for chunk, pts in read_video(src, chunk=8):
            writer.write(chunk, pts)
    audio_until, ahead = -1.0, 0.0
    for kind, t in fed:
        if kind == "audio":
            audio_until = max(audio_until, t)
        else:
            ahead = max(ahead, t - audio_until)
    assert ahead < 1.0, f"video reached the muxer {ahead:.1f} s ahead of the audio: audio not interleaved"
    assert sum(k == "video" for k, _ in fed) == 64 and sum(k == "audio" for k, _ in fed) > 100
    a, b = _streams(src), _streams(out)
    assert a == b and b["frames"] == 64
    assert sorted(t for k, t in _packet_order(src) if k == "audio") == sorted(t for k, t in _packet_order(out)
                                                                              if k == "audio")


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_phone_video_is_read_upright_and_written_upright(tmp_path, rotation):
    """A display rotation (phones store landscape frames plus a display matrix) is applied on read like OpenCV's
    FFmpeg capture applies it (the reference), so faces stand upright for detection; the output holds the upright
    frames with no rotation (it plays like the source) and keeps frame count, rate and audio."""
    from bfr_core.io.video import VideoWriter, probe_video, read_video

    upright = _pattern(5, 64, 48)  # as a viewer sees it: 48 wide, 64 tall
    upright[:, :8, :12] = (255, 255, 0)  # a yellow top-left corner
    quarter = rotation // 90
    stored = np.ascontiguousarray(np.rot90(upright, -quarter, axes=(1, 2)))  # what the file holds before display
    src = tmp_path / "phone.mp4"
    write_clip(src, stored, fps=30, audio=True, rotation=rotation)
    with av.open(str(src)) as c:
        assert next(c.decode(video=0)).rotation % 360 == rotation % 360  # the file carries the display matrix
    info = probe_video(src)
    assert (info.width, info.height, info.rotation) == (48, 64, rotation % 360)
    frames = torch.cat([c for c, _ in read_video(src, chunk=2)])
    cap = cv2.VideoCapture(str(src))  # OpenCV applies the display rotation by default (CAP_PROP_ORIENTATION_AUTO)
    reference = []
    while (ok := cap.read())[0]:
        reference.append(ok[1][:, :, ::-1])
    cap.release()
    reference = torch.from_numpy(np.stack(reference).copy()).permute(0, 3, 1, 2).float() / 255
    assert frames.shape == reference.shape == (5, 3, 64, 48)
    assert (frames - reference).abs().max() < 2 / 255
    assert (frames * 255 - torch.from_numpy(upright).permute(0, 3, 1, 2)).abs().mean() < 4
    out = tmp_path / "o" / "phone.mp4"
    with VideoWriter(out, src) as writer:
        for chunk, pts in read_video(src, chunk=2):
            writer.write(chunk, pts)
    with av.open(str(out)) as c:
        assert next(c.decode(video=0)).rotation == 0
    assert probe_video(out).rotation == 0
    a, b = _streams(src), _streams(out)
    assert b["size"] == (48, 64) and a["size"] == (48, 64)[::(-1 if quarter % 2 else 1)]
    assert {k: v for k, v in a.items() if k != "size"} == {k: v for k, v in b.items() if k != "size"}
    assert (torch.cat([c for c, _ in read_video(out)]) - frames).abs().mean() < 2 / 255


def test_odd_size_and_other_containers(tmp_path):
    from bfr_core.io.video import VideoWriter, read_video

    src = tmp_path / "odd.mkv"
    write_clip(src, _pattern(3, 47, 63), fps=12, pix_fmt="yuv444p")
    out = tmp_path / "o" / "odd.mkv"
    with VideoWriter(out, src) as writer:
        for chunk, pts in read_video(src):
            writer.write(chunk, pts)
    assert _streams(out)["size"] == (63, 47) and _streams(out)["frames"] == 3


def test_video_errors_name_the_file(tmp_path):
    from bfr_core.io.video import VideoWriter, probe_video, read_video

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="broken.mp4"):
        probe_video(bad)
    with pytest.raises(ValueError, match="not found"):
        next(read_video(tmp_path / "missing.mp4"))
    src = tmp_path / "ok.mp4"
    write_clip(src, _pattern(2, 16, 16))
    with pytest.raises(ValueError, match=r"\.mp4"):
        VideoWriter(tmp_path / "x.gif", src)
    out = tmp_path / "half.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, src) as writer:
            writer.write(torch.rand(1, 3, 16, 16))
            raise RuntimeError("interrupted")
    assert not out.exists() and not list(tmp_path.glob(".*.part"))  # an aborted video leaves nothing
    with VideoWriter(tmp_path / "w.mp4", src) as writer:
        with pytest.raises(ValueError, match=r"\[n, 3, 16, 16\]"):
            writer.write(torch.rand(1, 3, 8, 8))


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory):
    """A 10-frame pan/zoom over a real photo (two people), each frame degraded on its own, with audio."""
    photo = cv2.imread(str(shared_path("images/whole/gfpgan_Blake_Lively.jpg")))[:, :, ::-1]
    small = cv2.resize(photo, (350, 232), interpolation=cv2.INTER_AREA)
    frames = degrade_frames(pan_zoom_frames(small, pan_zoom_transforms(10, (12, 4), 1.05), (320, 224)), seed=3)
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_clip(path, frames, fps=24, audio=True)
    return path


def test_cli_restores_a_video_file(face_clip, tmp_path, yunet_path, capsys):
    """`restore clip.mp4 -o OUT/` writes OUT/clip.mp4: same frames, rate, size and audio; faces pasted."""
    out = tmp_path / "OUT"
    code = main(["restore", str(face_clip), "-o", str(out), "--models-dir", str(yunet_path.parent),
                 "--align-only", "--chunk-frames", "4", "--color-match", "mean_std", "--crop-size", "64"])
    assert code == 0, capsys.readouterr().err
    assert (out / "clip.mp4").is_file() and not (out / "clip.png").exists()
    assert _streams(face_clip) == _streams(out / "clip.mp4")
    assert "10 frame(s)" in capsys.readouterr().out


def test_look_ahead_smoothing_streams_like_one_pass(face_clip, tmp_path, yunet_path, capsys):
    """kalman_rts in restore_clip: results trail the chunks by the look-ahead, every frame comes out once (the end
    in pieces no larger than a chunk), and any chunking gives the same frames as one chunk; the CLI writes every frame with its own timestamp."""
    from bfr_core.faces.detection.yunet import YuNetDetector
    from bfr_core.faces.smoothing import SmoothingOptions
    from bfr_core.faces.tracking import FaceTracker
    from bfr_core.io.video import read_video
    from bfr_core.restoration.video import restore_clip

    frames = torch.cat([c for c, _ in read_video(face_clip, 16)])
    detector = YuNetDetector(yunet_path)
    opts = SmoothingOptions(fps=24, method="kalman_rts", lookahead=3)

    def run(sizes):
        bounds = np.cumsum([0, *sizes])
        chunks = (frames[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        results = list(restore_clip(chunks, detector, None, crop_size=64, tracker=FaceTracker(smoothing=opts)))
        return [r.images.shape[0] for r in results], torch.cat([r.images for r in results])

    counts, one = run([10])
    assert counts == [7, 3]
    counts, chunked = run([2, 4, 4])
    assert counts == [3, 4, 3] and torch.equal(one, chunked)
    counts, small = run([2, 2, 2, 2, 2])  # the end (3 frames waiting) comes in pieces no larger than a chunk
    assert counts == [1, 2, 2, 2, 2, 1] and torch.equal(one, small)
    out = tmp_path / "OUT"
    assert main(["restore", str(face_clip), "-o", str(out), "--models-dir", str(yunet_path.parent), "--align-only",
                 "--chunk-frames", "4", "--crop-size", "64", "--smoother", "kalman_rts", "--lookahead", "5"]) == 0
    assert _streams(face_clip) == _streams(out / "clip.mp4")
    assert "10 frame(s)" in capsys.readouterr().out
    assert main(["detect", str(face_clip), "--models-dir", str(yunet_path.parent), "--json", "--chunk-frames", "3",
                 "--smoother", "kalman_rts"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["frame"] for e in entries] == list(range(10))
    assert all(sorted(f["track"] for f in e["faces"]) == [0, 1] for e in entries)


def test_cli_detect_json_on_a_video(face_clip, yunet_path, capsys):
    code = main(["detect", str(face_clip), "--models-dir", str(yunet_path.parent), "--json", "--chunk-frames", "3"])
    assert code == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["frame"] for e in entries] == list(range(10))
    assert all(e["video"] == str(face_clip) and (e["width"], e["height"]) == (320, 224) for e in entries)
    assert entries[1]["time"] == pytest.approx(1 / 24, abs=1e-3)
    tracks = [sorted(f["track"] for f in e["faces"]) for e in entries]
    assert tracks[0] == [0, 1] and all(t == tracks[0] for t in tracks)  # two people, one id each, every frame
    for e in entries:
        for f in e["faces"]:
            assert len(f["landmarks"]) == 5 and len(f["detected_landmarks"]) == 5
    # Smoothed landmarks move less from frame to frame than the detected ones.
    def steps(key):
        pts = np.array([[f[key] for f in sorted(e["faces"], key=lambda f: f["track"])] for e in entries])
        return np.abs(np.diff(pts, n=2, axis=0)).mean()  # second difference: jitter, not the smooth pan
    assert steps("landmarks") < steps("detected_landmarks")


def test_cli_series_tracks_photos(tmp_path, yunet_path, capsys):
    """--series: the listed photos are one sequence, a person keeps one id across them."""
    photo = cv2.imread(str(shared_path("images/whole/gfpgan_Blake_Lively.jpg")))
    paths = []
    for i, dx in enumerate((0, 6, 12)):
        p = tmp_path / f"shot{i}.png"
        cv2.imwrite(str(p), np.roll(photo, dx, axis=1))
        paths.append(str(p))
    assert main(["detect", *paths, "--models-dir", str(yunet_path.parent), "--json", "--series"]) == 0
    entries = json.loads(capsys.readouterr().out)
    ids = [[f["track"] for f in sorted(e["faces"], key=lambda f: f["box"][0])] for e in entries]
    assert ids == [ids[0]] * 3 and sorted(ids[0]) == list(range(len(ids[0])))
    with pytest.raises(SystemExit):
        main(["restore", *paths, "-o", str(tmp_path / "o"), "--series", "--beta", "-1"])
    assert main(["restore", *paths, "-o", str(tmp_path / "o"), "--models-dir", str(yunet_path.parent),
                 "--align-only", "--series", "--shard", "0/2"]) == 2
    assert "--series" in capsys.readouterr().err
    # Restored as a series with the default look-ahead smoother (kalman_rts): every photo written, in order.
    capsys.readouterr()
    assert main(["restore", *paths, "-o", str(tmp_path / "r"), "--models-dir", str(yunet_path.parent),
                 "--align-only", "--series", "--crop-size", "64"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()[:3]] == paths
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["shot0.png", "shot1.png", "shot2.png"]


def test_pan_truth_helper_maps_points_like_the_frames():
    """The bench's ground truth: a bright dot rendered through the transforms lands where apply_transforms says."""
    img = np.zeros((60, 80, 3), np.uint8)
    img[30, 20] = 255
    tr = pan_zoom_transforms(5, (10, 3), 1.2)
    frames = pan_zoom_frames(img, tr, (80, 60))
    pts = apply_transforms(np.array([[20.0, 30.0]]), tr)[:, 0]
    for f, (x, y) in zip(frames, pts):
        yy, xx = np.unravel_index(np.argmax(f[..., 0]), f.shape[:2])
        assert abs(xx - x) <= 1 and abs(yy - y) <= 1


def test_cli_reports_a_broken_video_and_goes_on(face_clip, tmp_path, yunet_path, capsys):
    """One unreadable video is reported (exit code 2); the other inputs are still restored."""
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 64)
    out = tmp_path / "OUT"
    code = main(["restore", str(bad), str(face_clip), "-o", str(out), "--models-dir", str(yunet_path.parent),
                 "--align-only", "--crop-size", "64", "--chunk-frames", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "broken.mp4" in err
    assert (out / "clip.mp4").is_file() and not (out / "broken.mp4").exists()
    assert main(["detect", str(bad), "--models-dir", str(yunet_path.parent), "--json"]) == 2
