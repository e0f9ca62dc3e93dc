"""Identity guidance strength as a control: recognizer distance and PSNR against strength, pixel and latent priors.

    PYTHONPATH=. python bench/bench_identity_strength.py                      # random iresnet50 (slow on CPU)
    PYTHONPATH=. python bench/bench_identity_strength.py --recognizer tiny    # quick: the tests' tiny recognizer
    options: --strengths 0 1 4 16 64  --steps 10  --faces 0 2 3  --mask features|none|regions  --old

Setting (issue 14): an exact prior over real faces (tests/analytic_prior.py: the 4 aligned test faces + mirrors at
64 px), in pixel space (`AnalyticPrior`) and in latent space (the same denoiser over the latents of an exactly
invertible autoencoder, `ToyVAE`, through `IdentityGuidance(latent_prior=...)`). Degraded copies of --faces are
restored (sampler strength 0.4, --steps DDIM steps, seed 0) while guidance pulls them toward face 1 (another
person). Per prior and strength, means over the faces:

    evals/step   recognizer evaluations per guided step (sub-steps; 1 with --old = one normalised step)
    dist→ref     1 − cos(recognizer(output), recognizer(reference)); lower = closer to the reference identity
    PSNR→true    PSNR of the output against the true face (the unguided exact prior reproduces it: 120 = capped)
    s/step       wall time per denoising step (the recognizer dominates)

--old adds the rows of the single-step guidance (substep=None) for comparison. --mask regions: region-weighted
guidance (`region_mask`: eyes 1, brows 0.5, nose+mouth 1, skin 0.25); compare its s/step with --mask features.
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
sys.path.insert(0, str(ROOT / "bench"))

from analytic_prior import (AnalyticDenoiser, AnalyticPrior, ToyVAE, degrade, linear_alphas_cumprod,  # noqa: E402
                            load_face_set, psnr)
from bfr_core.diffusion.priors import LatentPrior  # noqa: E402
from bfr_core.identity.guidance import IdentityGuidance, cosine_distance  # noqa: E402
from bfr_core.restoration.difface import restore_faces  # noqa: E402


def recognizer(kind: str):
    if kind == "tiny":
        from test_guidance import TinyRecognizer

        return TinyRecognizer(), "tests' TinyRecognizer (random weights)"
    from bench_guidance import build_recognizer

    return build_recognizer(torch.float32)


def priors(faces):
    acp = linear_alphas_cumprod()
    latent = LatentPrior(None, ToyVAE(), acp, latent_size=faces.shape[-1] // 2, latent_channels=12,
                         scaling_factor=0.7)
    latent.model = AnalyticDenoiser(latent.encode(faces), acp)
    return {"pixel": AnalyticPrior(faces), "latent": latent}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recognizer", choices=("iresnet50", "tiny"), default="iresnet50")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0, 1, 4, 16, 64])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--faces", type=int, nargs="+", default=[0, 2, 3])
    ap.add_argument("--mask", default="features")
    ap.add_argument("--priors", nargs="+", default=["pixel", "latent"])
    ap.add_argument("--old", action="store_true", help="also the single-step guidance (substep=None)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    paths = sorted((ROOT.parent / "shared" / "data" / "images" / "aligned512").glob("*.png"))
    if len(paths) != 4:
        sys.exit(f"needs the 4 aligned test faces in ../shared/data/images/aligned512 (found {len(paths)})")
    faces = load_face_set(paths, 64)
    rec, desc = recognizer(args.recognizer)
    mask = args.mask
    if mask == "regions":
        from bfr_core.identity.regions import region_mask

        mask = region_mask(faces.shape[-1], eyes=1.0, brows=0.5, nose_mouth=1.0, skin=0.25)
    ref = faces[1]
    truth = faces[args.faces]
    y = torch.stack([degrade(faces[i], seed=i) for i in args.faces])
    print(f"recognizer: {desc}; mask {args.mask}; {args.steps} DDIM steps from t=400; faces {args.faces} -> face 1")
    print(f"{'prior':7} {'mode':9} {'strength':>8} {'evals/step':>10} {'dist->ref':>9} {'PSNR->true':>10} {'s/step':>7}")
    variants = [("substeps", 2.0)] + ([("one-step", None)] if args.old else [])
    for name in args.priors:
        prior = priors(faces)[name]
        for mode, substep in variants:
            for s in args.strengths:
                g = IdentityGuidance(rec, strength=s, reference=ref, mask=mask, substep=substep,
                                     latent_prior=prior if name == "latent" else None)
                t0 = time.perf_counter()
                out = restore_faces(y, prior, steps=args.steps, seed=0, guidance=g, batch_size=len(args.faces))
                dt = (time.perf_counter() - t0) / args.steps
                d = float(cosine_distance(rec, out, ref).mean())
                p = float(psnr(out, truth).clamp(max=120).mean())
                print(f"{name:7} {mode:9} {s:8g} {g.substeps if s > 0 else 0:10d} {d:9.4f} {p:10.1f} {dt:7.2f}", flush=True)


if __name__ == "__main__":
    main()
