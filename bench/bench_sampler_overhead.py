"""Sampler overhead and memory of `restore_faces` with DifFace's real-config UNet (random weights).

    python bench/bench_sampler_overhead.py                          # CPU fp32, batches 1 and 4, 4 DDIM steps
    python bench/bench_sampler_overhead.py --dtype bf16 --batches 1
    python bench/bench_sampler_overhead.py --steps 2 --repeats 1 --no-memory --json out.json
    python bench/bench_sampler_overhead.py --device cuda            # cuda: synchronized timings, max_memory_allocated
    python bench/bench_sampler_overhead.py --no-timing --no-memory --profile 20   # sampler's own time + cProfile
    python bench/bench_sampler_overhead.py --sampler EulerDiscreteScheduler   # any diffusers scheduler, driven generically

What it measures, per batch size B (512×512 faces, restorer None, ``batch_size = B``):

* ``fwd``: one UNet forward at batch B, median of ``--runs`` (after a warm-up), outside the sampler;
* ``total``: one ``restore_faces`` call (``--steps`` steps of ``--sampler``: a preset name, default the built-in
  ``ddim``, or a diffusers scheduler class name, e.g. ``DDPMScheduler``; η 0.5, strength 0.4) on B faces, with the model
  wrapped to count its calls and time each forward *inside* the run;
* ``ratio`` = total / (calls × fwd) — the sampler's own cost on top of the denoiser (target ≤ 1.05) — and
  ``ratio_in`` = total / Σ(forwards timed inside the run), which is less sensitive to load from other processes
  (both halves are measured in the same seconds);
* faces/s, and the sampler's own time per step (total − Σ in-run forwards) / steps;
* the sampler's own time measured directly: ``restore_faces`` with a zero-cost model (returns zeros) — what is
  left is noise drawing, the DDIM update, clamps and copies. ``--profile N`` cProfiles one such run per batch.

The first ``restore_faces`` call in a process also pays the lazy ``from diffusers import DDIMScheduler`` (1–3 s
here); it is timed separately and kept out of the ratios (a warm-up call runs first).

The forward timings and the sampler runs are interleaved (``--repeats``) and medians are reported, so that
background load on a shared machine hits both alike.

Memory: one ``restore_faces`` call on ``--mem-batch`` faces (batch_size = mem-batch, ``--mem-steps`` steps) in a
fresh subprocess, so that earlier peaks of this process cannot hide it. CPU: peak RSS (``getrusage`` ru_maxrss)
growth over the RSS after the model is built; CUDA: ``torch.cuda.max_memory_allocated`` growth over the allocated
memory after the build. Also printed: the weights' own size (parameters × element size).

Weights are random (speed and memory do not depend on their values) and built in place on the ``meta`` device →
one copy of the weights, directly in the requested dtype. ``--dtype bf16`` stores the weights in bf16 (what a
user loading with ``dtype=torch.bfloat16`` gets); ``restore_faces`` then runs the model in bf16 and the
scheduler in float32.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bfr_core.archs.iddpm_unet import DIFFACE_FFHQ512, IDDPMUNet
from bfr_core.diffusion.priors import DiffusionPrior
from bfr_core.diffusion.schedules import linear_alphas_cumprod  # noqa: E402
from bfr_core.restoration.difface import restore_faces  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SIZE = 512


# ------------------------------------------------------------------------------------------ helpers
def make_sampler(name: str):
    """A preset name as is; otherwise a fresh instance of the diffusers scheduler class of that name."""
    from bfr_core.diffusion.timesteps import PRESET_ALIASES, PRESETS

    if name.lower() in PRESETS or name.lower() in PRESET_ALIASES:
        return name
    import diffusers

    return getattr(diffusers, name)()


def build_unet(device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> IDDPMUNet:
    """Real-config UNet with random fan-in-scaled weights, one copy, allocated directly on device/dtype."""
    with torch.device("meta"):
        model = IDDPMUNet(DIFFACE_FFHQ512)
    model = model.to(dtype=dtype).to_empty(device=device).eval().requires_grad_(False)
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:  # fan-in scaled, so activations stay in range (bf16/fp16 too)
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):  # GroupNorm scales
                p.fill_(1.0)
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def make_prior(model: nn.Module) -> DiffusionPrior:
    return DiffusionPrior(model=model, alphas_cumprod=linear_alphas_cumprod(1000), sample_size=SIZE, in_channels=3,
                          out_channels=6, learned_variance=True)


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())


class CountingModel(nn.Module):
    """Wraps the UNet: counts calls and times each forward (synchronized on CUDA)."""

    def __init__(self, inner: nn.Module, sync):
        super().__init__()
        self.inner = inner
        self.sync = sync
        self.times: list[float] = []

    def reset(self) -> None:
        self.times = []

    def forward(self, x, t):
        self.sync()
        t0 = time.perf_counter()
        out = self.inner(x, t)
        self.sync()
        self.times.append(time.perf_counter() - t0)
        return out


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; falls back to ru_maxrss)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return maxrss_bytes()


def maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux: KiB


def mib(n: float) -> float:
    return n / 2**20


# ------------------------------------------------------------------------------------------ timing
def time_forward(model: nn.Module, batch: int, device, runs: int, sync) -> list[float]:
    x = torch.rand(batch, 3, SIZE, SIZE, device=device) * 2 - 1
    t = torch.full((batch,), 396, dtype=torch.long, device=device)
    out = []
    with torch.no_grad():  # as restore_faces
        for _ in range(runs):
            sync()
            t0 = time.perf_counter()
            model(x, t)
            sync()
            out.append(time.perf_counter() - t0)
    return out


def time_restore(prior: DiffusionPrior, counter: CountingModel, batch: int, steps: int, eta: float, strength: float,
                 device, sync, sampler: str = "ddim") -> dict:
    g = torch.Generator(device="cpu").manual_seed(batch)
    crops = torch.rand(batch, 3, SIZE, SIZE, generator=g).to(device)
    counter.reset()
    sync()
    t0 = time.perf_counter()
    out = restore_faces(crops, prior, restorer=None, strength=strength, steps=steps, sampler=make_sampler(sampler),
                        eta=eta,
                        seed=0, batch_size=batch)
    sync()
    total = time.perf_counter() - t0
    assert out.shape == crops.shape and bool(torch.isfinite(out).all())
    return {"total": total, "calls": len(counter.times), "fwd_in_run": list(counter.times)}


class _TinyPrior:
    """Parameter-free 8 px prior, for warming up restore_faces' own code paths (diffusers, schedulers)."""

    alphas_cumprod = linear_alphas_cumprod(1000)
    sample_size, in_channels, learned_variance = 8, 3, False

    @staticmethod
    def model(x, t):
        return torch.zeros_like(x)


def warm_up_sampler(args, device) -> float:
    """Cold cost of the first restore_faces call: the lazy diffusers import (once per process). Returns seconds."""
    t0 = time.perf_counter()
    from diffusers import DDIMScheduler  # noqa: F401
    cold = time.perf_counter() - t0
    restore_faces(torch.rand(1, 3, 8, 8, device=device), _TinyPrior(), strength=args.strength, steps=args.steps,
                  eta=args.eta, sampler=make_sampler(args.sampler))
    return cold


class NullUNet(nn.Module):
    """Zero-cost stand-in for the UNet (returns zeros of the UNet's output shape): the run time is the sampler's own."""

    def __init__(self, dtype):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=dtype), requires_grad=False)  # device/dtype for the sampler

    def forward(self, x, t):
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype, device=x.device)


def run_null(args, device, dtype, sync) -> list[dict]:
    """Sampler's own time per step with a zero-cost model (median of --runs runs); --profile: cProfile of one."""
    prior = make_prior(NullUNet(dtype).to(device))
    rows = []
    for batch in args.batches:
        crops = torch.rand(batch, 3, SIZE, SIZE, device=device)
        kw = dict(restorer=None, strength=args.strength, steps=args.steps, sampler=make_sampler(args.sampler),
                  eta=args.eta, seed=0, batch_size=batch)
        restore_faces(crops, prior, **kw)  # warm-up
        times = []
        for _ in range(max(10, args.runs)):  # cheap; the first calls run slower (fresh heap pages)
            sync()
            t0 = time.perf_counter()
            restore_faces(crops, prior, **kw)
            sync()
            times.append(time.perf_counter() - t0)
        rows.append({"batch": batch, "total_s": statistics.median(times), "runs_s": times,
                     "own_ms_per_step": 1e3 * statistics.median(times) / args.steps,
                     "own_ms_per_step_min": 1e3 * min(times) / args.steps})
        print(f"  zero-cost model, batch {batch}: {rows[-1]['total_s']:.3f}s per call = "
              f"{rows[-1]['own_ms_per_step']:.1f} ms/step of sampler's own work "
              f"(min {rows[-1]['own_ms_per_step_min']:.1f})", flush=True)
        if args.profile:
            import cProfile
            import pstats

            pr = cProfile.Profile()
            pr.enable()
            restore_faces(crops, prior, **kw)
            sync()
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(args.profile)
    return rows


def run_timing(args, device, dtype, sync) -> list[dict]:
    model = build_unet(device, dtype, args.channels_last)
    counter = CountingModel(model, sync)
    prior = make_prior(counter)
    rows = []
    for batch in args.batches:
        time_forward(model, batch, device, args.warmup, sync)  # warm-up (allocator, kernels)
        fwd, runs = [], []
        for _ in range(args.repeats):  # interleaved: load from other processes hits both halves alike
            fwd += time_forward(model, batch, device, args.runs, sync)
            runs.append(time_restore(prior, counter, batch, args.steps, args.eta, args.strength, device, sync,
                                     args.sampler))
        fwd_med = statistics.median(fwd)
        totals = [r["total"] for r in runs]
        calls = runs[0]["calls"]
        in_run = [sum(r["fwd_in_run"]) for r in runs]
        ratio = [r["total"] / (r["calls"] * fwd_med) for r in runs]
        ratio_in = [r["total"] / s for r, s in zip(runs, in_run)]
        own = [(r["total"] - s) / r["calls"] for r, s in zip(runs, in_run)]
        rows.append({
            "batch": batch, "steps": args.steps, "calls": calls,
            "fwd_s": fwd_med, "fwd_min_s": min(fwd), "fwd_runs_s": fwd,
            "fwd_in_run_median_s": statistics.median([t for r in runs for t in r["fwd_in_run"]]),
            "total_s": statistics.median(totals), "total_runs_s": totals,
            "ratio": statistics.median(ratio), "ratio_runs": ratio,
            "ratio_in_run": statistics.median(ratio_in), "ratio_in_run_runs": ratio_in,
            "own_ms_per_step": 1e3 * statistics.median(own),
            "faces_per_s": batch / statistics.median(totals),
        })
        r = rows[-1]
        print(f"  batch {batch}: fwd {r['fwd_s']:.3f}s  total {r['total_s']:.2f}s / {calls} calls  "
              f"ratio {r['ratio']:.4f}  ratio_in_run {r['ratio_in_run']:.4f}  own {r['own_ms_per_step']:.1f} ms/step",
              flush=True)
    return rows


# ------------------------------------------------------------------------------------------ memory
def hwm_bytes() -> int | None:
    """Peak RSS since the last `reset_hwm` (Linux VmHWM), None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    """Reset the peak-RSS watermark to the current RSS (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(args) -> dict:
    """Runs in a fresh process: build, then one restore_faces call on mem_batch faces, then one bare UNet forward.

    ru_maxrss (getrusage) of a child started by subprocess already holds the parent's peak (Linux carries the
    pre-exec RSS into the child's maxrss), and the build itself may peak: so the growth is measured on the
    VmHWM watermark, reset (/proc/self/clear_refs) after the build; ru_maxrss is reported beside it.
    """
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cuda = device.type == "cuda"
    model = build_unet(device, dtype, args.channels_last)
    prior = make_prior(model)
    g = torch.Generator(device="cpu").manual_seed(0)
    crops = torch.rand(args.mem_batch, 3, SIZE, SIZE, generator=g).to(device)
    from diffusers import DDIMScheduler  # noqa: F401  (import before the baseline: not the sampler's memory)
    gc.collect()
    res = {"weights_bytes": weight_bytes(model), "crops_bytes": crops.numel() * crops.element_size()}

    def measure(tag, fn):
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        reset = reset_hwm()
        rss0, maxrss0 = rss_bytes(), maxrss_bytes()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
            res[f"{tag}_cuda_base"] = base
            res[f"{tag}_cuda_growth"] = torch.cuda.max_memory_allocated() - base
        hwm, maxrss1 = hwm_bytes(), maxrss_bytes()
        res[f"{tag}_seconds"] = time.perf_counter() - t0
        res[f"{tag}_rss_before"] = rss0
        res[f"{tag}_maxrss_before"], res[f"{tag}_maxrss_after"] = maxrss0, maxrss1
        res[f"{tag}_maxrss_growth"] = maxrss1 - rss0  # 0/understated when an earlier peak hides it
        res[f"{tag}_maxrss_hidden"] = maxrss1 == maxrss0
        res[f"{tag}_hwm_growth"] = (hwm - rss0) if (reset and hwm is not None) else None
        res[f"{tag}_growth"] = res[f"{tag}_hwm_growth"] if res[f"{tag}_hwm_growth"] is not None \
            else res[f"{tag}_maxrss_growth"]

    res["rss_after_load"] = rss_bytes()

    def restore():
        out = restore_faces(crops, prior, restorer=None, strength=args.strength, steps=args.mem_steps,
                            sampler=make_sampler(args.sampler), eta=args.eta, seed=0, batch_size=args.mem_batch)
        res["out_shape"] = list(out.shape)

    def bare_forward():
        with torch.no_grad():
            model(crops * 2 - 1, torch.full((crops.shape[0],), 396, device=device))

    if args.mem_what == "restore":
        measure("restore", restore)
    else:
        measure("forward", bare_forward)
    return res


def run_memory(args) -> dict:
    """One fresh subprocess per measurement (glibc keeps freed blocks resident, so a second measurement in the
    same process would be understated)."""
    res = {}
    for what in ("restore", "forward"):
        res.update(_run_memory_child(args, what))
    return res


def _run_memory_child(args, what: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", "--device", args.device,
           "--dtype", args.dtype, "--mem-batch", str(args.mem_batch), "--mem-steps", str(args.mem_steps),
           "--eta", str(args.eta), "--strength", str(args.strength), "--mem-what", what,
           "--sampler", args.sampler]
    if args.channels_last:
        cmd.append("--channels-last")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu / cuda")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--steps", type=int, default=4, help="steps per restore_faces call (= UNet calls per chunk)")
    ap.add_argument("--sampler", default="ddim", help="preset name (ddim, fast, dpmsolver++) or a diffusers "
                                                      "scheduler class name (EulerDiscreteScheduler, ...)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes (batch_size = batch)")
    ap.add_argument("--runs", type=int, default=3, help="UNet forwards timed per repeat")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved (forwards, sampler run) repeats")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--eta", type=float, default=0.5)
    ap.add_argument("--strength", type=float, default=0.4)
    ap.add_argument("--mem-batch", type=int, default=8)
    ap.add_argument("--mem-steps", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--mem-what", choices=("restore", "forward"), default="restore", help=argparse.SUPPRESS)
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--no-null", action="store_true", help="skip the zero-cost-model run (sampler's own time)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="cProfile one zero-cost-model run per batch; print the top N functions by own time")
    ap.add_argument("--channels-last", action="store_true", help="channels_last conv weights (as load_prior(...))")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the results here ('-' = stdout)")
    ap.add_argument("--_memory-child", dest="memory_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    info = {"device": str(device), "dtype": args.dtype, "size": SIZE, "steps": args.steps, "eta": args.eta,
            "sampler": args.sampler,
            "strength": args.strength, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "channels_last": args.channels_last,
            "command": " ".join([Path(sys.executable).name] + sys.argv)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    print(f"restore_faces overhead: {info['device']} {args.dtype}, {SIZE}px, {args.sampler} {args.steps} steps, "
          f"eta {args.eta}, strength {args.strength}, {info['threads']} threads, torch {torch.__version__}", flush=True)
    result = {"info": info}
    if not (args.no_timing and args.no_null):
        info["diffusers_import_s"] = warm_up_sampler(args, device)
        print(f"  one-time lazy `from diffusers import DDIMScheduler` on the first restore_faces call: "
              f"{info['diffusers_import_s']:.2f}s (excluded below)", flush=True)
    if not args.no_null:
        result["null_model"] = run_null(args, device, dtype, sync)
    if not args.no_timing:
        result["timing"] = run_timing(args, device, dtype, sync)
        print()
        print("| batch | UNet fwd (s) | restore_faces (s) | UNet calls | fwd in run (s, median) | ratio total/(calls×fwd) "
              "| ratio total/Σ fwd in run | sampler own (ms/step) | faces/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in result["timing"]:
            print(f"| {r['batch']} | {r['fwd_s']:.3f} | {r['total_s']:.2f} | {r['calls']} | {r['fwd_in_run_median_s']:.3f} "
                  f"| {r['ratio']:.4f} | {r['ratio_in_run']:.4f} | {r['own_ms_per_step']:.1f} | {r['faces_per_s']:.4f} |")
        print("  (per-repeat ratios: " + "; ".join(
            f"b{r['batch']}: " + ", ".join(f"{x:.3f}/{y:.3f}" for x, y in zip(r['ratio_runs'], r['ratio_in_run_runs']))
            for r in result["timing"]) + "  [ratio/ratio_in_run])")
    if not args.no_memory:
        m = run_memory(args)
        result["memory"] = m
        print()
        print(f"memory, {args.dtype}: weights {mib(m['weights_bytes']):.1f} MiB (theoretical: parameters × element size); "
              f"RSS after build {mib(m['rss_after_load']):.0f} MiB (incl. torch/diffusers libraries)")
        for tag, what in (("restore", f"restore_faces, {args.mem_batch} faces, batch_size {args.mem_batch}, "
                                      f"{args.mem_steps} step(s)"),
                          ("forward", f"bare UNet forward at batch {args.mem_batch}")):
            line = (f"  {what}: peak RSS growth {mib(m[tag + '_growth']):.0f} MiB "
                    f"({mib(m[tag + '_growth']) / args.mem_batch:.0f} MiB/face)")
            line += (f"; getrusage ru_maxrss growth {mib(m[tag + '_maxrss_growth']):.0f} MiB"
                     + (" (hidden by an earlier peak)" if m[tag + "_maxrss_hidden"] else ""))
            if tag + "_cuda_growth" in m:
                line += f"; CUDA max_memory_allocated growth {mib(m[tag + '_cuda_growth']):.0f} MiB"
            print(line)
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
