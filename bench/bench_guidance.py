"""Identity guidance (bfr_core.identity.guidance): cost per step at 512 px, and identity gain vs fidelity cost.

    PYTHONPATH=. python bench/bench_guidance.py                 # both parts (a few minutes on 2 CPU cores)
    PYTHONPATH=. python bench/bench_guidance.py --part speed    # (a) only: --steps 2 --repeats 2 --dtype fp32
    PYTHONPATH=. python bench/bench_guidance.py --part quality  # (b) only: --size 64 --seeds 4 [--cap 1]

(a) speed — DifFace's real-config iDDPM UNet (`DIFFACE_FFHQ512`, random fan-in-scaled weights, batch 1, 512 px)
    with and without `IdentityGuidance` (mask "features", a reference identity). The recognizer is
    `bfr_core.identity.recognizers.Recognizer` around a random-weight arcface_torch iresnet50 (what
    `load_recognizer` returns for `backbone.pth` / `w600k_r50.onnx`), frozen; when that module is missing a
    stand-in of comparable cost (same iresnet50 stage layout written here) is used and the table says so. Prints,
    medians over --repeats interleaved runs:
      unguided s/step   `restore_faces(..., steps=N)` wall time / N (UNet forward + sampler)
      guided s/step     the same with guidance
      UNet s/call       one UNet forward, timed inside those runs
      hook s/call       one guidance call inside the guided runs (ArcFace crop + recognizer forward + backward
                        w.r.t. x0 + mask/scale)
      extra wall        guided / unguided − 1; hook/UNet = hook / UNet forward (target ≤ 15 %; robust to load
                        from other processes, which on a shared machine swamps the wall-clock difference)
(b) quality — the analytic prior (tests/analytic_prior.py: exact denoiser of the 4 aligned faces + mirrors) and a
    random-weight recognizer (the one from tests/test_guidance.py). Two settings, each over --seeds noise seeds and
    the 4 faces, per strength and mask:
      blind      restore a degraded face (sampler strength 0.4, 20 DDIM steps) with the target = the identity of
                 the LQ input (`prepare(y)`);
      reference  restore from sampler strength --ref-strength (default 0.8: the exact prior often lands on a wrong
                 face) with the target = the mean identity of two other "photos" of the true person (the true face
                 shifted 2 px / rescaled 4 % and re-lit, lightly blurred: not in the prior's set).
    Columns: sim→true = mean cosine similarity of the output to the true face (recognizer's own embedding), hit =
    share whose nearest set image is the true face, PSNR→true (capped at 60 dB; the exact prior reproduces a face to
    float precision), ΔPSNR = mean PSNR change vs the unguided run with the same seed (the fidelity cost; capped
    values), sim→target = similarity to the guidance target.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bfr_core.identity.guidance import IdentityGuidance, cosine_distance  # noqa: E402
from bfr_core.restoration.difface import restore_faces  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------ (a) speed
def build_unet(dtype: torch.dtype):
    from bfr_core.archs.iddpm_unet import DIFFACE_FFHQ512, IDDPMUNet

    with torch.device("meta"):
        model = IDDPMUNet(DIFFACE_FFHQ512)
    model = model.to(dtype=dtype).to_empty(device="cpu").eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.fill_(1.0) if name.endswith("weight") else p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model


class _Prior:
    def __init__(self, model):
        from bfr_core.diffusion.schedules import linear_alphas_cumprod

        self.model = model
        self.alphas_cumprod = linear_alphas_cumprod()
        self.sample_size = 512
        self.in_channels = 3
        self.learned_variance = True


def _random_init(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / m.weight[0].numel()) ** 0.5)
    return net.eval().requires_grad_(False)


def build_recognizer(dtype: torch.dtype):
    """(recognizer, description): the project's iresnet50 Recognizer, or a stand-in of the same layout."""
    try:
        from bfr_core.archs.iresnet import IRESNET_LAYERS, IResNet
        from bfr_core.identity.recognizers import Recognizer

        net = _random_init(IResNet(IRESNET_LAYERS["iresnet50"])).to(dtype)
        return Recognizer(net, "iresnet50", "random"), "bfr_core.identity Recognizer(IResNet iresnet50), random weights"
    except ImportError as e:  # stand-in: iresnet50 stage layout (3, 4, 14, 3), widths 64…512, 112 px input
        print(f"(bfr_core.identity.recognizers not importable: {e}; using a stand-in)")
        return _StandIn(dtype), "stand-in iresnet50 layout (bench's own), random weights"


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return self.body(x) + self.down(x)


class _StandIn:
    def __init__(self, dtype):
        layers, widths, blocks, cin = (3, 4, 14, 3), (64, 128, 256, 512), [], 64
        for w, n in zip(widths, layers):
            blocks += [_Block(cin, w, 2)] + [_Block(w, w, 1) for _ in range(n - 1)]
            cin = w
        self.model = _random_init(nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64),
                                                *blocks, nn.BatchNorm2d(512), nn.Flatten(),
                                                nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))).to(dtype)
        self.dtype = dtype

    def embed(self, faces):
        s = faces.shape[-1]
        a, b = round(64.8 / 512 * s), round(448.2 / 512 * s)
        x = F.interpolate(faces[..., a:b, a:b].float(), size=(112, 112), mode="bilinear", antialias=True)
        return F.normalize(self.model((x * 2 - 1).to(self.dtype)).float(), dim=1)


class _Timed(nn.Module):
    """Wraps the UNet and records the wall time of every forward made inside a run."""

    def __init__(self, inner: nn.Module, log: list):
        super().__init__()
        self.inner, self.log = inner, log

    def forward(self, x, t):
        t0 = time.perf_counter()
        out = self.inner(x, t)
        self.log.append(time.perf_counter() - t0)
        return out


def bench_speed(args) -> None:
    dtype = DTYPES[args.dtype]
    print(f"== (a) speed: 512 px, batch 1, {args.steps} DDIM steps per run × {args.repeats} repeats, "
          f"UNet {args.dtype}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"load average {' '.join(f'{v:.1f}' for v in __import__('os').getloadavg())}")
    t0 = time.perf_counter()
    unet_log: list[float] = []
    prior = _Prior(_Timed(build_unet(dtype), unet_log))
    rec, desc = build_recognizer(torch.float32 if args.rec_fp32 else dtype)
    print(f"built in {time.perf_counter() - t0:.1f}s; recognizer: {desc} ({next(rec.model.parameters()).dtype})")
    g = torch.Generator().manual_seed(1)
    y = torch.rand(1, 3, 512, 512, generator=g)
    guide = IdentityGuidance(rec, strength=1.0, reference=torch.rand(512, generator=g), mask="features")
    hook_log: list[float] = []

    def hook(x_t, t, x0_pred, *, faces):
        t1 = time.perf_counter()
        c = guide(x_t, t, x0_pred, faces=faces)
        hook_log.append(time.perf_counter() - t1)
        return c

    kw = dict(strength=0.4, steps=args.steps, seed=0, batch_size=1)
    restore_faces(y, prior, guidance=hook, **{**kw, "steps": 1})  # warm-up (allocations, mask cache)
    plain_wall, guided_wall, unet_plain, unet_guided, hooks = [], [], [], [], []
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        unet_log.clear()
        t1 = time.perf_counter()
        restore_faces(y, prior, **kw)
        plain_wall.append((time.perf_counter() - t1) / args.steps)
        unet_plain += unet_log
        unet_log.clear()
        hook_log.clear()
        t1 = time.perf_counter()
        restore_faces(y, prior, guidance=hook, **kw)
        guided_wall.append((time.perf_counter() - t1) / args.steps)
        unet_guided += unet_log
        hooks += hook_log
    med, mn = statistics.median, min
    print(f"{'':>8} {'unguided s/step':>16} {'guided s/step':>14} {'UNet s/call':>12} {'hook s/call':>12} "
          f"{'extra wall':>11} {'hook/UNet':>10}")
    for name, f in (("median", med), ("min", mn)):
        p, q, u, h = f(plain_wall), f(guided_wall), f(unet_plain + unet_guided), f(hooks)
        print(f"{name:>8} {p:16.3f} {q:14.3f} {u:12.3f} {h:12.3f} {100 * (q / p - 1):10.1f}% {100 * h / u:9.1f}%")
    print("extra wall = guided / unguided s/step − 1 (sensitive to other processes' load); hook/UNet = the hook's "
          "time over one UNet forward, both timed inside the same runs (target ≤ 15 %)")
    print(f"raw: unguided {[round(v, 2) for v in plain_wall]} guided {[round(v, 2) for v in guided_wall]} "
          f"UNet {[round(v, 2) for v in unet_plain + unet_guided]} hook {[round(v, 3) for v in hooks]}")


# ------------------------------------------------------------------------------------------ (b) quality
def _photo_variant(face01: torch.Tensor, k: int) -> torch.Tensor:
    """Another "photo" of the same face: 2 px shift / 4 % zoom, brightness/contrast change, light blur."""
    x = face01[None]
    s = x.shape[-1]
    theta = torch.tensor([[[1.0 + 0.04 * (k % 2), 0.0, (2.0 if k else -2.0) / s],
                           [0.0, 1.0 + 0.04 * (k % 2), (2.0 if k % 2 else -1.0) / s]]])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = (0.5 + (1.1 - 0.2 * k) * (x - 0.5) + 0.03 * (1 - 2 * k)).clamp(0, 1)
    from bfr_core.faces.masks import gaussian_blur

    return gaussian_blur(x, 0.7)[0].clamp(0, 1)


def bench_quality(args) -> None:
    from analytic_prior import AnalyticPrior, degrade, load_face_set, nearest_index, psnr
    from test_guidance import TinyRecognizer

    torch.set_num_threads(1)
    paths = sorted((ROOT.parent / "shared" / "data" / "images" / "aligned512").glob("*.png"))
    faces = load_face_set(paths, args.size, flips=True)
    prior = AnalyticPrior(faces)
    rec = TinyRecognizer()
    n = 4
    truth = faces[:n]
    ys = {d: torch.stack([degrade(faces[i], seed=i + 10 * d) for i in range(n)]) for d in range(args.degradations)}
    refs = [torch.stack([_photo_variant(faces[i], k) for k in (0, 1)]) for i in range(n)]
    print(f"\n== (b) analytic prior {args.size} px, K = {len(faces)} images, {n} faces × {args.seeds} seeds × "
          f"{args.degradations} degradations, random-weight TinyRecognizer (64-d), cap {args.cap}; "
          f"sim(ref photo, true face) = "
          f"{1 - cosine_distance(rec, torch.cat(refs), truth.repeat_interleave(2, 0)).mean():.3f}")

    def run(setting, s, mask):
        sims, tsims, hits, ps, base_ps = [], [], [], [], []
        for d, y in ys.items():
            for seed in range(args.seeds):
                kw = dict(steps=20, seed=seed * n)
                if setting == "blind":
                    kw["strength"] = 0.4
                    g = IdentityGuidance.for_crops(rec, y, strength=s, mask=mask, cap=args.cap)
                    targets = [y[i] for i in range(n)]
                    out = restore_faces(y, prior, guidance=g, **kw)
                    base = restore_faces(y, prior, **kw)
                else:
                    kw["strength"] = args.ref_strength
                    outs, bases = [], []
                    for i in range(n):  # one reference identity per face
                        g = IdentityGuidance(rec, strength=s, reference=refs[i], mask=mask, cap=args.cap)
                        outs.append(restore_faces(y[i:i + 1], prior, guidance=g, **{**kw, "seed": kw["seed"] + i}))
                        bases.append(restore_faces(y[i:i + 1], prior, **{**kw, "seed": kw["seed"] + i}))
                    out, base = torch.cat(outs), torch.cat(bases)
                    targets = [F.normalize(F.normalize(rec.embed(refs[i]), dim=1).mean(0), dim=0) for i in range(n)]
                sims.append(1 - cosine_distance(rec, out, truth))
                tsims.append(torch.stack([1 - cosine_distance(rec, out[i], targets[i])[0] for i in range(n)]))
                hits.append((nearest_index(out, faces) == torch.arange(n)).float())
                ps.append(psnr(out, truth).clamp(max=60))
                base_ps.append(psnr(base, truth).clamp(max=60))
        cat = lambda v: torch.cat(v).float()  # noqa: E731
        return (cat(sims).mean(), cat(tsims).mean(), cat(hits).mean(), cat(ps).mean(),
                (cat(ps) - cat(base_ps)).mean())

    for setting in ("blind", "reference"):
        extra = "sampler strength 0.4, target = LQ identity" if setting == "blind" else \
            f"sampler strength {args.ref_strength}, target = 2 other photos of the true person"
        print(f"\n-- {setting}: {extra}")
        print(f"{'mask':>9} {'strength':>8} {'sim→true':>9} {'sim→target':>10} {'hit':>6} {'PSNR→true':>10} "
              f"{'ΔPSNR':>7}")
        for mask in ("none", "features"):
            for s in args.strengths:
                t = time.perf_counter()
                sim, tsim, hit, p, dp = run(setting, s, mask)
                print(f"{mask:>9} {s:8.2f} {sim:9.4f} {tsim:10.4f} {hit:6.2f} {p:10.2f} {dp:7.2f}"
                      f"   ({time.perf_counter() - t:.1f}s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("speed", "quality", "both"), default="both")
    ap.add_argument("--steps", type=int, default=2, help="(a) DDIM steps per timed restore")
    ap.add_argument("--repeats", type=int, default=2, help="(a) interleaved repeats (median)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="(a) UNet (and recognizer) dtype")
    ap.add_argument("--rec-fp32", action="store_true", help="(a) keep the recognizer in fp32 with a bf16 UNet")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--size", type=int, default=64, help="(b) analytic prior resolution")
    ap.add_argument("--seeds", type=int, default=4, help="(b) noise seeds")
    ap.add_argument("--degradations", type=int, default=2, help="(b) degradation seeds")
    ap.add_argument("--ref-strength", type=float, default=0.8, help="(b) sampler strength, reference setting")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--cap", type=float, default=None, help="(b) IdentityGuidance cap (Polyak-step multiple)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part in ("speed", "both"):
        bench_speed(args)
    if args.part in ("quality", "both"):
        bench_quality(args)


if __name__ == "__main__":
    main()
