"""Restore speed of one call of the library's recipe (`FaceRestorer`: SwinIR backbone + DifFace transition) against
DifFace's official settings (fp32, 100 DDIM steps), measured in the same run.

    python bench/bench_restore_speed.py --quick     # CPU: a few minutes; CUDA: about a minute
    python bench/bench_restore_speed.py             # more batch sizes and step counts, official measured in full
    python bench/bench_restore_speed.py --tiny      # seconds: tiny networks, checks the code paths (tests use it)

Networks: DifFace's iDDPM UNet (real config, 159.8M params) and its SwinIR backbone (real config), random weights
(speed does not depend on their values), built as `load_prior` / `load_restorer` would run them: the backbone goes
through `load_restorer` (spandrel when installed, like ComfyUI), in the case's dtype where it supports it.

Cases (each one call of ``FaceRestorer(prior, backbone, ...)(crops)`` on a batch of 512 px crops):
  official   fp32, NCHW, sampler "official" (100 steps). --quick (and CPU without --full-official) measures it with
             --official-probe steps and extrapolates: backbone + 100 × per-step time (marked "~").
  fp32       fp32, channels_last on the CPU, the default sampler (20 DDIM steps): the precision reference.
  default    what `--dtype auto` gives (bf16 on CPUs with native bf16 and on recent GPUs), channels_last on the
             CPU, the default sampler, over --batch-sizes and --steps; plus --compile MODE when given.
  backbone   the backbone alone, fp32 and default precision.
Rounds are interleaved (every case once per round, --repeats rounds) so load from other processes hits all cases
alike; the median and min seconds per call are printed, with faces/s (median), the ratio to the official call per
face, peak memory (CPU: process RSS sampled every 5 ms during the case; CUDA: max_memory_allocated), and on CUDA the
fraction of the GPU's peak bf16/fp16 dense FLOP/s reached by the UNet work (378 GFLOP per step per 512 face; peak
from a table by device name or --peak-tflops). "max|Δ| vs fp32": the default result against the fp32 case with
the same sampler and steps (same seeds), in [0, 1] pixel units.

On a GPU (one command, nothing to edit):  python bench/bench_restore_speed.py --quick --device cuda
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_unet import build  # noqa: E402

from bfr_core.archs.iddpm_unet import DIFFACE_FFHQ512, TINY_CONFIG  # noqa: E402
from bfr_core.archs.swinir import DIFFACE_SWINIR, SwinIR, SwinIRConfig  # noqa: E402
from bfr_core.diffusion.priors import DiffusionPrior  # noqa: E402
from bfr_core.diffusion.schedules import linear_alphas_cumprod  # noqa: E402
from bfr_core.restoration.backbones import load_restorer  # noqa: E402
from bfr_core.restoration.restorer import FaceRestorer  # noqa: E402
from bfr_core.utils.precision import COMPILE_MODES, parse_dtype  # noqa: E402

GFLOP_PER_STEP_512 = 378.0  # DifFace UNet, one step, one 512 px face (DESIGN.md)
# Dense bf16/fp16 tensor-core peaks in TFLOP/s (vendor data sheets), matched as substrings of the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
               "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
               "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}
TINY_SWINIR = SwinIRConfig(embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4, mlp_hidden=24, img_size=16,
                           upscale=2, unshuffle=2)


@dataclasses.dataclass
class Case:
    name: str
    dtype: torch.dtype
    batch: int
    steps: int | None  # None: the sampler's own count
    sampler: str = "fast"
    channels_last: bool | None = None
    compile: str = "off"
    prior: bool = True
    extrapolate_to: int | None = None  # probe of the official run: scale the sampling part to this many steps
    times: list = dataclasses.field(default_factory=list)
    extra_mib: float = 0.0  # peak memory above what was in use when the call started (follows the batch size)
    out: torch.Tensor | None = None
    max_diff: float | None = None  # max |default − fp32| of the results, same sampler/steps/seeds

    @property
    def label(self) -> str:
        bits = [self.name] if self.name == "fp32" else [self.name, _dtype_name(self.dtype)]
        if self.prior:
            bits.append(f"{self.sampler}×{self.steps}" if self.steps else self.sampler)
        if self.compile != "off":
            bits.append(f"compile={self.compile}")
        return " ".join(bits)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


class PeakMemory:
    """Peak memory during a block above its start (``extra``, bytes): CUDA max_memory_allocated, else the process RSS
    sampled by a thread (Linux)."""

    def __init__(self, device: torch.device):
        self.device, self.start, self.peak, self._stop = device, 0, 0, threading.Event()

    @property
    def extra(self) -> int:
        return max(0, self.peak - self.start)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        elif Path("/proc/self/statm").exists():
            self.start = self.peak = self.rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())


def _backbone_file(tmp: Path, config: SwinIRConfig) -> Path:
    """A random SwinIR in DifFace's file layout ({'state_dict': {'module.…'}}), so load_restorer loads it."""
    torch.manual_seed(0)
    net = SwinIR(config)
    path = tmp / "swinir_random.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def _prior(unet: torch.nn.Module, size: int) -> DiffusionPrior:
    return DiffusionPrior(model=unet, alphas_cumprod=linear_alphas_cumprod(1000, 1e-4, 0.02), sample_size=size,
                          in_channels=3, out_channels=6, learned_variance=True, source="random weights")


def _cases(args, device: torch.device, fast: torch.dtype) -> list[Case]:
    cpu = device.type == "cpu"
    full_official = args.full_official or not (args.quick or cpu)
    probe = None if full_official else args.official_probe
    b0 = args.batch_sizes[0]
    cases = [Case("backbone", torch.float32, b0, None, prior=False, channels_last=False),
             Case("official", torch.float32, b0, probe, sampler="official" if probe is None else "ddim",
                  channels_last=False, extrapolate_to=None if probe is None else 100)]
    if fast != torch.float32:
        cases.append(Case("backbone", fast, b0, None, prior=False))
    main_steps = args.steps[0]
    cases.append(Case("fp32", torch.float32, b0, main_steps))
    for b in args.batch_sizes:
        for s in args.steps:
            cases.append(Case("default", fast, b, s))
    if args.compile != "off":
        cases.append(Case("default", fast, b0, main_steps, compile=args.compile))
    if probe is not None and fast != torch.float32:  # a cheap precision check at the probe's steps
        cases.append(Case("fp32", torch.float32, b0, probe, sampler="ddim", channels_last=False))
        cases.append(Case("default", fast, b0, probe, sampler="ddim"))
    return cases


def run(argv: list[str] | None = None) -> list[Case]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer cases, official extrapolated from a probe")
    ap.add_argument("--tiny", action="store_true", help="tiny networks at 32 px (a code-path check, not a figure)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--dtype", default="auto", help="precision of the default cases: auto (default), bf16, fp16, fp32")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="faces per call (default CPU 1 [full: 1 4]; CUDA 1 4 16 [quick: 1 16])")
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help="steps of the default sampler (default 20 [full: 20 10]); the first is the main one")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3; --quick 2)")
    ap.add_argument("--official-probe", type=int, default=4, help="steps the extrapolated official run takes")
    ap.add_argument("--full-official", action="store_true", help="run the official 100 steps (CPU: minutes)")
    ap.add_argument("--compile", choices=COMPILE_MODES, default="off", help="also time the default with torch.compile")
    ap.add_argument("--peak-tflops", type=float, default=None, help="GPU peak bf16/fp16 dense TFLOP/s (else table)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = device.type == "cpu"
    args.batch_sizes = args.batch_sizes or ([1] if cpu and (args.quick or args.tiny) else [1, 4] if cpu else
                                            [1, 16] if args.quick else [1, 4, 16])
    args.steps = args.steps or ([20] if args.quick or args.tiny else [20, 10])
    args.repeats = args.repeats or (2 if args.quick or args.tiny else 3)
    if args.tiny:
        args.official_probe = min(args.official_probe, 2)
    fast = parse_dtype(args.dtype, device)
    size = 32 if args.tiny else 512
    unet_fp32 = build(device, TINY_CONFIG if args.tiny else DIFFACE_FFHQ512)
    unets = {torch.float32: unet_fp32}
    if fast != torch.float32:
        unets[fast] = copy.deepcopy(unet_fp32).to(dtype=fast)

    cases = _cases(args, device, fast)
    crops = torch.rand(max(args.batch_sizes), 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="bfr_bench_") as tmp:
        path = _backbone_file(Path(tmp), TINY_SWINIR if args.tiny else DIFFACE_SWINIR)
        backbones = {dt: load_restorer(path, device=device, dtype=dt) for dt in unets}
    backbone_kind = type(backbones[torch.float32]).__name__

    def restorer(case: Case) -> FaceRestorer:
        # each case gets its own copy of the network when its layout differs (channels_last changes it in place)
        key = (case.dtype, bool(case.channels_last if case.channels_last is not None else cpu))
        if key not in nets:
            nets[key] = unets[case.dtype] if not key[1] else copy.deepcopy(unets[case.dtype])
        prior = _prior(nets[key], size) if case.prior else None
        return FaceRestorer(prior, backbones[case.dtype], steps=case.steps, sampler=case.sampler,
                            batch_size=case.batch, channels_last=case.channels_last, compile=case.compile)

    nets: dict = {}
    restorers = [restorer(c) for c in cases]
    with torch.inference_mode():
        warm, with_prior = set(), {(c.dtype, c.batch) for c in cases if c.prior}
        for case, r in zip(cases, restorers):  # warm-up: oneDNN primitives / cuDNN plans / compilation
            key = (case.dtype, case.channels_last, case.batch, case.compile)
            if case.prior and key not in warm or not case.prior and (case.dtype, case.batch) not in with_prior:
                warm.add(key)  # (a backbone alone is warmed by the prior case of its dtype that runs it)
                FaceRestorer(r.prior, r.backbone, steps=1, sampler="ddim", batch_size=case.batch,
                             channels_last=case.channels_last, compile=case.compile)(crops[:case.batch], seed=0)
        for _ in range(args.repeats):
            for case, r in zip(cases, restorers):
                with PeakMemory(device) as mem:
                    sync()
                    t0 = time.perf_counter()
                    out = r(crops[:case.batch], seed=0)
                    sync()
                    case.times.append(time.perf_counter() - t0)
                case.extra_mib = max(case.extra_mib, mem.extra / 2**20)
                case.out = out.float().cpu()
                print(f"  {case.label} batch {case.batch}: {case.times[-1]:.2f} s", file=sys.stderr, flush=True)
    _report(args, device, cases, backbone_kind, fast)
    return cases


def _per_face(case: Case, backbone: dict, pick=statistics.median) -> float:
    """Seconds per face of the case's call; a probe is extrapolated to its full step count."""
    t = pick(case.times)
    if case.extrapolate_to:
        b = pick(backbone[case.dtype].times) * case.batch / backbone[case.dtype].batch
        t = b + (t - b) * case.extrapolate_to / case.steps
    return t / case.batch


def _report(args, device: torch.device, cases: list[Case], backbone_kind: str, fast: torch.dtype) -> None:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        where = f"{name}, torch {torch.__version__}"
    else:
        peak = None
        load = " ".join(f"{v:.1f}" for v in os.getloadavg())
        where = (f"{platform.machine()} CPU, {torch.get_num_threads()} threads, load avg {load} (at the end), "
                 f"torch {torch.__version__}")
    print(f"restore speed, {'tiny networks 32 px' if args.tiny else 'DifFace UNet + SwinIR at 512 px'}, random "
          f"weights; {where}; backbone via {backbone_kind}; default precision {_dtype_name(fast)}; "
          f"{args.repeats} interleaved rounds")
    backbone = {c.dtype: c for c in cases if not c.prior}
    official = next(c for c in cases if c.name == "official")
    off_face = _per_face(official, backbone)
    print(f"{'case':<44}{'batch':>6}{'median s':>10}{'min s':>9}{'faces/s':>9}{'× official':>11}"
          f"{'+MiB':>10}{'%peak':>7}{'max|Δ| vs fp32':>16}")
    for c in cases:
        med, best = _per_face(c, backbone) * c.batch, _per_face(c, backbone, min) * c.batch
        mark = "~" if c.extrapolate_to else " "
        speedup = "" if not c.prior else f"{off_face / (med / c.batch):.1f}"
        frac = ""
        if peak and c.prior and c.dtype != torch.float32:
            steps = c.extrapolate_to or c.steps or 100
            frac = f"{100 * GFLOP_PER_STEP_512 * steps * c.batch / (med - _per_face(backbone[c.dtype], backbone) * c.batch) / (peak * 1e3):.0f}"
        diff = ""
        ref = next((r for r in cases if r.name == "fp32" and r.steps == c.steps and r.sampler == c.sampler
                    and r.batch <= c.batch), None) if c.name == "default" else None
        if ref is not None and ref.out is not None:
            n = min(ref.out.shape[0], c.out.shape[0])
            c.max_diff = (c.out[:n] - ref.out[:n]).abs().max().item()
            diff = f"{c.max_diff:.3g}"
        label = c.label + (f" (~{c.extrapolate_to} from {c.steps} steps)" if c.extrapolate_to else "")
        print(f"{label:<44}{c.batch:>6}{mark}{med:>9.2f}{best:>9.2f}{c.batch / med:>9.3f}{speedup:>11}"
              f"{c.extra_mib:>10.0f}{frac:>7}{diff:>16}")
    if device.type == "cuda" and peak is None:
        print("(no peak FLOP/s known for this GPU: pass --peak-tflops to get the %peak column)")


def main() -> None:
    run()


if __name__ == "__main__":
    main()
