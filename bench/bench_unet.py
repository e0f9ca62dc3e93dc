"""Forward-pass speed of DifFace's iDDPM UNet (real config, random weights) per dtype.

    python bench/bench_unet.py                 # 512 px, batch 1: CPU fp32 + bf16 (CUDA: fp32/fp16/bf16)
    python bench/bench_unet.py --size 256      # quicker
    python bench/bench_unet.py --device cpu --dtypes fp32 bf16 --runs 5

Prints the median (and min) seconds per UNet call = one sampling step. DifFace's official restore
takes 100 steps. Weights are random: speed does not depend on their values.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bfr_core.archs.iddpm_unet import DIFFACE_FFHQ512, IDDPMUNet, count_parameters  # noqa: E402

GFLOPS_512 = 378.0  # per step at 512 px, batch 1 (DESIGN.md)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build(device: torch.device, config=DIFFACE_FFHQ512) -> IDDPMUNet:
    """The UNet of ``config`` with random fan-in-scaled weights (activations stay in fp16 range), eval, no grad."""
    with torch.device("meta"):
        model = IDDPMUNet(config)
    model = model.to_empty(device=device).eval().requires_grad_(False)
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:  # fan-in scaled, so activations stay in fp16 range
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:  # GroupNorm scales 1, biases small
                p.fill_(1.0) if name.endswith("weight") else p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="input height/width (multiple of 64)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per dtype (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None,
                    help="default: fp32 bf16 on CPU, fp32 fp16 bf16 on CUDA")
    ap.add_argument("--channels-last", action="store_true", help="channels_last weights and input")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = args.dtypes or (["fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32", "bf16"])
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    base = build(device)
    n_params = count_parameters(base)
    x = (torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1).contiguous(memory_format=fmt)
    t = torch.full((args.batch,), 396, device=device, dtype=torch.long)
    gflop = GFLOPS_512 * args.batch * (args.size / 512) ** 2  # approx.: attention is a small share

    # one model per dtype; runs are interleaved across dtypes so that load from other processes
    # on a shared machine affects every dtype alike.
    models, outs, times, failed = {}, {}, {}, {}
    for key in dtypes:
        models[key] = copy.deepcopy(base).to(dtype=DTYPES[key], memory_format=fmt)
        times[key] = []
    del base
    with torch.inference_mode():
        for key in dtypes:
            try:
                for _ in range(max(1, args.warmup)):
                    outs[key] = models[key](x, t).float()
            except RuntimeError as exc:  # a dtype the device does not support
                failed[key] = str(exc).splitlines()[0]
        live = [k for k in dtypes if k not in failed]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.runs):
            for key in live:
                sync()
                t0 = time.perf_counter()
                models[key](x, t)
                sync()
                times[key].append(time.perf_counter() - t0)

    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.machine()}, {torch.get_num_threads()} threads, load avg {os.getloadavg()[0]:.1f}")
    print(f"DifFace iDDPM UNet ({n_params / 1e6:.1f}M params), {args.size}x{args.size}, batch {args.batch}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, device {device.type} ({name}), torch {torch.__version__}")
    print(f"{'dtype':<6} {'median s':>9} {'min s':>8} {'~GFLOP/s':>9}  runs")
    ref = outs.get(live[0]) if live else None
    for key in dtypes:
        if key in failed:
            print(f"{key:<6} failed: {failed[key]}")
            continue
        med = statistics.median(times[key])
        note = "" if outs[key] is ref else f"  (rel. L2 vs {live[0]}: {((outs[key] - ref).norm() / ref.norm()).item():.1e})"
        print(f"{key:<6} {med:>9.3f} {min(times[key]):>8.3f} {gflop / med:>9.1f}  "
              f"{', '.join(f'{s:.2f}' for s in times[key])}{note}")
    if device.type == "cuda":
        print(f"peak CUDA memory (all models): {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
