"""SD 1.5 / SDXL as the face prior (`LatentDiffusionPrior`): seconds per face per step, guidance overhead, VAE memory.

    PYTHONPATH=. python bench/bench_latent_prior.py --quick          # SD1.5 fp32, 1 face, 2 steps, 512 px
    PYTHONPATH=. python bench/bench_latent_prior.py --models sd15 sdxl --dtype bf16 --faces 1 --steps 2
    PYTHONPATH=. python bench/bench_latent_prior.py --part memory --size 256 --faces 16
    PYTHONPATH=. python bench/bench_latent_prior.py --part memory --size 1024 --vae-batch 1 --tiling both
    PYTHONPATH=. python bench/bench_latent_prior.py --part memory --size 256 --faces-list 1 4 16 --vae-batch 1
    PYTHONPATH=. python bench/bench_latent_prior.py --part tiling --size 512 --tile 256

Random weights in the real shapes (no downloads): the UNet2DConditionModel configs of SD 1.5 (860 M parameters) and
SDXL base (2.6 G), built on the meta device and materialised once in --dtype; the SD VAE (AutoencoderKL's default
config, 84 M). Prompt embeddings are random tensors of the real widths (77 × 768 / 77 × 2048, pooled 1280).

--part speed (default): `restore_faces` of --faces 512 px crops (--size) at sampler strength 0.4 with --steps DDPM
steps and CFG (two UNet passes per step, batched), then the same with latent identity guidance (mask "features",
a random-weight iresnet50 recognizer, gradient through the VAE decoder). Prints s/face/step (wall of the whole
call / faces / steps, VAE encode/decode included), UNet s/call (timed inside the run) and the guidance hook's
s/call (decode + recognizer forward + backward), with the extra wall time in percent.

--part memory: peak resident memory (ru_maxrss of a fresh child process) of VAE-encoding and decoding --faces
crops of --size px with vae_batch_size 1, 4 and all faces at once — why `LatentDiffusionPrior` chunks its VAE calls.
Each setting runs in its own process; the baseline is the same process with the VAE loaded and no VAE call.
--faces-list, --vae-batch and --tiling (diffusers' ``enable_tiling``: 512 px tiles) choose the rows.

--part tiling: how much the VAE's tiling changes the result: encode + decode of one --size image with --tile px
tiles against without tiling (max / mean absolute difference, latent and image).
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
sys.path.insert(0, str(ROOT / "bench"))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SDXL = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
            sample_size=128)


def _materialise(module: torch.nn.Module, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    module = module.to_empty(device="cpu").to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.copy_((torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5).to(dtype))
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return module.eval().requires_grad_(False)


def build_vae() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, sample_size=512)
    return _materialise(vae, torch.float32, 1)


def build(model: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    from bfr_core.diffusion.latent import LatentDiffusionPrior, PromptEmbeddings
    from bfr_core.diffusion.schedules import alphas_cumprod_from_scheduler_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL) if model == "sdxl" else UNet2DConditionModel(cross_attention_dim=768)
    unet, vae = _materialise(unet, dtype), build_vae()
    width, pooled = (2048, 1280) if model == "sdxl" else (768, None)
    g = torch.Generator().manual_seed(2)
    emb = PromptEmbeddings(torch.randn(1, 77, width, generator=g), torch.randn(1, 77, width, generator=g),
                           None if pooled is None else torch.randn(1, pooled, generator=g),
                           None if pooled is None else torch.randn(1, pooled, generator=g))
    acp = alphas_cumprod_from_scheduler_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                                "beta_end": 0.012})
    return LatentDiffusionPrior(unet, vae, acp, embeddings=emb, color_fix="wavelet", sample_size=512)


class _Timed:
    def __init__(self, inner, log):
        self.inner, self.log = inner, log

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        out = self.inner(*a, **k)
        self.log.append(time.perf_counter() - t0)
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def speed(args) -> None:
    from diffusers import DDPMScheduler

    from bench_guidance import build_recognizer
    from bfr_core.identity.guidance import IdentityGuidance
    from bfr_core.restoration.difface import restore_faces

    rec, desc = build_recognizer(torch.float32)
    crops = torch.rand(args.faces, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.faces} face(s) at {args.size} px, "
          f"{args.steps} steps, CFG; recognizer: {desc}")
    print(f"{'model':6} {'dtype':5} {'guided':6} {'s/face/step':>11} {'UNet s/call':>11} {'hook s/call':>11} "
          f"{'extra':>6} {'peak RSS GiB':>12}")
    for model in args.models:
        prior = build(model, DTYPES[args.dtype])
        unet_log, hook_log = [], []
        prior.unet = _Timed(prior.unet, unet_log)
        base = None
        for guided in (False, True):
            unet_log.clear()
            hook_log.clear()
            g = None
            if guided:
                inner = IdentityGuidance(rec, strength=1.0, reference=crops[:1], mask="features", latent_prior=prior,
                                         alphas_cumprod=prior.alphas_cumprod)

                def g(x_t, t, x0, *, faces, inner=inner):
                    t0 = time.perf_counter()
                    c = inner(x_t, t, x0, faces=faces)
                    hook_log.append(time.perf_counter() - t0)
                    return c
            t0 = time.perf_counter()
            restore_faces(crops, prior, strength=0.4, steps=args.steps, sampler=DDPMScheduler(clip_sample=False),
                          guidance=g, batch_size=args.faces)
            wall = (time.perf_counter() - t0) / args.faces / args.steps
            base = wall if base is None else base
            hook = f"{sum(hook_log) / len(hook_log):11.2f}" if hook_log else f"{'-':>11}"
            extra = f"{100 * (wall / base - 1):5.0f}%" if guided else f"{'-':>6}"
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(f"{model:6} {args.dtype:5} {str(guided):6} {wall:11.2f} {sum(unet_log) / len(unet_log):11.2f} "
                  f"{hook} {extra} {rss:12.2f}", flush=True)
        del prior


def memory_child(size: int, faces: int, vae_batch: int, tiling: int = 0) -> None:
    from bfr_core.diffusion.priors import LatentPrior

    from bfr_core.diffusion.schedules import linear_alphas_cumprod

    vae = build_vae()
    if tiling:
        vae.enable_tiling()  # diffusers' tiles: 512 px (the config's sample_size), 25 % overlap
    lat = LatentPrior(None, vae, linear_alphas_cumprod(), size // 8, 4, 0.18215,
                      vae_batch_size=vae_batch if vae_batch > 0 else None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if vae_batch >= 0:
        x = torch.rand(faces, 3, size, size)
        t0 = time.perf_counter()
        with torch.no_grad():
            lat.decode(lat.encode(x))
        dt = time.perf_counter() - t0
    else:
        dt = 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_gib": before / 2**20, "peak_gib": peak / 2**20, "seconds": dt}))


def _child(size: int, faces: int, vae_batch: int, tiling: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(size), str(faces), str(vae_batch),
                          str(int(tiling))], capture_output=True, text=True, check=True).stdout.strip().splitlines()
    return json.loads(out[-1])


def memory(args) -> None:
    print(f"VAE encode+decode at {args.size} px (SD VAE shape, fp32), peak RSS of a fresh process per row")
    print(f"{'faces':>5} {'vae_batch_size':>14} {'tiling':>6} {'peak GiB':>9} {'above models GiB':>16} {'s':>7}")
    base = _child(args.size, 1, -1, False)
    print(f"{'-':>5} {'(no VAE call)':>14} {'-':>6} {base['peak_gib']:9.2f} {0.0:16.2f} {0.0:7.1f}", flush=True)
    faces = args.faces_list or [args.faces]
    batches = args.vae_batch or [1, 4, 0]
    for tiling in ([False, True] if args.tiling == "both" else [args.tiling == "on"]):
        for n in faces:
            for b in batches:
                r = _child(args.size, n, b, tiling)
                label = f"all ({n})" if b == 0 else str(b)
                print(f"{n:5} {label:>14} {'on' if tiling else 'off':>6} {r['peak_gib']:9.2f} "
                      f"{r['peak_gib'] - r['before_gib']:16.2f} {r['seconds']:7.1f}", flush=True)


def tiling_difference(args) -> None:
    """Decoded output with diffusers' VAE tiling against without, on one random image of --size px. --tile sets
    the tile (the SD VAE's default, 512, does not tile a 512 face at all)."""
    torch.manual_seed(0)
    vae = build_vae()
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        ref_z, ref = z, vae.decode(z).sample
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = args.tile, args.tile // 8
        tz = vae.encode(x).latent_dist.mean
        tiled = vae.decode(z).sample
    dz, dx = (tz - ref_z).abs(), ((tiled - ref) / 2).abs()  # images in [0, 1] units
    print(f"{args.size} px, tiles of {args.tile} px (25 % overlap), random-weight SD VAE: latent max/mean abs diff "
          f"{dz.max():.4f}/{dz.mean():.4f} (latent std {ref_z.std():.3f}); decoded max/mean abs diff "
          f"{dx.max():.4f}/{dx.mean():.4f} (image units, 0..1; decoded std {(ref / 2).std():.3f})")


def main() -> None:
    if len(sys.argv) in (5, 6) and sys.argv[1] == "--memory-child":
        torch.set_num_threads(2)
        memory_child(*map(int, sys.argv[2:]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("speed", "memory", "tiling"), default="speed")
    ap.add_argument("--models", nargs="+", choices=("sd15", "sdxl"), default=["sd15", "sdxl"])
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    ap.add_argument("--faces", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--faces-list", type=int, nargs="+", help="memory: several face counts (default: --faces)")
    ap.add_argument("--vae-batch", type=int, nargs="+", help="memory: vae_batch_size values, 0 = all (default 1 4 0)")
    ap.add_argument("--tiling", choices=("off", "on", "both"), default="off", help="memory: the VAE's tiling")
    ap.add_argument("--tile", type=int, default=256, help="tiling: tile side in px")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="SD1.5 only, fp32, 1 face, 2 steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.models, args.dtype, args.faces, args.steps = ["sd15"], "fp32", 1, 2
    {"memory": memory, "tiling": tiling_difference, "speed": speed}[args.part](args)


if __name__ == "__main__":
    main()
