"""Video: steady landmarks and steady restored faces on a synthetic clip made from a real photo.

The clip: a photo with two people (../shared/data/images/whole/gfpgan_Blake_Lively.jpg) seen through a known, smooth
camera move (cosine-eased pan of --shift px and zoom of --zoom×, tests/video_clips.py), every frame degraded on its own
(blur, noise, JPEG). The true landmarks of every frame are YuNet's landmarks on the clean photo mapped through the
known move. Printed:

1. Landmarks, raw per-frame detections vs the smoothed tracks (default settings of each smoother: One-Euro, causal
   Kalman, Kalman + RTS backward pass over 15 look-ahead frames):
   jitter     RMS of the frame-to-frame change of the landmark error (px): shaking, not the constant offset
   TLME       mean |Δ landmark − Δ truth| over consecutive frames (px; PGTFormer's temporal landmark error, here on
              the landmarks that drive alignment)
   error      mean |landmark − truth| (px): accuracy, including any lag
2. Restoration with the analytic prior (exact denoiser of the clip's own clean aligned faces plus the 4 aligned test
   faces and mirrors; tests/analytic_prior.py), frame by frame (today's path: per-frame detections, seed + face index)
   vs the video path (`restore_clip`: tracks, smoothed landmarks, per-track seeds; optionally --blend; and with the
   kalman_rts look-ahead smoother):
   flicker    mean |frame t − frame t−1| of the face region (8-bit levels) after undoing the known camera move
   PSNR       per-frame PSNR (dB) of the face region against the clean frame, both with the move undone
   TLME       of YuNet's landmarks detected on the restored frames
   The clean clip's own flicker (resampling only) is the floor.
3. Throughput and memory against clip length: each length in a fresh process, streamed from an mp4 file with audio
   through `read_video` → `restore_clip` (colour matched and blended per track) → `VideoWriter` in chunks of --chunk
   frames, with --smoother: frames/s; the resident memory (RSS, sampled every 20 ms) after the models are loaded
   ("loaded"), its peak while streaming over "loaded" ("peak +"), and its growth after warm-up (peak after the
   first --warmup frames are written over the RSS at that point: flat against length = nothing grows with the
   clip); with --memory also a second run under tracemalloc: the peak and final Python/numpy allocations (not
   torch's CPU allocator) over their level after warm-up, and what the stream's state holds at the end (open tracks, frames waiting for the look-ahead,
   TrackMemory crops).

    PYTHONPATH=. python bench/bench_video.py [--frames 32] [--size 128] [--lengths 16 48] [--blend 0.5]
                                             [--smoother one_euro|kalman|kalman_rts]
    PYTHONPATH=. python bench/bench_video.py --memory   # = --no-quality --lengths 32 128 512 --scale 0.5
                                                        #   --smoother kalman_rts: 320x200 frames, 2 faces
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from analytic_prior import AnalyticPrior, load_face_set  # noqa: E402
from video_clips import (apply_transforms, degrade_frames, pan_zoom_frames, pan_zoom_transforms, to_tensor,  # noqa: E402
                         write_clip)

from bfr_core.faces.align import align_faces  # noqa: E402
from bfr_core.faces.detection.batch import detect_faces  # noqa: E402
from bfr_core.faces.detection.yunet import YuNetDetector  # noqa: E402
from bfr_core.faces.smoothing import SMOOTHING_METHODS, SmoothingOptions  # noqa: E402
from bfr_core.faces.tracking import FaceTracker, track_faces  # noqa: E402
from bfr_core.restoration.pipeline import restore_images  # noqa: E402
from bfr_core.restoration.restorer import FaceRestorer  # noqa: E402
from bfr_core.restoration.temporal import TrackMemory  # noqa: E402
from bfr_core.restoration.video import restore_clip  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PHOTO = DATA / "images/whole/gfpgan_Blake_Lively.jpg"
YUNET = DATA / "models/face_detection_yunet_2023mar.onnx"
FRAME = (640, 400)  # w, h: both faces stay in view through the move


def make_clip(frames: int, shift: float, zoom: float, seed: int, scale: float = 1.0):
    """The photo (resized by ``scale``, the frame and the pan with it) through the move, clean and degraded."""
    photo = np.ascontiguousarray(cv2.imread(str(PHOTO))[:, :, ::-1])
    size = FRAME
    if scale != 1:
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        size, shift = (round(FRAME[0] * scale), round(FRAME[1] * scale)), shift * scale
    moves = pan_zoom_transforms(frames, (shift, shift / 3), zoom)
    clean = pan_zoom_frames(photo, moves, size)
    return photo, moves, clean, degrade_frames(clean, seed=seed)


def per_face(dets, truth: np.ndarray) -> np.ndarray:
    """[T, K, 5, 2] landmarks per true face (nearest nose; NaN where not detected)."""
    out = np.full(truth.shape, np.nan)
    for t, d in enumerate(dets):
        for j in range(len(d)):
            lm = d.landmarks[j].double().numpy()
            k = int(np.argmin(np.linalg.norm(truth[t, :, 2] - lm[2], axis=-1)))
            out[t, k] = lm
    return out


def landmark_figures(lms: np.ndarray, truth: np.ndarray) -> dict:
    err = lms - truth  # [T, K, 5, 2]
    step = np.diff(err, axis=0)
    ok = ~np.isnan(step).any(-1)
    jitter = float(np.sqrt((step[ok] ** 2).sum(-1).mean()))
    tlme = float(np.linalg.norm(step, axis=-1)[ok].mean())
    error = float(np.nanmean(np.linalg.norm(err, axis=-1)))
    return dict(jitter=jitter, tlme=tlme, error=error, found=float((~np.isnan(err).any(-1).any(-1)).mean()))


def undo_move(frames: np.ndarray, moves: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frames mapped back to the photo's coordinates (the known camera move undone)."""
    return np.stack([cv2.warpAffine(f.astype(np.float32), m, size, flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=-1) for f, m in zip(frames, moves)])


def face_region(boxes: np.ndarray, stable: np.ndarray) -> np.ndarray:
    """Pixels inside the (10% shrunk) clean face boxes that every frame shows."""
    region = np.zeros(stable.shape, bool)
    for x1, y1, x2, y2 in boxes:
        dx, dy = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
        region[int(y1 + dy):int(y2 - dy), int(x1 + dx):int(x2 - dx)] = True
    return region & stable


def video_figures(frames: np.ndarray, clean_back: np.ndarray, moves: np.ndarray, region: np.ndarray) -> dict:
    back = undo_move(frames, moves, region.shape[::-1])
    flicker = float(np.abs(np.diff(back, axis=0))[:, region].mean())
    mse = ((back - clean_back) ** 2)[:, region].reshape(len(back), -1).mean(1)
    return dict(flicker=flicker, psnr=float((10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-9))).mean()))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def build_prior(photo: np.ndarray, truth_src, size: int) -> AnalyticPrior:
    """The analytic prior over the clip's clean aligned faces and the 4 aligned test faces (+ mirrors)."""
    own, _ = align_faces(to_tensor(photo[None]), [truth_src], size)
    others = load_face_set(sorted((DATA / "images/aligned512").glob("*.png")), size, flips=True)
    return AnalyticPrior(torch.cat([own, others]))


def run_quality(args) -> None:
    detector = YuNetDetector(YUNET)
    photo, moves, clean, degraded = make_clip(args.frames, args.shift, args.zoom, args.seed)
    src = detect_faces(detector, to_tensor(photo[None]))[0]
    truth = apply_transforms(src.landmarks.double().numpy(), moves)  # [T, K, 5, 2]
    print(f"clip: {args.frames} frames {FRAME[0]}x{FRAME[1]} at {args.fps} fps, {len(src)} faces "
          f"({', '.join(f'{float(s):.0f} px' for s in (src.boxes[:, 2:] - src.boxes[:, :2]).prod(1).sqrt())}), "
          f"pan {args.shift:g} px, zoom {args.zoom:g}x, each frame degraded on its own")

    frames_t = to_tensor(degraded)
    t0 = time.perf_counter()
    dets = detect_faces(detector, frames_t, chunk=8)
    t_detect = time.perf_counter() - t0
    raw = landmark_figures(per_face(dets, truth), truth)
    rows_lm = {"raw per-frame detection": raw}
    print("\n1. landmarks against the known motion (px)")
    for method in SMOOTHING_METHODS:
        t0 = time.perf_counter()
        tracked = track_faces(dets, smoothing=SmoothingOptions(fps=args.fps, method=method))
        t_track = time.perf_counter() - t0
        rows_lm[f"{method} track"] = landmark_figures(per_face(tracked, truth), truth)
        rows_lm[f"{method} track"]["ms"] = 1000 * t_track / args.frames
        if method == "one_euro":
            smooth_dets = tracked
    print(f"   {'':24s} {'jitter':>8s} {'TLME':>8s} {'error':>8s} {'found':>6s} {'ms/frame':>9s}")
    for name, f in rows_lm.items():
        print(f"   {name:24s} {f['jitter']:8.3f} {f['tlme']:8.3f} {f['error']:8.3f} {f['found']:6.0%} "
              f"{f.get('ms', float('nan')):9.2f}")
    for name, f in list(rows_lm.items())[1:]:
        print(f"   {name}: jitter {raw['jitter'] / f['jitter']:.2f}x lower, TLME {raw['tlme'] / f['tlme']:.2f}x "
              f"lower (target >= 3x)")
    print(f"   detection {1000 * t_detect / args.frames:.1f} ms/frame")
    ids = sorted({int(i) for d in smooth_dets for i in d.track_ids})
    print(f"   track ids over the clip: {ids}")

    prior = build_prior(photo, src, args.size)
    restorer = FaceRestorer(prior, strength=args.strength, sampler="fast", batch_size=8)
    stable = undo_move(np.ones_like(clean[..., :1], dtype=np.float32)[..., 0], moves, photo.shape[1::-1]) > 0.5
    stable = stable.all(0)
    region = face_region(src.boxes.numpy(), stable)
    clean_back = undo_move(clean, moves, photo.shape[1::-1])
    rows = {}

    def chunks():
        for i in range(0, args.frames, args.chunk):
            yield frames_t[i:i + args.chunk]

    restore_images(frames_t[:1], None, restorer, crop_size=args.size, detections=dets[:1])  # warm-up, not timed
    t0 = time.perf_counter()
    out = [restore_images(c, None, restorer, crop_size=args.size, seed=0, detections=dets[i * args.chunk:][:len(c)])
           .images for i, c in enumerate(chunks())]
    rows["frame by frame"] = (torch.cat(out), time.perf_counter() - t0)
    variants = [("video path", TrackMemory(color=0.5), "one_euro")]
    if args.blend > 0:
        variants.append((f"video path, blend {args.blend:g}", TrackMemory(blend=args.blend, color=0.5), "one_euro"))
    variants.append(("video path, kalman_rts", TrackMemory(color=0.5), "kalman_rts"))
    for name, memory, method in variants:
        t0 = time.perf_counter()
        tracker = FaceTracker(smoothing=SmoothingOptions(fps=args.fps, method=method))
        out = [r.images for r in restore_clip(chunks(), detector, restorer, crop_size=args.size, seed=0,
                                              tracker=tracker, temporal=memory)]
        rows[name] = (torch.cat(out), time.perf_counter() - t0)
    print(f"\n2. restored face region, camera move undone (analytic prior, {args.size} px crops, strength "
          f"{args.strength:g}, 'fast' sampler)")
    print(f"   {'':28s} {'flicker':>8s} {'PSNR dB':>8s} {'TLME px':>8s} {'frames/s':>9s}")
    floor = video_figures(clean, clean_back, moves, region)
    inp = video_figures(degraded, clean_back, moves, region)
    inp_tlme = landmark_figures(per_face(dets, truth), truth)["tlme"]
    print(f"   {'clean clip (floor)':28s} {floor['flicker']:8.3f} {'inf':>8s}")
    print(f"   {'degraded input':28s} {inp['flicker']:8.3f} {inp['psnr']:8.2f} {inp_tlme:8.3f}")
    figures = {}
    for name, (images, seconds) in rows.items():
        f = video_figures(to_uint8(images), clean_back, moves, region)
        f["tlme"] = landmark_figures(per_face(detect_faces(detector, images, chunk=8), truth), truth)["tlme"]
        figures[name] = f
        print(f"   {name:28s} {f['flicker']:8.3f} {f['psnr']:8.2f} {f['tlme']:8.3f} {args.frames / seconds:9.2f}")
    base = figures["frame by frame"]
    for name in ("video path", "video path, kalman_rts"):
        video = figures[name]
        print(f"   {name}: flicker {base['flicker'] / video['flicker']:.2f}x lower (target >= 2x), "
              f"PSNR {video['psnr'] - base['psnr']:+.2f} dB (target >= 0), TLME {base['tlme'] / video['tlme']:.2f}x "
              f"lower")
    print("   (the analytic prior takes a face to the same clean face from any noise, so per-track noise and blending "
          "change nothing here:\n    the difference is the steady landmarks; PSNR is bounded by the detector's "
          "landmark error, which moves the pasted face)")


def run_child(args) -> None:
    """One streamed restore of a clip file (args.child); prints JSON: frames/s, RSS figures (MiB), with --trace the
    tracemalloc peak, and the stream state's sizes at the end."""
    import threading
    import tracemalloc

    from bfr_core.io.video import VideoWriter, read_video
    from bfr_core.restoration.pipeline import PasteOptions

    path, frames = args.child, args.frames
    detector = YuNetDetector(YUNET)
    photo = np.ascontiguousarray(cv2.imread(str(PHOTO))[:, :, ::-1])
    restorer = FaceRestorer(build_prior(photo, detect_faces(detector, to_tensor(photo[None]))[0], args.size),
                            strength=0.4, sampler="fast", batch_size=8)

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    before, done = rss_mib(), threading.Event()
    peak = {"all": before, "warm": 0.0}  # peak RSS over the whole stream / since warm-up
    warm_at: list[float] = []  # RSS when --warmup frames had been written

    def sample() -> None:  # resident memory every 20 ms while the clip streams (ru_maxrss would show setup peaks)
        while not done.is_set():
            r = rss_mib()
            peak["all"] = max(peak["all"], r)
            if warm_at:
                peak["warm"] = max(peak["warm"], r)
            time.sleep(0.02)

    if args.trace:
        tracemalloc.start()
    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    out = Path(path).with_name("out.mp4")
    stamps, written, traced_warm = [], 0, 0

    def chunks():
        for c, pts in read_video(path, args.chunk):
            stamps.extend(pts)
            yield c

    tracker = FaceTracker(smoothing=SmoothingOptions(fps=args.fps, method=args.smoother))
    memory = TrackMemory(blend=0.5, color=0.5)
    with VideoWriter(out, path) as writer:
        for res in restore_clip(chunks(), detector, restorer, crop_size=args.size, tracker=tracker, temporal=memory,
                                paste=PasteOptions(color_match="mean_std")):
            n = res.images.shape[0]  # a look-ahead smoother's results trail the chunks
            writer.write(res.images, stamps[:n])
            del stamps[:n]
            written += n
            if written >= args.warmup and not warm_at:
                warm_at.append(rss_mib())
                if args.trace:  # from here on: Python/numpy allocations over their level after warm-up
                    traced_warm = tracemalloc.get_traced_memory()[0]
                    tracemalloc.reset_peak()
    seconds = time.perf_counter() - t0
    done.set()
    peak["all"] = max(peak["all"], rss_mib())
    r = dict(fps=frames / seconds, loaded=before, peak_growth=peak["all"] - before,
             warm_growth=(peak["warm"] - warm_at[0]) if warm_at and frames > args.warmup + args.chunk else None,
             state={**tracker.sizes(), **{f"memory_{k}": v for k, v in memory.sizes().items()}})
    if args.trace and r["warm_growth"] is not None:
        current, top = tracemalloc.get_traced_memory()
        r["trace_growth"] = (top - traced_warm) / 2**20
        r["trace_end"] = (current - traced_warm) / 2**20
    print(json.dumps(r))


def run_lengths(args) -> None:
    _, _, sample_clip, _ = make_clip(1, args.shift, args.zoom, args.seed, args.scale)
    h, w = sample_clip.shape[1:3]
    print(f"\n3. streamed file restore (mp4 with audio → mp4, {w}x{h}, chunks of {args.chunk} frames, {args.size} px "
          f"analytic prior, colour matched and blended per track, {args.smoother} smoothing), each length in a fresh "
          f"process")
    print(f"   {'frames':>7s} {'frames/s':>9s} {'loaded MiB':>11s} {'peak + MiB':>11s} {'growth after':>13s}"
          + (f" {'tracemalloc after':>18s}  state at the end" if args.trace else ""))
    print(f"   {'':7s} {'':9s} {'':11s} {'':11s} {f'{args.warmup} fr. MiB':>13s}"
          + (f" {'peak / end MiB':>18s}" if args.trace else ""))
    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        for n in args.lengths:
            _, _, _, degraded = make_clip(n, args.shift, args.zoom, args.seed, args.scale)
            path = Path(tmp) / f"clip{n}.mp4"
            write_clip(path, degraded, fps=int(args.fps), audio=True)
            del degraded
            cmd = [sys.executable, __file__, "--child", str(path), "--frames", str(n), "--size", str(args.size),
                   "--chunk", str(args.chunk), "--fps", str(args.fps), "--smoother", args.smoother,
                   "--warmup", str(args.warmup)]
            runs = [json.loads(subprocess.run(c, capture_output=True, text=True, check=True).stdout.strip()
                               .splitlines()[-1]) for c in ([cmd, cmd + ["--trace"]] if args.trace else [cmd])]
            r = runs[0]
            warm = "-" if r["warm_growth"] is None else f"{r['warm_growth']:.1f}"
            line = f"   {n:7d} {r['fps']:9.2f} {r['loaded']:11.0f} {r['peak_growth']:11.1f} {warm:>13s}"
            if args.trace:
                traced = runs[1].get("trace_growth")
                traced = "-" if traced is None else f"{traced:.2f} / {runs[1]['trace_end']:.2f}"
                line += f" {traced:>18s}  {runs[1]['state']}"
            print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--fps", type=float, default=24.0)
    ap.add_argument("--shift", type=float, default=30.0, help="pan in px over the clip")
    ap.add_argument("--zoom", type=float, default=1.1)
    ap.add_argument("--size", type=int, default=128, help="aligned crop size = the analytic prior's size")
    ap.add_argument("--strength", type=float, default=0.4)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--blend", type=float, default=0.5, help="also run the video path with this temporal blend")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lengths", type=int, nargs="*", default=[16, 48])
    ap.add_argument("--smoother", choices=SMOOTHING_METHODS, default="one_euro",
                    help="landmark smoothing of the streamed restore (part 3)")
    ap.add_argument("--no-quality", action="store_true", help="only the throughput/memory part")
    ap.add_argument("--scale", type=float, default=1.0, help="photo, frame and pan scaled by this (part 3 and the "
                    "quality parts use the same clip size only at 1)")
    ap.add_argument("--warmup", type=int, default=32, help="frames written before 'growth after' is measured")
    ap.add_argument("--trace", action="store_true", help="part 3: also a tracemalloc run per length")
    ap.add_argument("--memory", action="store_true", help="memory against length: --no-quality --trace --lengths "
                    "32 128 512 --scale 0.5 --smoother kalman_rts (each unless given)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    given = set(sys.argv[1:])
    args = ap.parse_args()
    if args.memory:
        args.no_quality = args.trace = True
        for flag, name, value in (("--lengths", "lengths", [32, 128, 512]), ("--scale", "scale", 0.5),
                                  ("--smoother", "smoother", "kalman_rts")):
            if flag not in given:
                setattr(args, name, value)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.child:
        return run_child(args)
    if not args.no_quality:
        run_quality(args)
    if args.lengths:
        run_lengths(args)


if __name__ == "__main__":
    with torch.no_grad():
        main()
