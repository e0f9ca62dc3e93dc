"""Command line: `python -m bfr_core {detect,restore,pseudo-targets,similarity,models,download} ...`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

# Only torch-free modules at import time: `--help` and argument errors answer at once; the work imports the rest.
from .diffusion.timesteps import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
from .faces.detection.options import DETECTOR_ALIASES, SELECT_MODES, SORT_MODES, DetectOptions
from .io.video import VIDEO_SUFFIXES, VideoReadError
from .models import files as model_files
from .models.errors import CheckpointError
from .utils.devices import process_device
from .utils.precision import AUTO, COMPILE_MODES, PRECISIONS, parse_dtype
from .utils.sharding import parse_shard, shard_from_env


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm")


def _number(kind, lo=None, hi=None, zero_ok: bool = False, what: str = ""):
    """An argparse type: a number of ``kind`` in [lo, hi]; argparse names the option in its error."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if zero_ok and v == 0:
            return v
        if (lo is not None and not v >= lo) or (hi is not None and not v <= hi) or v != v:
            span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {span}{what}")
        return v
    return parse


def _shard(text: str):
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _expand_inputs(paths: list[str], videos: bool = False) -> list[str]:
    """Folders stand for the image files (and with ``videos`` the video files) in them (sorted; not recursive);
    files are kept as given."""
    suffixes = IMAGE_SUFFIXES + (VIDEO_SUFFIXES if videos else ())
    out: list[str] = []
    for p in paths:
        if Path(p).is_dir():
            found = sorted(str(f) for f in Path(p).iterdir() if f.suffix.lower() in suffixes and f.is_file())
            if not found:
                raise ValueError(f"{p} is a folder with no image files ({', '.join(suffixes)})")
            out += found
        else:
            out.append(p)
    return out


def _add_licence_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--commercial-only", action="store_true", default=None,
                   help="refuse model files the registry knows as non-commercial (e.g. DifFace's S-Lab files); "
                        "files it does not know are used with a warning (check their licence yourself). "
                        f"Also ${model_files.ENV_COMMERCIAL_ONLY}=1")


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu",
                   help="torch device, e.g. cpu, cuda, cuda:1 (default cpu). Under torchrun / accelerate launch "
                        "(LOCAL_RANK set), cuda without an index means cuda:LOCAL_RANK: one GPU per process")


def _model_path(args: argparse.Namespace, name: str) -> Path:
    """A model file found by name or path, checked against --commercial-only / $BFR_COMMERCIAL_ONLY."""
    path = model_files.resolve_model(name, args.models_dir)
    model_files.check_licence(path, args.commercial_only)
    return path


def _add_detect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="input image files or folders of images")
    p.add_argument("--detector", default="yunet",
                   help=f"{', '.join(DETECTOR_ALIASES)} or a model file path (default: yunet)")
    p.add_argument("--models-dir", help=f"models folder (also ${model_files.ENV_MODELS_DIR}, or ComfyUI/models)")
    p.add_argument("--threshold", type=_number(float, 0.0, 1.0), default=0.6,
                   help="detection score threshold in [0, 1] (default 0.6)")
    p.add_argument("--min-size", type=_number(float, 0.0), default=0, help="ignore faces smaller than this many pixels")
    p.add_argument("--select", choices=SELECT_MODES, default="all")
    p.add_argument("--indices", default="", help="with --select indices: e.g. '0,2'")
    p.add_argument("--sort", choices=SORT_MODES, default="area")
    p.add_argument("--max-faces", type=_number(int, 0), default=0, help="keep at most this many faces (0 = all)")
    _add_device_arg(p)
    _add_licence_arg(p)


def _is_video(path: str) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _add_track_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video and photo series", "Video files are always tracked; --series tracks the listed "
                                                        "images as the frames of one sequence.")
    g.add_argument("--series", action="store_true",
                   help="treat the images (in the listed, sorted order) as one sequence: faces are tracked across "
                        "them, so a person keeps one id (and, when restoring, the same noise)")
    g.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=True,
                   help="smooth each track's landmarks with the --smoother filter (default on)")
    g.add_argument("--min-cutoff", type=_number(float, 1e-3), default=0.5,
                   help="One-Euro minimum cutoff in Hz: lower = steadier still faces (default 0.5)")
    g.add_argument("--beta", type=_number(float, 0.0), default=4.0,
                   help="One-Euro speed coefficient (per face size per second): higher = less lag (default 4)")
    g.add_argument("--d-cutoff", type=_number(float, 1e-3), default=1.0, help="One-Euro speed cutoff in Hz (1)")
    g.add_argument("--smoother", choices=("one_euro", "kalman", "kalman_rts"), default="kalman_rts",
                   help="landmark filter: kalman_rts (default: constant-velocity Kalman plus a backward pass over "
                        "--lookahead later frames, no lag), one_euro or kalman (causal: they trail speed changes)")
    g.add_argument("--process-noise", type=_number(float, 1e-6), default=0.5,
                   help="kalman: acceleration noise in face sizes/s² (higher follows speed changes sooner; 0.5)")
    g.add_argument("--measurement-noise", type=_number(float, 1e-6), default=0.01,
                   help="kalman: landmark noise in face sizes (default 0.01)")
    g.add_argument("--lookahead", type=_number(int, 0), default=15,
                   help="kalman_rts: later frames each frame's landmarks use (default 15; output trails by as many)")
    g.add_argument("--max-gap", type=_number(int, 0), default=30,
                   help="frames a face may be missing and keep its track id when it comes back (default 30)")


def _tracker(args: argparse.Namespace, fps: float = 30.0):
    """A face tracker with the command line's settings (fps: the video's, for the filter's time scale)."""
    from .faces.smoothing import SmoothingOptions
    from .faces.tracking import FaceTracker, TrackOptions

    smoothing = SmoothingOptions(args.min_cutoff, args.beta, args.d_cutoff, fps, args.smoother, args.process_noise,
                                 args.measurement_noise, args.lookahead) if args.smooth else None
    return FaceTracker(TrackOptions(max_gap=args.max_gap), smoothing)


def _detector(args: argparse.Namespace):
    from .faces.detection.loading import load_detector

    name = DETECTOR_ALIASES.get(args.detector, args.detector)
    return load_detector(_model_path(args, name), device=args.device)


def _options(args: argparse.Namespace) -> DetectOptions:
    return DetectOptions(args.threshold, args.min_size, args.sort, args.select, args.indices, args.max_faces)


def cmd_detect(args: argparse.Namespace) -> int:
    from .faces.detection.batch import detect_faces

    args.images = _expand_inputs(args.images, videos=True)
    detector = _detector(args)
    out = []
    unreadable: list[str] = []
    series = _tracker(args) if args.series else None
    waiting: list = []  # (JSON entry, detections) of series images whose tracked faces are not final yet
    for path in args.images:
        if _is_video(path):
            try:
                out += _detect_video(path, detector, args)
            except VideoReadError as exc:
                print(f"error: {exc}", file=sys.stderr)
                unreadable.append(str(path))
            continue
        img = _read_or_report(path, unreadable)
        if img is None:
            continue
        dets = detect_faces(detector, img.rgb[None], _options(args))[0]
        out.append({"image": str(path), "width": img.rgb.shape[2], "height": img.rgb.shape[1],
                    "faces": dets.to_json()})
        if series is not None:
            waiting.append((out[-1], dets))
            _fill_tracked(waiting, series.push(dets))
    if series is not None:
        _fill_tracked(waiting, series.flush())
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for item in out:
            print(f"{item['image']}: {len(item['faces'])} face(s)")
    return _report_unreadable(unreadable, len(args.images))


def _tracked_json(detected, tracked) -> list[dict]:
    """JSON faces with their track id and smoothed landmarks, plus the landmarks as detected."""
    faces = tracked.to_json()
    for face, raw in zip(faces, detected.to_json()):
        face["detected_landmarks"] = raw["landmarks"]
    return faces


def _fill_tracked(waiting: list, tracked: list) -> None:
    """Sets the tracked faces of the oldest waiting (JSON entry, detections) pairs, one per tracked frame (a
    look-ahead smoother gives them frames late)."""
    for t in tracked:
        entry, dets = waiting.pop(0)
        entry["faces"] = _tracked_json(dets, t)


def _detect_video(path: str, detector, args: argparse.Namespace) -> list[dict]:
    """One JSON entry per frame of a video file: its faces with track ids and smoothed landmarks."""
    from .faces.detection.batch import detect_faces
    from .io.video import probe_video, read_video

    info = probe_video(path)
    tracker = _tracker(args, float(info.fps))
    out, waiting = [], []
    for frames, pts in read_video(path, args.chunk_frames):
        for dets, stamp in zip(detect_faces(detector, frames.to(args.device), _options(args)), pts):
            out.append({"video": str(path), "frame": len(out),
                        "time": None if stamp is None else round(float(stamp * info.time_base), 4),
                        "width": info.width, "height": info.height, "faces": []})
            waiting.append((out[-1], dets))
            _fill_tracked(waiting, tracker.push(dets))
    _fill_tracked(waiting, tracker.flush())
    return out


def _read_or_report(path: str, unreadable: list[str]):
    """The image at ``path``, or None after reporting why it cannot be read (one unreadable photo must not stop a
    whole folder; ``unreadable`` collects them for `_report_unreadable`)."""
    from .io.images import read_image

    try:
        return read_image(path)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        unreadable.append(str(path))
        return None


def _check_output(args: argparse.Namespace, what: str) -> None:
    if not str(args.output).strip():
        raise ValueError(f"-o/--output is empty: name the folder for the {what}")


def _report_unreadable(unreadable: list[str], total: int) -> int:
    """Exit code 2 (with the list) when some inputs could not be read, else 0."""
    if not unreadable:
        return 0
    print(f"error: {len(unreadable)} of {total} image(s) could not be read: {', '.join(unreadable)}", file=sys.stderr)
    return 2


def _face_restorer(args: argparse.Namespace):
    """The library's restore recipe (a `FaceRestorer`) with the models and settings named on the command line."""
    from .restoration.backbones import load_restorer
    from .restoration.restorer import FaceRestorer

    if args.align_only:
        if args.prior or args.restorer != "none" or args.recognizer:
            raise ValueError("--align-only restores nothing: drop --prior/--restorer/--recognizer, or --align-only")
        return FaceRestorer(batch_size=args.batch_size)

    dtype = parse_dtype(args.dtype, args.device)
    backbone = None
    if args.restorer != "none":
        backbone = load_restorer(_model_path(args, args.restorer), device=args.device,
                                 dtype=dtype)
    if args.prior is None:
        if args.recognizer:
            raise ValueError("--recognizer (identity guidance) needs --prior")
        if backbone is None and not args.align_only:
            raise ValueError("nothing to restore with: pass --prior FILE (DifFace's iddpm_ffhq512_ema500000.pth) "
                             "and/or --restorer FILE (e.g. swinir_restoration512_L1.pth); `python -m bfr_core "
                             "models` lists the files and where to get them. --align-only pastes the faces back "
                             "unchanged")
        return FaceRestorer(backbone=backbone, batch_size=args.batch_size, progress=_print_progress)
    from .diffusion.loading import load_prior

    prior = load_prior(_model_path(args, args.prior), device=args.device, dtype=dtype)
    identity = None
    if args.recognizer:
        from .identity import load_recognizer
        from .identity.settings import IdentitySettings

        recognizer = load_recognizer(_model_path(args, args.recognizer), device=args.device)
        import torch

        reference = (torch.cat([_largest_face(recognizer, path, args) for path in args.reference])
                     if args.reference else None)
        identity = IdentitySettings(recognizer, strength=args.identity_strength, reference=reference)
    return FaceRestorer(prior, backbone, strength=args.strength, steps=args.steps, sampler=args.sampler,
                        eta=args.eta, identity=identity, batch_size=args.batch_size, progress=_print_progress,
                        compile=args.compile)


def _print_progress(i: int, total: int) -> None:
    if i == total or i % max(1, total // 10) == 0:
        print(f"  step {i}/{total}", file=sys.stderr)


def _largest_face(recognizer, path: str, args: argparse.Namespace):
    """Embedding [1, D] of the largest face in an image file (or of the image itself with --aligned)."""
    from .identity.references import embed_reference_faces
    from .io.images import read_image

    rgb = read_image(path).rgb[None].to(args.device)
    detector = None if getattr(args, "aligned", False) else _detector(args)
    try:
        return embed_reference_faces(recognizer, rgb, detector, score_threshold=args.threshold)
    except ValueError as exc:
        if detector is None:
            raise
        raise ValueError(f"no face found in {path}; pass a photo with a visible face (or --aligned crops)") from exc


def cmd_similarity(args: argparse.Namespace) -> int:
    from .identity import load_recognizer

    recognizer = load_recognizer(_model_path(args, args.recognizer), device=args.device)
    a, b = _largest_face(recognizer, args.a, args), _largest_face(recognizer, args.b, args)
    print(f"{float((a * b).sum()):.4f}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .io.images import write_image
    from .restoration.pipeline import PasteOptions, restore_images

    _check_output(args, "results")
    args.images = _expand_inputs(args.images, videos=True)
    detector = _detector(args)
    restorer = _face_restorer(args)
    crop_size = args.crop_size or restorer.crop_size
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"-o {outdir} is a file; name a folder for the results")
    outdir.mkdir(parents=True, exist_ok=True)
    paste = PasteOptions(mask=args.mask, color_match=args.color_match)
    taken = {Path(p).resolve() for p in args.images}  # inputs, then each result as it is planned
    targets: list[Path] = []
    for path in args.images:  # checked before any work: a clash must not surface after an hour of restoring
        target = outdir / (Path(path).name if _is_video(path) else Path(path).stem + ".png")
        if target.resolve() in taken:
            raise ValueError(f"{target} would overwrite an input or another result; choose another -o folder")
        taken.add(target.resolve())
        targets.append(target)
    # This process's share (all of it unless sharded): the same sorted split in every process, checked above on all.
    shard = args.shard or shard_from_env()
    work = shard.take(list(zip(args.images, targets)), key=lambda pair: str(pair[0]))
    skip_existing = shard.sharded if args.skip_existing is None else args.skip_existing
    if args.series and shard.sharded:
        raise ValueError("--series tracks faces across all the listed images; it cannot be split with --shard "
                         "(shard videos or separate series instead)")
    unreadable: list[str] = []
    done = faces = skipped = 0
    start = time.perf_counter()
    series = _tracker(args) if args.series else None
    memory = _track_memory(args) if args.series else None
    waiting: list = []  # series images whose tracked faces are not final yet

    def restore_one(path, target, img, rgb, detections) -> int:
        res = restore_images(rgb, detector, restorer, _options(args), paste, crop_size=crop_size, seed=args.seed,
                             detections=None if detections is None else [detections], temporal=memory)
        write_image(target, res.images[0], img.alpha, img.gray, img.bit_depth)
        print(f"{path}: {len(res.faces)} face(s) -> {target}")
        return len(res.faces)

    for path, target in work:
        if skip_existing and target.exists():  # results are written atomically: an existing one is complete
            skipped += 1
            continue
        if _is_video(path):
            try:
                frames, video_faces = _restore_video(path, target, detector, restorer, paste, crop_size, args)
            except VideoReadError as exc:  # this file only; anything else (models, disk) stops the run
                print(f"error: {exc}", file=sys.stderr)
                unreadable.append(str(path))
                continue
            print(f"{path}: {frames} frame(s), {video_faces} face(s) -> {target}")
            done += 1
            faces += video_faces
            continue
        img = _read_or_report(path, unreadable)
        if img is None:
            continue
        # Anything failing from here on (models, a full disk) would fail for every image: it stops the run.
        rgb = img.rgb[None].to(args.device)
        if series is None:
            ready = [(path, target, img, rgb, None)]
        else:  # a look-ahead smoother gives an image's tracked faces once the next images are in
            from .faces.detection.batch import detect_faces

            waiting.append((path, target, img, rgb))
            ready = [(*waiting.pop(0), d) for d in series.push(detect_faces(detector, rgb, _options(args))[0])]
        for item in ready:
            faces += restore_one(*item)
            done += 1
    for item in [(*waiting.pop(0), d) for d in (series.flush() if series is not None else [])]:
        faces += restore_one(*item)
        done += 1
    _report_throughput(shard, len(work), done, faces, skipped, time.perf_counter() - start)
    return _report_unreadable(unreadable, len(work))


def _track_memory(args: argparse.Namespace):
    from .restoration.temporal import TrackMemory

    return TrackMemory(blend=args.temporal_blend, color=args.color_smoothing, max_gap=args.max_gap)


def _restore_video(path: str, target: Path, detector, restorer, paste, crop_size: int,
                   args: argparse.Namespace) -> tuple[int, int]:
    """Restore a video file chunk by chunk into ``target`` (same container type, size, timing and audio):
    faces tracked and smoothed, the same noise per track, optional blending. Returns (frames, faces)."""
    from .io.video import VideoWriter, probe_video, read_video
    from .restoration.video import restore_clip

    info = probe_video(path)
    chunks = read_video(path, args.chunk_frames)
    stamps: list = []

    def frames_of():
        for frames, pts in chunks:
            stamps.extend(pts)
            yield frames.to(args.device)

    frames = faces = 0
    with VideoWriter(target, path) as writer:
        for res in restore_clip(frames_of(), detector, restorer, _options(args), paste, crop_size, seed=args.seed,
                                tracker=_tracker(args, float(info.fps)), temporal=_track_memory(args)):
            n = res.images.shape[0]  # with a look-ahead smoother, results trail the chunks
            writer.write(res.images, stamps[:n])
            del stamps[:n]
            frames += n
            faces += len(res.faces)
    return frames, faces


def _report_throughput(shard, planned: int, done: int, faces: int, skipped: int, seconds: float) -> None:
    """One line per process on stderr: what it restored and how fast (model loading excluded)."""
    rate = (lambda n: f"{n / seconds:.3g}") if seconds > 0 else (lambda n: "-")
    label = f"shard {shard}" if shard.sharded else "restore"
    print(f"{label}: {done} of {planned} image(s) restored ({skipped} already done), {faces} face(s) in "
          f"{seconds:.1f} s: {rate(done)} images/s, {rate(faces)} faces/s", file=sys.stderr)


def cmd_align(args: argparse.Namespace) -> int:
    """Aligned face crops of each photo: OUTDIR/<stem>_face<k>.png (k in the selection's order)."""
    _check_output(args, "crops")
    args.images = _expand_inputs(args.images)
    unreadable: list[str] = []
    _align_photos(args, args.images, Path(args.output), unreadable)
    return _report_unreadable(unreadable, len(args.images))


def _align_photos(args: argparse.Namespace, photos: list[str], outdir: Path, unreadable: list[str]) -> dict[str, int]:
    """Write the aligned crops of ``photos`` to OUTDIR/<stem>_face<k>.png; returns the face count per photo read."""
    from .faces.align import align_faces
    from .faces.detection.batch import detect_faces
    from .io.images import write_image

    detector = _detector(args)
    outdir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for path in photos:
        img = _read_or_report(path, unreadable)
        if img is None:
            continue
        rgb = img.rgb[None].to(args.device)
        crops, faces = align_faces(rgb, detect_faces(detector, rgb, _options(args)), args.crop_size)
        for k in range(len(faces)):
            write_image(outdir / f"{Path(path).stem}_face{k}.png", crops[k].cpu(), bit_depth=img.bit_depth)
        counts[path] = len(faces)
        print(f"{path}: {len(faces)} face(s) -> {outdir}")
    return counts


def cmd_pseudo_targets(args: argparse.Namespace) -> int:
    """DT-BFR pseudo-targets of aligned crops, written as they are made; existing targets are skipped (resume)."""
    from .training.pseudo_targets import write_pseudo_targets

    _check_output(args, "pseudo-targets")
    _target_options(args)
    crops = [Path(p) for p in _expand_inputs(args.crops)]
    missing = [str(p) for p in crops if not p.is_file()]
    if missing:
        raise ValueError(f"crop file(s) not found: {', '.join(missing)}")
    dtype = parse_dtype(args.dtype, args.device)
    from .diffusion.loading import load_prior
    from .restoration.backbones import load_restorer

    prior = load_prior(_model_path(args, args.prior), device=args.device, dtype=dtype)
    backbone = None
    if args.restorer != "none":
        backbone = load_restorer(_model_path(args, args.restorer), device=args.device, dtype=dtype)
    outdir = Path(args.output)
    before = sum((outdir / (p.stem + ".png")).exists() for p in crops) if outdir.is_dir() else 0
    if before:
        print(f"{before} of {len(crops)} target(s) already in {outdir}: skipped", file=sys.stderr)
    shard = args.shard or shard_from_env()
    targets = write_pseudo_targets(crops, outdir, prior, backbone, seed=args.seed, batch_size=args.batch_size,
                                   progress=_print_progress, device=args.device, shard=shard, **_target_options(args))
    made = sum(t.exists() for t in targets) - before
    print(f"{made} pseudo-target(s) written to {outdir} ({len(targets)} in all"
          f"{f'; this was shard {shard}' if shard.sharded else ''})")
    return 0


def _target_options(args: argparse.Namespace) -> dict:
    if args.constrain_until > args.t_start:
        raise ValueError(f"--constrain-until ({args.constrain_until}) must not exceed --t-start ({args.t_start}); "
                         f"0 turns the low-pass constraint off")
    return dict(t_start=args.t_start, lowpass=args.lowpass, constrain_until=args.constrain_until)


def cmd_adapt(args: argparse.Namespace) -> int:
    """DT-BFR adaptation: align the photos (or take aligned crops), make or reuse pseudo-targets, fine-tune the
    backbone, save it in the layout of its file. Resumable; several processes with accelerate launch / torchrun."""
    from .diffusion.loading import load_prior
    from .restoration.backbones import load_restorer
    from .training.adapt import adapt_backbone
    from .training.backbones import save_backbone
    from .training.distributed import make_accelerator, process_shard, wait_for_everyone
    from .training.finetune import FinetuneConfig

    out = Path(str(args.output))
    if not str(args.output).strip() or out.is_dir():
        raise ValueError(f"-o {args.output!r} must name the adapted backbone's file (e.g. swinir_adapted.pth)")
    targets = _target_options(args)
    config = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, micro_batch=args.micro_batch, lr=args.lr,
                            lr_min=args.lr_min, ema_decay=args.ema, precision=args.precision,
                            perceptual_weight=args.perceptual_weight, train_mode=not args.eval_mode,
                            flip=args.flip, validate_every=args.validate_every,
                            checkpoint_every=args.checkpoint_every, seed=args.seed)
    config.check()
    work = Path(args.work_dir) if args.work_dir else out.with_name(out.name + ".work")
    accelerator = make_accelerator(args.device)  # None for one process
    device = accelerator.device if accelerator is not None else args.device
    inputs = _expand_inputs(args.images)
    unreadable: list[str] = []
    if args.aligned:
        crops = [Path(p) for p in inputs]
        missing = [str(p) for p in crops if not p.is_file()]
        if missing:
            raise ValueError(f"crop file(s) not found: {', '.join(missing)}")
    else:  # each process aligns its share of the photos; then every process lists all crops
        args.device = str(device)
        _align_photos(args, process_shard(accelerator).take(inputs), work / "crops", unreadable)
        wait_for_everyone(accelerator)
        found = {p: sorted((work / "crops").glob(f"{Path(p).stem}_face*.png")) for p in inputs}
        faceless = [p for p, c in found.items() if not c and p not in unreadable]
        if faceless:
            print(f"warning: no face found in {len(faceless)} photo(s), left out: {', '.join(faceless)} (lower "
                  f"--threshold or --min-size to find smaller or fainter faces)", file=sys.stderr)
        crops = [c for p in inputs for c in found[p]]
        if not crops:
            raise ValueError("no face found in any photo: nothing to adapt to (aligned crops already? pass --aligned)")
    dtype = parse_dtype(args.dtype)
    prior = load_prior(_model_path(args, args.prior), device=device, dtype=dtype)
    backbone = load_restorer(_model_path(args, args.restorer), device=device)
    perceptual = None
    if args.perceptual:
        from .training.perceptual import load_perceptual

        perceptual = load_perceptual(model_files.resolve_model(args.perceptual, args.models_dir), device=device)
    log = (lambda line: print(line, file=sys.stderr)) if process_shard(accelerator).index == 0 else None
    result = adapt_backbone(crops, work, prior, backbone, config, holdout=args.holdout, perceptual=perceptual,
                            pseudo_target_options=dict(seed=args.seed, batch_size=args.target_batch_size,
                                                       device=device, **targets),
                            accelerator=accelerator, target_progress=_print_progress,
                            progress=_print_progress if log else None, log=log)
    if process_shard(accelerator).index == 0:
        save_backbone(backbone, out)
        val = result.validation
        figures = (f"; held-out PSNR to the targets {val[0]['psnr']:.2f} → {val[-1]['psnr']:.2f} dB"
                   if len(val) > 1 else "")
        print(f"adapted backbone ({result.step} steps, {len(crops)} faces{figures}) -> {out}")
    wait_for_everyone(accelerator)
    return _report_unreadable(unreadable, len(inputs))


def _size_text(n: int | None) -> str:
    if n is None:
        return "size unknown"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def cmd_models(args: argparse.Namespace) -> int:
    dirs = model_files.search_dirs(args.models_dir)
    print("searched: " + (", ".join(str(d) for d in dirs) or "(nothing: pass --models-dir or set "
                          f"${model_files.ENV_MODELS_DIR})"))
    if args.models_dir and not Path(args.models_dir).is_dir():
        print(f"note: --models-dir {args.models_dir} does not exist (yet); `download` creates it")
    dest = args.models_dir or "DIR"
    for entry in model_files.REGISTRY.values():
        status, path = model_files.file_status(entry, args.models_dir)
        print(f"{status:10s} {entry.folder}/{entry.name}  [{entry.licence}]" + (f"  {path}" if path else ""))
        if status in ("missing", "corrupt"):
            pin = "" if entry.sha256 else " --allow-unpinned"
            print(f"           {entry.description}; {_size_text(entry.size)}; from {entry.url}\n"
                  f"           get it: python -m bfr_core download {entry.name} --models-dir {dest}{pin}\n"
                  f"           or put the file in {dest}/{entry.folder}/ yourself")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    dest = args.models_dir or (model_files.search_dirs()[0] if model_files.search_dirs() else None)
    if dest is None:
        raise ValueError("pass --models-dir DIR (where to put the files)")
    if args.sha256 and len(set(args.name)) > 1:
        raise ValueError("--sha256 checks one file: download the files one at a time")
    for name in dict.fromkeys(args.name):  # in order, once each; the first failure stops (and says why)
        entry = model_files.REGISTRY[name]
        target = Path(dest) / entry.folder / entry.name
        try:
            path = model_files.download(name, dest, args.sha256, args.allow_unpinned)
        except OSError as exc:  # offline, DNS, HTTP errors, a full disk: say what, from where, to where
            raise OSError(f"could not download {entry.name} from {entry.url} to {target} ({exc}). Without "
                          f"internet, fetch that URL on another machine and put the file at {target}") from exc
        print(f"saved {path} (sha256 {model_files.sha256_of(path)})")
    return 0


def _add_dtype_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--dtype", choices=[AUTO, *sorted(PRECISIONS)], default=default,
                   help=f"precision of the networks (default {default}; auto: bf16 on CPUs with native bf16 and on "
                        f"recent GPUs, fp16 on older GPUs, else fp32)")


def _add_chunk_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunk-frames", type=_number(int, 1, 4096), default=16,
                   help="video frames decoded and processed at a time (memory does not grow with the length)")


def _add_target_args(p: argparse.ArgumentParser) -> None:
    """The pseudo-target options (`pseudo-targets` and `adapt`)."""
    p.add_argument("--t-start", type=_number(int, 1, 249, what=" (a step of the 250-step respacing)"), default=150,
                   help="start step of the 250-step respacing (default 150 = training timestep 600)")
    p.add_argument("--lowpass", type=_number(int, 1, 4096), default=16,
                   help="low band = bicubic down by this factor and back (DT-BFR: 16 for SwinIR, 8 otherwise)")
    p.add_argument("--constrain-until", type=_number(int, 1, 249, zero_ok=True, what=", or 0 for no constraint"),
                   default=90, help="keep the estimate's low band while t >= this (default 90; 0 = off)")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="crop i (in the listed order) uses seed + i")


def _add_adapt_parser(sub) -> None:
    p = sub.add_parser(
        "adapt", help="DT-BFR: fine-tune a backbone on pseudo-targets of your own photos (resumable, multi-process)",
        description="Detect and align the faces of the photos (or take aligned crops with --aligned), make their "
                    "pseudo-targets with the prior (or reuse those in the work folder), fine-tune the backbone on "
                    "(crop, target) pairs, and save it with the keys and layout of the --restorer file. Rerun the "
                    "same command to resume. Several processes: accelerate launch [--multi_gpu --num_processes N] "
                    "-m bfr_core adapt ... (DDP; the pseudo-targets are shared out between the processes).")
    _add_detect_args(p)
    p.add_argument("-o", "--output", required=True, help="the adapted backbone's file (e.g. swinir_adapted.pth)")
    p.add_argument("--restorer", required=True, help="the backbone to adapt, e.g. swinir_restoration512_L1.pth")
    p.add_argument("--prior", required=True, help="pixel diffusion prior: iddpm_ffhq512_ema500000.pth, a "
                                                  ".safetensors copy, or a diffusers UNet folder")
    p.add_argument("--aligned", action="store_true", help="the inputs are aligned face crops (no detection)")
    p.add_argument("--crop-size", type=_number(int, 64, 4096), default=512, help="aligned crop size in px (512)")
    p.add_argument("--work-dir", help="crops, pseudo-targets and checkpoints (default: OUTPUT.work)")
    _add_target_args(p)
    p.add_argument("--target-batch-size", type=_number(int, 1), default=4,
                   help="faces per UNet call for the pseudo-targets (halved on out-of-memory)")
    p.add_argument("--dtype", choices=sorted(PRECISIONS), default="fp32", help="the prior's precision")
    p.add_argument("--steps", type=_number(int, 1), default=20000, help="optimizer steps (DT-BFR: 20000)")
    p.add_argument("--batch-size", type=_number(int, 1), default=16, help="faces per step, all processes (16)")
    p.add_argument("--micro-batch", type=_number(int, 1), default=None,
                   help="faces per forward pass; gradients accumulate to --batch-size (halved on out-of-memory)")
    p.add_argument("--lr", type=_number(float, 1e-12), default=2e-5, help="AdamW learning rate (2e-5) …")
    p.add_argument("--lr-min", type=_number(float, 0.0), default=5e-6, help="… cosine-annealed to this (5e-6)")
    p.add_argument("--ema", type=_number(float, 0.0, 0.99999), default=0.0, help="EMA decay, e.g. 0.999 (0 = off)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                   help="training precision: bf16 autocast (CPU/CUDA), fp16 (CUDA), fp32")
    p.add_argument("--perceptual", help="VGG16/19 weights (torchvision's vgg16-397923af.pth) for a perceptual term; "
                                        "without it: L1 only. Never downloaded")
    p.add_argument("--perceptual-weight", type=_number(float, 0.0), default=0.1)
    p.add_argument("--holdout", type=_number(float, 0.0, 0.9), default=0.125,
                   help="fraction of the faces held out for validation (default 1 in 8)")
    p.add_argument("--validate-every", type=_number(int, 1), default=500)
    p.add_argument("--checkpoint-every", type=_number(int, 1), default=500)
    p.add_argument("--eval-mode", action="store_true",
                   help="train with dropout / stochastic depth off (deterministic)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flips")
    p.set_defaults(func=cmd_adapt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bfr_core", description="Blind face restoration tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("detect", help="detect faces and print boxes, landmarks and scores")
    _add_detect_args(p)
    p.add_argument("--json", action="store_true", help="print JSON (video files: one entry per frame, each face "
                                                       "with its track id and smoothed landmarks)")
    _add_track_args(p)
    _add_chunk_arg(p)
    p.set_defaults(func=cmd_detect)
    p = sub.add_parser("restore", help="detect, align, restore and paste back faces")
    _add_detect_args(p)
    p.add_argument("-o", "--output", required=True,
                   help="output folder (images: <input stem>.png; videos: the input's file name)")
    p.add_argument("--prior", help="diffusion prior: iddpm_ffhq512_ema500000.pth, a .safetensors copy, or a "
                                   "diffusers UNet folder (omitted: no diffusion, the restorer's output is pasted)")
    p.add_argument("--restorer", default="none",
                   help="restoration backbone, e.g. swinir_restoration512_L1.pth ('none': the crop itself)")
    p.add_argument("--strength", type=_number(float, 0.0, 1.0), default=0.4,
                   help="0 = backbone only, 0.4 = DifFace (t=400), 1 = generate")
    p.add_argument("--steps", type=_number(int, 1, 1000), default=None,
                   help=f"denoising steps (default: the sampler preset's; fast: {DEFAULT_STEPS}, official: 100)")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                   help="sampler preset: fast (20 DDIM steps, the default), official (DifFace exactly: 100 steps), "
                        "ddim (50 steps unless --steps), dpmsolver++ (20)")
    p.add_argument("--eta", type=_number(float, 0.0, 1.0), default=None,
                   help="DDIM noise (default: the preset's, 0.5 as DifFace)")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--batch-size", type=_number(int, 1), default=4,
                   help="faces per backbone/UNet call (halved on out-of-memory)")
    _add_dtype_arg(p, AUTO)
    p.add_argument("--compile", choices=COMPILE_MODES, default="off",
                   help="torch.compile the prior (default off; reduce-overhead adds CUDA graphs; falls back to eager "
                        "on failure)")
    p.add_argument("--crop-size", type=_number(int, 64, 4096, zero_ok=True, what=" px, or 0 for the prior's size"),
                   default=0, help="aligned crop size in px (default 0: the prior's, at least 512)")
    p.add_argument("--align-only", action="store_true",
                   help="no restoration: paste the aligned faces back unchanged (checks detection and masks)")
    p.add_argument("--recognizer", help="face recognizer for identity guidance (glintr100.onnx, backbone.pth, "
                                        "recognition_arcface_ir_se50.pth)")
    p.add_argument("--identity-strength", type=_number(float, 0.0), default=1.0,
                   help="identity guidance strength (0 = off)")
    p.add_argument("--reference", nargs="+", help="photos of the person: guide toward their identity "
                                                 "(default: the input's own identity)")
    p.add_argument("--mask", choices=("ellipse", "square"), default="ellipse")
    p.add_argument("--color-match", choices=("none", "mean_std", "lowpass"), default="none")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="restore only this process's share of the inputs: the sorted inputs, every N-th from the "
                        "I-th (0-based); run I = 0..N-1 anywhere, the union equals one run. Default: RANK/"
                        "WORLD_SIZE when set (torchrun, accelerate launch), else everything")
    p.add_argument("--skip-existing", action=argparse.BooleanOptionalAction, default=None,
                   help="skip inputs whose result already exists (resume after a crash; results are written "
                        "whole or not at all). Default: on when sharded, off otherwise")
    _add_track_args(p)
    _add_chunk_arg(p)
    p.add_argument("--temporal-blend", type=_number(float, 0.0, 0.99), default=0.0,
                   help="videos/series: weight of a face's previous restored crop (moving average in aligned "
                        "space); less flicker, some trailing on fast expressions (default 0 = off)")
    p.add_argument("--color-smoothing", type=_number(float, 0.0, 0.99), default=0.5,
                   help="videos/series with --color-match: colours are matched to a moving average of the face's "
                        "input crops with this weight, so they do not flicker (default 0.5; 0 = each frame's own)")
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser("align", help="write the aligned face crops of photos (e.g. for pseudo-targets)")
    _add_detect_args(p)
    p.add_argument("-o", "--output", required=True, help="output folder (<stem>_face<k>.png per face)")
    p.add_argument("--crop-size", type=_number(int, 64, 4096), default=512, help="aligned crop size in px (512)")
    p.set_defaults(func=cmd_align)
    p = sub.add_parser("pseudo-targets", help="DT-BFR pseudo-targets of aligned face crops (resumable)",
                       description="The backbone's estimate of each aligned crop, diffused to --t-start of the "
                                   "250-step respacing and sampled back by the prior with ancestral steps, its "
                                   "low-frequency band kept to the estimate's while t >= --constrain-until. One "
                                   "16-bit PNG per crop (<crop stem>.png); existing targets are skipped.")
    p.add_argument("crops", nargs="+", help="aligned face crops: image files or folders of them")
    p.add_argument("-o", "--output", required=True, help="output folder (one <crop stem>.png per crop)")
    p.add_argument("--prior", required=True, help="pixel diffusion prior: iddpm_ffhq512_ema500000.pth, a "
                                                  ".safetensors copy, or a diffusers UNet folder")
    p.add_argument("--restorer", default="none",
                   help="the backbone to adapt, e.g. swinir_restoration512_L1.pth ('none': the crop itself)")
    _add_target_args(p)
    p.add_argument("--batch-size", type=_number(int, 1), default=4,
                   help="faces per UNet call (halved on out-of-memory)")
    _add_dtype_arg(p, "fp32")
    _add_device_arg(p)
    p.add_argument("--models-dir", help=f"models folder (also ${model_files.ENV_MODELS_DIR}, or ComfyUI/models)")
    _add_licence_arg(p)
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="make only this process's share of the targets (every N-th crop from the I-th; seeds as in "
                        "one run). Default: RANK/WORLD_SIZE when set (torchrun, accelerate launch), else all")
    p.set_defaults(func=cmd_pseudo_targets)
    _add_adapt_parser(sub)
    p = sub.add_parser("similarity", help="cosine similarity of the largest faces in two images")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--recognizer", required=True, help="recognizer file (see restore --recognizer)")
    p.add_argument("--aligned", action="store_true", help="the images are already aligned face crops")
    p.add_argument("--detector", default="yunet")
    p.add_argument("--threshold", type=_number(float, 0.0, 1.0), default=0.6)
    p.add_argument("--models-dir")
    _add_device_arg(p)
    _add_licence_arg(p)
    p.set_defaults(func=cmd_similarity)
    p = sub.add_parser("models", help="list known model files and whether they are found")
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("download", help="download model files (explicit; verified by sha256)")
    p.add_argument("name", nargs="+", choices=sorted(model_files.REGISTRY), help="file name(s) from `models`")
    p.add_argument("--models-dir")
    p.add_argument("--sha256", help="expected sha256 for a file whose hash is not pinned here (one file only)")
    p.add_argument("--allow-unpinned", action="store_true", help="accept a file with no known sha256")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.func in (cmd_models, cmd_download):  # file listing and fetching need no torch
            return args.func(args)
        if getattr(args, "device", None) is not None:
            # Under torchrun / accelerate launch every process gets the same --device: cuda → its own cuda:LOCAL_RANK.
            args.device = process_device(args.device)
        import torch

        from .utils.devices import check_device

        if getattr(args, "device", None) is not None:
            check_device(args.device)
        with torch.no_grad():  # not inference_mode: identity guidance re-enables gradients per step
            return args.func(args)
    except (CheckpointError, ValueError, KeyError, OSError, RuntimeError) as exc:  # OSError: files, network
        print(f"error: {exc}", file=sys.stderr)
        return 2
