"""DT-BFR adaptation, measured: does fine-tuning on pseudo-targets of one unseen degradation help, and what it costs.

Quality (real faces, the analytic prior of tests/analytic_prior.py, a tiny SwinIR loadable by load_restorer):
  faces    every face YuNet finds in ../shared/data (the 29 of the 1927 Solvay photo, the whole photos) and the 4
           aligned crops, aligned at --size px; every 4th is held out (never seen by backbone or prior)
  start    a tiny SwinIR (spandrel, DifFace's file layout) trained --steps on the training faces under a *source*
           degradation (mild blur + noise), saved and reloaded with load_restorer: the backbone to adapt
  target   an unseen degradation (stronger blur, ×1/2, noise, JPEG 30) applied to every face
  targets  pseudo-targets of the degraded training faces: generate_pseudo_targets with the start backbone and the
           analytic prior over the training faces (+ mirrors), DT-BFR's chain (t_start 150, constrained until 90,
           low band on a 32×32 grid like 512/16)
  adapted  the start backbone fine-tuned --steps on (degraded, pseudo-target) pairs
  clean    the same fine-tuning on (degraded, clean) pairs: the upper bound (ground truth DT-BFR does not have)
  Printed: mean PSNR to the clean held-out faces of each backbone on the held-out faces with the target
  degradation, and the DifFace path (start backbone + analytic prior, fast preset) on them for reference.

Cost at 512 on this machine (each in its own process, so its peak RSS is its own; random weights in the real
shapes, speed does not depend on their values):
  targets512  generate_pseudo_targets with DifFace's UNet (real config) and SwinIR (DifFace's config) on one face for
              a few steps; s per UNet step, and pseudo-targets/s at DT-BFR's 150 steps extrapolated from them
  train512    finetune_backbone of DifFace's SwinIR, batch 1, --train-steps steps: s per iteration (fp32 and bf16)
  speed       the adapted backbone alone (one SwinIR forward) against the DifFace path (SwinIR + 20 UNet steps,
              the fast preset; 100 for the official one), from measured SwinIR and UNet times on the same face

    PYTHONPATH=. python bench/bench_adaptation.py [--size 32] [--steps 150] [--threads 2] [--skip-512] [--skip-quality]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from analytic_prior import AnalyticPrior, degrade, psnr, read_rgb01  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def real_faces(size: int) -> torch.Tensor:
    """Every face YuNet finds in the shared photos, aligned at ``size``, plus the aligned crops: [N, 3, size, size]."""
    from bfr_core import DetectOptions, align_faces, detect_faces, load_detector
    from bfr_core.io.images import read_image

    detector = load_detector(DATA / "models" / "face_detection_yunet_2023mar.onnx")
    faces = []
    for path in [DATA / "images" / "group" / "Solvay_conference_1927.png", *sorted((DATA / "images" / "whole").iterdir())]:
        rgb = read_image(path).rgb[None]
        crops, _ = align_faces(rgb, detect_faces(detector, rgb, DetectOptions()), size)
        faces.append(crops)
    faces.append(torch.stack([read_rgb01(p, size) for p in sorted((DATA / "images" / "aligned512").glob("*.png"))]))
    return torch.cat(faces).clamp(0, 1)


def tiny_swinir_file(folder: Path) -> Path:
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    net = SwinIR(img_size=8, patch_size=1, in_chans=3, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4,
                 mlp_ratio=2.0, upscale=2, img_range=1.0, upsampler="nearest+conv", resi_connection="1conv",
                 start_unshuffle=2)
    sd = {"module." + ("conv_first.1." + k[len("conv_first."):] if k.startswith("conv_first.") else k): v
          for k, v in net.state_dict().items()}
    path = folder / "tiny_swinir.pth"
    torch.save({"state_dict": sd}, path)
    return path


def quality(args: argparse.Namespace) -> None:
    import tempfile

    from bfr_core import generate_pseudo_targets, load_restorer, restore_faces
    from bfr_core.training import FinetuneConfig, TensorPairs, finetune_backbone, save_backbone

    faces = real_faces(args.size)
    held = torch.arange(len(faces)) % 4 == 3
    train_clean, held_clean = faces[~held], faces[held]
    src = torch.stack([degrade(f, seed=100 + i, blur_sigma=0.6, down=1, noise=0.02, jpeg=95) for i, f in enumerate(faces)])
    tgt = torch.stack([degrade(f, seed=i, blur_sigma=1.2, down=2, noise=0.04, jpeg=30) for i, f in enumerate(faces)])
    print(f"{len(faces)} real faces at {args.size} px: {len(train_clean)} to adapt on, {len(held_clean)} held out")
    cfg = FinetuneConfig(steps=args.steps, batch_size=8, lr=1e-3, lr_min=1e-4, train_mode=False,
                         validate_every=10**9, checkpoint_every=10**9)

    def held_psnr(f) -> float:
        with torch.no_grad():
            return float(psnr(f(tgt[held]), held_clean).mean())

    with tempfile.TemporaryDirectory(prefix="bench_adapt_") as tmp:
        start_file = tiny_swinir_file(Path(tmp))
        f = load_restorer(start_file)
        t0 = time.perf_counter()
        finetune_backbone(f, TensorPairs(src[~held], train_clean), config=cfg)
        its = args.steps / (time.perf_counter() - t0)
        start_file = save_backbone(f, Path(tmp) / "start.pth")
        start = load_restorer(start_file)
        print(f"start backbone: trained {args.steps} steps on the source degradation ({its:.2f} it/s at "
              f"{args.size} px, batch 8)")

        prior = AnalyticPrior(torch.cat([train_clean, train_clean.flip(-1)]))
        t0 = time.perf_counter()
        targets = generate_pseudo_targets(tgt[~held], prior, start, t_start=150, constrain_until=90,
                                          lowpass=max(1, args.size // 32), seed=0, batch_size=16)
        dt = time.perf_counter() - t0
        with torch.no_grad():
            est = start(tgt[~held])
        print(f"pseudo-targets: {len(targets) / dt:.1f}/s on the analytic prior (its 'UNet' is nearly free: sampler "
              f"and backbone overhead only); PSNR to the clean training faces: estimate "
              f"{float(psnr(est, train_clean).mean()):.2f} dB → targets {float(psnr(targets, train_clean).mean()):.2f} dB")

        rows = [("input (degraded)", float(psnr(tgt[held], held_clean).mean())), ("start backbone", held_psnr(start))]
        for name, pairs_target in (("adapted on pseudo-targets", targets), ("trained on clean (upper bound)",
                                                                           train_clean)):
            f = load_restorer(start_file)
            finetune_backbone(f, TensorPairs(tgt[~held], pairs_target), config=cfg)
            rows.append((name, held_psnr(f)))
        t0 = time.perf_counter()
        restored = restore_faces(tgt[held], prior, restorer=start, strength=0.4, seed=0)
        dif_t = (time.perf_counter() - t0) / int(held.sum())
        rows.append(("DifFace path (start + analytic prior)", float(psnr(restored, held_clean).mean())))
        t0 = time.perf_counter()
        with torch.no_grad():
            f(tgt[held])
        bb_t = (time.perf_counter() - t0) / int(held.sum())
    print(f"\nheld-out PSNR to the clean faces, target degradation ({int(held.sum())} faces, {args.steps} steps each):")
    for name, value in rows:
        print(f"  {name:40s} {value:6.2f} dB")
    print(f"  (the analytic prior knows only the training faces: the DifFace path on unseen faces lands on a training"
          f" face; at {args.size} px it takes {dif_t * 1e3:.0f} ms/face vs {bb_t * 1e3:.1f} ms/face for the backbone)")


def phase_targets512(args: argparse.Namespace) -> dict:
    from bench_sampler_overhead import build_unet, make_prior

    from bfr_core import generate_pseudo_targets
    from bfr_core.archs.swinir import DIFFACE_SWINIR, SwinIR

    prior = make_prior(build_unet(torch.device("cpu"), torch.float32))
    backbone = SwinIR(DIFFACE_SWINIR).eval().requires_grad_(False)
    y = torch.rand(1, 3, 512, 512)
    out = {}
    for k in (1, 3):  # time(k steps) = fixed + k · step
        t0 = time.perf_counter()
        with torch.no_grad():
            generate_pseudo_targets(y, prior, backbone, t_start=k, constrain_until=1, seed=0)
        out[k] = time.perf_counter() - t0
    step = (out[3] - out[1]) / 2
    fixed = out[1] - step
    t0 = time.perf_counter()
    with torch.no_grad():
        backbone(y)
    swinir = time.perf_counter() - t0
    return {"unet_step_s": step, "fixed_s": fixed, "target_s_150": fixed + 150 * step, "swinir_s": swinir,
            "peak_rss_mib": peak_rss_mib()}


def phase_train512(args: argparse.Namespace) -> dict:
    from bfr_core.archs.swinir import DIFFACE_SWINIR, SwinIR
    from bfr_core.training import FinetuneConfig, TensorPairs, finetune_backbone

    g = torch.Generator().manual_seed(0)
    pairs = TensorPairs(torch.rand(8, 3, 512, 512, generator=g), torch.rand(8, 3, 512, 512, generator=g))
    out = {}
    for precision in ("fp32", "bf16"):
        net = SwinIR(DIFFACE_SWINIR)
        cfg = FinetuneConfig(steps=args.train_steps + 1, batch_size=1, precision=precision, validate_every=10**9,
                             checkpoint_every=10**9, min_faces=1)
        times: list[float] = []
        t0 = [time.perf_counter()]

        def tick(step: int, total: int) -> None:
            now = time.perf_counter()
            times.append(now - t0[0])
            t0[0] = now

        finetune_backbone(net, pairs, config=cfg, progress=tick)
        out[precision] = sum(times[1:]) / len(times[1:])  # the first step pays one-off allocations
    return {"iter_s": out, "peak_rss_mib": peak_rss_mib()}


def run_phase(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--threads", str(args.threads),
           "--train-steps", str(args.train_steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32, help="face size for the quality part (default 32)")
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning steps per backbone (default 150)")
    ap.add_argument("--train-steps", type=int, default=2, help="timed fine-tuning steps at 512 (default 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-512", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--phase", choices=["targets512", "train512"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.phase:
        print(json.dumps((phase_targets512 if args.phase == "targets512" else phase_train512)(args)))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU")
    if not args.skip_quality:
        quality(args)
    if args.skip_512:
        return
    tg = run_phase("targets512", args)
    tr = run_phase("train512", args)
    print(f"\ncost at 512 px, CPU, {args.threads} thread(s), random weights in the real shapes:")
    print(f"  pseudo-targets: {tg['unet_step_s']:.2f} s per UNet step + {tg['fixed_s']:.2f} s fixed → "
          f"{tg['target_s_150']:.0f} s per target at DT-BFR's 150 steps = {3600 / tg['target_s_150']:.1f} targets/h "
          f"({1 / tg['target_s_150']:.4f}/s); peak RSS {tg['peak_rss_mib']:.0f} MiB")
    print(f"  fine-tuning DifFace's SwinIR, batch 1: {tr['iter_s']['fp32']:.1f} s/iteration fp32 "
          f"({1 / tr['iter_s']['fp32']:.3f} it/s), {tr['iter_s']['bf16']:.1f} s bf16 "
          f"({1 / tr['iter_s']['bf16']:.3f} it/s); peak RSS {tr['peak_rss_mib']:.0f} MiB")
    sw, st = tg["swinir_s"], tg["unet_step_s"]
    print(f"  adapted backbone alone: {sw:.1f} s/face; DifFace path: {sw + 20 * st:.0f} s/face (fast, 20 steps, "
          f"{(sw + 20 * st) / sw:.0f}×), {sw + 100 * st:.0f} s/face (official, 100 steps, {(sw + 100 * st) / sw:.0f}×)")


if __name__ == "__main__":
    main()
