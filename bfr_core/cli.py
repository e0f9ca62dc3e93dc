"""Command line: `python -m bfr_core {detect,restore,models,download} ...`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from .diffusion.timesteps import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
from .models import files as model_files
from .models.checkpoint import CheckpointError
from .faces.detection import DETECTOR_ALIASES, SELECT_MODES, SORT_MODES, load_detector
from .io.images import read_image, write_image
from .restoration.pipeline import DetectOptions, PasteOptions, detect_faces, restore_images


def _add_detect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="input image files")
    p.add_argument("--detector", default="yunet",
                   help=f"{', '.join(DETECTOR_ALIASES)} or a model file path (default: yunet)")
    p.add_argument("--models-dir", help=f"models folder (also ${model_files.ENV_MODELS_DIR}, or ComfyUI/models)")
    p.add_argument("--threshold", type=float, default=0.6, help="detection score threshold (default 0.6)")
    p.add_argument("--min-size", type=float, default=0, help="ignore faces smaller than this many pixels")
    p.add_argument("--select", choices=SELECT_MODES, default="all")
    p.add_argument("--indices", default="", help="with --select indices: e.g. '0,2'")
    p.add_argument("--sort", choices=SORT_MODES, default="area")
    p.add_argument("--max-faces", type=int, default=0, help="keep at most this many faces (0 = all)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cpu (default cpu)")


def _detector(args: argparse.Namespace):
    name = DETECTOR_ALIASES.get(args.detector, args.detector)
    return load_detector(model_files.resolve_model(name, args.models_dir), device=args.device)


def _options(args: argparse.Namespace) -> DetectOptions:
    return DetectOptions(args.threshold, args.min_size, args.sort, args.select, args.indices, args.max_faces)


def cmd_detect(args: argparse.Namespace) -> int:
    detector = _detector(args)
    out = []
    for path in args.images:
        img = read_image(path)
        dets = detect_faces(detector, img.rgb[None], _options(args))[0]
        out.append({"image": str(path), "width": img.rgb.shape[2], "height": img.rgb.shape[1],
                    "faces": dets.to_json()})
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for item in out:
            print(f"{item['image']}: {len(item['faces'])} face(s)")
    return 0


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _crop_restorer(args: argparse.Namespace):
    """The crop → crop function for `restore`: backbone only, or backbone + diffusion prior."""
    from .restoration.backbones import load_restorer
    from .restoration.difface import restore_faces
    from .restoration.estimate import backbone_estimate

    dtype = DTYPES[args.dtype]
    restorer_path = None if args.restorer == "none" else model_files.resolve_model(args.restorer, args.models_dir)
    restorer = load_restorer(restorer_path, device=args.device, dtype=dtype)
    if args.prior is None:
        if args.recognizer:
            raise SystemExit("--recognizer (identity guidance) needs --prior")
        if args.restorer == "none":
            return None, 512
        return (lambda crops: backbone_estimate(crops, restorer, batch_size=args.batch_size)), 512
    from .diffusion.loading import load_prior

    prior = load_prior(model_files.resolve_model(args.prior, args.models_dir), device=args.device, dtype=dtype)
    recognizer = reference = None
    if args.recognizer:
        from .identity import load_recognizer

        recognizer = load_recognizer(model_files.resolve_model(args.recognizer, args.models_dir), device=args.device)
        if args.reference:
            reference = torch.cat([_largest_face(recognizer, path, args) for path in args.reference])
    def progress(i: int, total: int) -> None:
        if i == total or i % max(1, total // 10) == 0:
            print(f"  step {i}/{total}", file=sys.stderr)

    def run(crops):
        f, guidance = restorer, None
        if recognizer is not None:
            from .identity.guidance import IdentityGuidance

            # f(y) at the prior's size, computed once: the sampler's input and the blind identity target.
            crops, f = backbone_estimate(crops, restorer, int(prior.sample_size), args.batch_size), None
            guidance = IdentityGuidance(recognizer, strength=args.identity_strength, reference=reference,
                                        alphas_cumprod=prior.alphas_cumprod)
            if reference is None:
                guidance.prepare(crops)
        return restore_faces(crops, prior, restorer=f, strength=args.strength, steps=args.steps,
                             sampler=args.sampler, eta=args.eta, seed=args.seed, batch_size=args.batch_size,
                             guidance=guidance, progress=progress)

    return run, max(512, int(prior.sample_size))


def _largest_face(recognizer, path: str, args: argparse.Namespace) -> torch.Tensor:
    """Embedding [1, D] of the largest face in an image file (or of the image itself with --aligned)."""
    from .faces.align import align_faces

    rgb = read_image(path).rgb[None].to(args.device)
    if not getattr(args, "aligned", False):
        dets = detect_faces(_detector(args), rgb, DetectOptions(score_threshold=args.threshold, select="largest"))
        if len(dets[0]) == 0:
            raise ValueError(f"no face found in {path}; pass a photo with a visible face (or --aligned crops)")
        rgb, _ = align_faces(rgb, dets, 512)
    return recognizer.embed(rgb.contiguous())


def cmd_similarity(args: argparse.Namespace) -> int:
    from .identity import load_recognizer

    recognizer = load_recognizer(model_files.resolve_model(args.recognizer, args.models_dir), device=args.device)
    a, b = _largest_face(recognizer, args.a, args), _largest_face(recognizer, args.b, args)
    print(f"{float((a * b).sum()):.4f}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    detector = _detector(args)
    restore_fn, prior_size = _crop_restorer(args)
    crop_size = args.crop_size or prior_size
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    paste = PasteOptions(mask=args.mask, color_match=args.color_match)
    taken = {Path(p).resolve() for p in args.images}  # inputs, then each result as it is planned
    targets: list[Path] = []
    for path in args.images:  # checked before any work: a clash must not surface after an hour of restoring
        target = outdir / (Path(path).stem + ".png")
        if target.resolve() in taken:
            raise ValueError(f"{target} would overwrite an input or another result; choose another -o folder")
        taken.add(target.resolve())
        targets.append(target)
    unreadable: list[str] = []
    for path, target in zip(args.images, targets):
        try:
            img = read_image(path)
        except (ValueError, OSError) as exc:  # one unreadable photo must not stop a whole folder
            print(f"error: {exc}", file=sys.stderr)
            unreadable.append(str(path))
            continue
        # Anything failing from here on (models, a full disk) would fail for every image: it stops the run.
        res = restore_images(img.rgb[None].to(args.device), detector, restore_fn, _options(args), paste,
                             crop_size=crop_size)
        write_image(target, res.images[0], img.alpha, img.gray, img.bit_depth)
        print(f"{path}: {len(res.faces)} face(s) -> {target}")
    if unreadable:
        print(f"error: {len(unreadable)} of {len(targets)} image(s) could not be read: {', '.join(unreadable)}",
              file=sys.stderr)
        return 2
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    dirs = model_files.search_dirs(args.models_dir)
    print("searched: " + (", ".join(str(d) for d in dirs) or "(nothing: pass --models-dir or set "
                          f"${model_files.ENV_MODELS_DIR})"))
    for entry in model_files.REGISTRY.values():
        status, path = model_files.file_status(entry, args.models_dir)
        print(f"{status:10s} {entry.folder}/{entry.name}  [{entry.licence}]" + (f"  {path}" if path else ""))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    dest = args.models_dir or (model_files.search_dirs()[0] if model_files.search_dirs() else None)
    if dest is None:
        raise SystemExit("pass --models-dir DIR (where to put the file)")
    path = model_files.download(args.name, dest, args.sha256, args.allow_unpinned)
    print(f"saved {path} (sha256 {model_files.sha256_of(path)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bfr_core", description="Blind face restoration tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("detect", help="detect faces and print boxes, landmarks and scores")
    _add_detect_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_detect)
    p = sub.add_parser("restore", help="detect, align, restore and paste back faces")
    _add_detect_args(p)
    p.add_argument("-o", "--output", required=True, help="output folder (files named <input stem>.png)")
    p.add_argument("--prior", help="diffusion prior: iddpm_ffhq512_ema500000.pth, a .safetensors copy, or a "
                                   "diffusers UNet folder (omitted: no diffusion, the restorer's output is pasted)")
    p.add_argument("--restorer", default="none",
                   help="restoration backbone, e.g. swinir_restoration512_L1.pth ('none': the crop itself)")
    p.add_argument("--strength", type=float, default=0.4, help="0 = backbone only, 0.4 = DifFace (t=400), 1 = generate")
    p.add_argument("--steps", type=int, default=None,
                   help=f"denoising steps (default: the sampler preset's; fast: {DEFAULT_STEPS}, official: 100)")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                   help="fast: 20 DDIM steps, eta 0.5 (default); official: DifFace exactly; ddim; dpmsolver++")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise (default: the preset's, 0.5 as DifFace)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4, help="faces per backbone/UNet call (halved on out-of-memory)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--crop-size", type=int, default=0, help="aligned crop size (default: the prior's, 512)")
    p.add_argument("--recognizer", help="face recognizer for identity guidance (glintr100.onnx, backbone.pth, "
                                        "recognition_arcface_ir_se50.pth)")
    p.add_argument("--identity-strength", type=float, default=1.0, help="identity guidance strength (0 = off)")
    p.add_argument("--reference", nargs="+", help="photos of the person: guide toward their identity "
                                                 "(default: the input's own identity)")
    p.add_argument("--mask", choices=("ellipse", "square"), default="ellipse")
    p.add_argument("--color-match", choices=("none", "mean_std", "lowpass"), default="none")
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser("similarity", help="cosine similarity of the largest faces in two images")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--recognizer", required=True, help="recognizer file (see restore --recognizer)")
    p.add_argument("--aligned", action="store_true", help="the images are already aligned face crops")
    p.add_argument("--detector", default="yunet")
    p.add_argument("--threshold", type=float, default=0.6)
    p.add_argument("--models-dir")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_similarity)
    p = sub.add_parser("models", help="list known model files and whether they are found")
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("download", help="download one model file (explicit; verified by sha256)")
    p.add_argument("name", choices=sorted(model_files.REGISTRY))
    p.add_argument("--models-dir")
    p.add_argument("--sha256", help="expected sha256 for files whose hash is not pinned here")
    p.add_argument("--allow-unpinned", action="store_true", help="accept a file with no known sha256")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        with torch.no_grad():  # not inference_mode: identity guidance re-enables gradients per step
            return args.func(args)
    except (CheckpointError, ValueError, KeyError, OSError, RuntimeError) as exc:  # OSError: files, network
        print(f"error: {exc}", file=sys.stderr)
        return 2
