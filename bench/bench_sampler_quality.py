"""Sampler quality on the analytic prior (exact ε* of K real aligned faces; tests/analytic_prior.py).

For each of the 4 aligned faces in ../shared/data/images/aligned512 (at --size px): degrade it (blur, ×1/4,
noise, JPEG), restore with restorer=None from the same start step N (--strength, default 0.4 ↔ N = 400) with
DifFace's official path (the ``official`` preset: 100 DDIM steps, η = 0.5, off-by-one timesteps), with 10/20/50
steps of DDIM (η = 0.5) and DPM-Solver++ (2M), and with a few diffusers scheduler instances (DDPM, Euler,
DPM-Solver++ 2M, UniPC) driven generically, over --seeds noise seeds and --degradations degradation seeds. Prints
per sampler:

  PSNR→truth  mean PSNR to the clean face in dB, each value capped at --cap (the exact prior reproduces a face to
              float precision, i.e. ~∞ dB, so an uncapped mean would only count hits)
  hit         share of restorations whose nearest of the K images is the true face
  PSNR→off    mean PSNR (capped) to the official path's result for the same seed, i.e. agreement with DifFace
  ms/face     wall time per face and run on this machine (the analytic "UNet" is nearly free: this is sampler
              overhead, not a UNet timing; see bench/ for those)

The face set (--set): "plain" = 4 faces + mirrors (K = 8); "distractors" (default) adds copies of each at 1.3× and
0.5× contrast (K = 24), which makes a wrong signal scale or a poorly converged sampler land on a wrong copy.

  PYTHONPATH=. python bench/bench_sampler_quality.py [--size 64] [--seeds 5] [--strength 0.4 0.6]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from analytic_prior import AnalyticPrior, contrast_variants, degrade, load_face_set, nearest_index, psnr  # noqa: E402

from bfr_core.diffusion.timesteps import strength_to_timestep  # noqa: E402
from bfr_core.restoration.difface import restore_faces  # noqa: E402



def _diffusers(name: str, **config):
    import diffusers

    return getattr(diffusers, name)(**config)


CONFIGS = [
    ("official DDIM η=0.5", dict(sampler="official", steps=None), True),
    ("DDIM η=0.5", dict(sampler="ddim", steps=50), False),
    ("DDIM η=0.5", dict(sampler="ddim", steps=20), False),
    ("DDIM η=0.5", dict(sampler="ddim", steps=10), False),
    ("DDIM η=0", dict(sampler="ddim", steps=10, eta=0.0), False),
    ("DPM-Solver++", dict(sampler="dpmsolver++", steps=50), False),
    ("DPM-Solver++", dict(sampler="dpmsolver++", steps=20), False),
    ("DPM-Solver++", dict(sampler="dpmsolver++", steps=10), False),
    # diffusers scheduler instances, driven generically (bfr_core.diffusion.samplers.SchedulerSampler)
    ("diffusers DDPM", dict(sampler=_diffusers("DDPMScheduler"), steps=20), False),
    ("diffusers Euler", dict(sampler=_diffusers("EulerDiscreteScheduler"), steps=20), False),
    ("diffusers DPM++ 2M", dict(sampler=_diffusers("DPMSolverMultistepScheduler"), steps=10), False),
    ("diffusers UniPC", dict(sampler=_diffusers("UniPCMultistepScheduler"), steps=10), False),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "images" / "aligned512"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--degradations", type=int, default=2)
    ap.add_argument("--strength", type=float, nargs="+", default=[0.4])
    ap.add_argument("--set", choices=["plain", "distractors"], default="distractors")
    ap.add_argument("--cap", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    paths = sorted(Path(args.data).glob("*.png"))
    if not paths:
        sys.exit(f"no aligned faces in {args.data}")
    base = load_face_set(paths, args.size, flips=True)
    n_true = len(paths)
    faces = base if args.set == "plain" else torch.cat([base, contrast_variants(base, (1.3, 0.5))])
    prior = AnalyticPrior(faces)
    truth = base[:n_true]
    idx = torch.arange(n_true)
    degs = [torch.stack([degrade(truth[i], seed=1000 * d + i) for i in range(n_true)]) for d in range(args.degradations)]
    p_deg = torch.stack([psnr(d, truth) for d in degs]).mean().item()

    print(f"analytic prior: K={len(faces)} ({args.set}) at {args.size}x{args.size}, {n_true} faces x "
          f"{args.degradations} degradations x {args.seeds} seeds; degraded input PSNR {p_deg:.2f} dB; "
          f"PSNR capped at {args.cap:g} dB")
    for strength in args.strength:
        n_start = strength_to_timestep(strength)
        print(f"\nstrength {strength} (N = {n_start})")
        print(f"{'sampler':<22}{'steps':>6}{'PSNR→truth':>12}{'hit':>8}{'PSNR→off':>10}{'ms/face':>9}")
        official: dict[tuple[int, int], torch.Tensor] = {}
        for name, kw, is_off in CONFIGS:
            p_truth, hits, p_off, elapsed, runs = [], [], [], 0.0, 0
            for d, deg in enumerate(degs):
                for seed in range(args.seeds):
                    t0 = time.perf_counter()
                    out = restore_faces(deg, prior, strength=strength, seed=seed, batch_size=n_true,
                                        **{"eta": 0.5, **kw})
                    elapsed += time.perf_counter() - t0
                    runs += 1
                    p_truth.append(psnr(out, truth).clamp(max=args.cap))
                    hits.append((nearest_index(out, faces) == idx).float())
                    if is_off:
                        official[(d, seed)] = out
                    p_off.append(psnr(out, official[(d, seed)]).clamp(max=args.cap))
            steps = kw["steps"] or n_start // 4  # the official preset: DifFace's own count
            print(f"{name:<22}{steps:>6}{torch.cat(p_truth).mean().item():>12.2f}"
                  f"{100 * torch.cat(hits).mean().item():>7.0f}%{torch.cat(p_off).mean().item():>10.2f}"
                  f"{1000 * elapsed / (runs * n_true):>9.1f}")


if __name__ == "__main__":
    main()
