"""Fine-tuning a restoration backbone on (degraded crop, pseudo-target) pairs: DT-BFR's adaptation step.

    f = load_restorer("swinir_restoration512_L1.pth")
    result = finetune_backbone(f, FilePairs(crops, targets), val, FinetuneConfig(steps=2000), checkpoint_dir="run")
    save_backbone(f, "swinir_adapted.pth")        # same keys and layout as the input file

The loop
--------
Each optimizer step takes ``batch_size`` faces (a seeded permutation per epoch: the order depends on the seed and
the step only, never on what ran before) in micro-batches of ``micro_batch`` faces whose gradients accumulate, so
the step is the same whatever the micro-batch. Loss = L1(f(y), target) + ``perceptual_weight`` × VGG-feature L1
when a perceptual network is given (`training.perceptual`, from the user's own weights). AdamW, learning rate
cosine-annealed from ``lr`` to ``lr_min`` over ``steps`` (DT-BFR for SwinIR: 2e-5 → 5e-6, 20k steps, batch 16).
Optional EMA of the weights (validation and the result use it). ``precision`` bf16 runs the forward under
``torch.autocast`` (CPU and CUDA), fp16 (CUDA only) with a gradient scaler; the weights stay in their dtype.

Randomness (horizontal flips, the backbone's own dropout/stochastic depth in train mode) is drawn from generators
seeded by (seed, step), inside `torch.random.fork_rng`: a resumed run repeats an uninterrupted one exactly, and
the caller's global RNG is left alone.

Out of memory: the step is redone with half the micro-batch (gradients accumulate over more micro-batches, the
step is unchanged); at one face per micro-batch the error says what to do.

Checkpoints (``checkpoint_dir``): ``last.pt`` with model, optimizer, scheduler, scaler, EMA, step and history,
written atomically every ``checkpoint_every`` steps, at the end, when ``cancel()`` stops the run and when
``progress`` raises (ComfyUI's interrupt): a crash or a full disk leaves the previous one whole, and the same call
again resumes from it (settings that would change the result must match; the error lists them).

Distributed: pass an ``accelerate.Accelerator`` (see `training.distributed`); the backbone is wrapped in DDP, each
process takes every N-th face of each batch (so the batch must divide by the process count) and the averaged
gradients give the one-process step. Only the main process validates and writes checkpoints.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..utils import OOM_ERROR, ProgressCallback, device_dtype_of
from .backbones import freeze, trainable
from .checkpoints import read_training_state, write_training_state
from .data import Pairs
from .metrics import laplacian_variance, psnr

__all__ = ["MIN_FACES", "FinetuneConfig", "FinetuneResult", "check_face_count", "evaluate_backbone",
           "finetune_backbone"]

# Fewer faces than this and fine-tuning memorises the faces instead of learning the degradation (DT-BFR used
# 970–2,500); one in eight is also held out for validation.
MIN_FACES = 8
# Settings that change the trained weights: a resumed run must use the same ones.
_RESULT_SETTINGS = ("steps", "batch_size", "lr", "lr_min", "weight_decay", "perceptual_weight", "ema_decay",
                    "precision", "train_mode", "flip", "max_grad_norm", "seed")


@dataclass
class FinetuneConfig:
    steps: int = 20000             # optimizer steps (DT-BFR: 20k for SwinIR)
    batch_size: int = 16           # faces per optimizer step, over all processes
    micro_batch: int | None = None  # faces per forward pass (None: the whole batch); halved on out-of-memory
    lr: float = 2e-5               # AdamW learning rate at step 0 …
    lr_min: float = 5e-6           # … cosine-annealed to this at the last step
    weight_decay: float = 0.0
    perceptual_weight: float = 0.1  # used only when a perceptual network is given
    ema_decay: float = 0.0         # 0: no EMA; e.g. 0.999
    precision: str = "fp32"        # fp32 | bf16 (autocast, CPU/CUDA) | fp16 (autocast + grad scaler, CUDA)
    train_mode: bool = True        # False: eval mode (no dropout / stochastic depth / BatchNorm updates)
    flip: bool = True              # random horizontal flips of the pairs
    max_grad_norm: float = 0.0     # 0: no clipping
    validate_every: int = 500      # steps between validations (and at the end)
    checkpoint_every: int = 500    # steps between checkpoints (and at the end)
    seed: int = 0
    min_faces: int = MIN_FACES     # train + held-out faces needed

    def check(self) -> None:
        ints = dict(steps=1, batch_size=1, validate_every=1, checkpoint_every=1, seed=0, min_faces=1)
        for name, lo in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.micro_batch is not None and (not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            raise ValueError(f"micro_batch must be None or an integer >= 1, got {self.micro_batch!r}")
        if not (self.lr > 0 and 0 <= self.lr_min <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= lr_min <= lr, got lr={self.lr}, lr_min={self.lr_min}")
        for name in ("weight_decay", "perceptual_weight", "max_grad_norm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")


@dataclass
class FinetuneResult:
    step: int                      # optimizer steps done in all (resumed ones included)
    losses: list[float] = field(default_factory=list)      # training loss per step (this process's faces)
    validation: list[dict] = field(default_factory=list)   # {"step", "psnr", "sharpness"} per validation
    micro_batch: int = 0           # the micro-batch the run ended with (smaller than asked after out-of-memory)
    resumed_from: int = 0          # the checkpoint's step (0: a fresh run)
    stopped: bool = False          # cancel() ended it before the last step


def check_face_count(n: int, min_faces: int = MIN_FACES) -> None:
    """ValueError unless there are at least ``min_faces`` faces, saying why they are needed."""
    if n < min_faces:
        raise ValueError(f"fine-tuning needs at least {min_faces} faces, got {n}: with fewer the backbone memorises "
                         f"those faces instead of learning their degradation (DT-BFR adapted on 970–2,500 faces), "
                         f"and one in eight is held out to validate; add more photos of the same kind")


def _check_data(train: Pairs, val: Pairs | None, config: FinetuneConfig, processes: int) -> None:
    check_face_count(len(train) + (len(val) if val is not None else 0), config.min_faces)
    if len(train) == 0:
        raise ValueError("no training faces (all were held out): add photos or lower the held-out fraction")
    if config.batch_size % processes:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {processes} processes "
                         f"(each takes an equal share of every batch)")


def _batch_indices(step: int, batch: int, n: int, seed: int) -> list[int]:
    """The faces of ``step``: positions step·batch … of an endless stream of seeded per-epoch permutations."""
    out: list[int] = []
    pos = step * batch
    while len(out) < batch:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = perm[offset:offset + batch - len(out)].tolist()
        out += take
        pos += len(take)
    return out


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1009 + rank


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNGs seeded for one step (dropout, stochastic depth), the caller's state restored after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _EMA:
    """Float32 shadow copies of the trainable parameters."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The parameters hold the EMA weights inside the block."""
        saved = [p.detach().clone() for p in self.params]
        self.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, saved):
                    p.copy_(v)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s.to(p.dtype))


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_backbone(backbone: torch.nn.Module, pairs: Pairs, batch_size: int = 4) -> dict[str, float]:
    """Mean PSNR (dB) of ``backbone``'s outputs to the pairs' targets, and their mean sharpness (variance of the
    Laplacian, `training.metrics`); the backbone runs in eval mode (its mode is restored)."""
    was_training = backbone.training
    backbone.eval()
    device = device_dtype_of(backbone)[0] or torch.device("cpu")
    ps, sharp = [], []
    try:
        for start in range(0, len(pairs), max(1, int(batch_size))):
            y, target = pairs.load(range(start, min(start + batch_size, len(pairs))))
            out = backbone(y.to(device)).float().clamp(0, 1).cpu()
            ps.append(psnr(out, target))
            sharp.append(laplacian_variance(out))
    finally:
        backbone.train(was_training)
    return {"psnr": float(torch.cat(ps).mean()), "sharpness": float(torch.cat(sharp).mean())}


def _config_record(config: FinetuneConfig, n_train: int) -> dict[str, Any]:
    rec = {k: getattr(config, k) for k in _RESULT_SETTINGS}
    rec["faces"] = n_train
    return rec


def _check_resume(saved: dict[str, Any], now: dict[str, Any], folder: Path) -> None:
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in now.items() if saved.get(k) != v]
    if diff:
        raise ValueError(f"the checkpoint in {folder} was made with other settings ({'; '.join(diff)}); use the same "
                         f"settings and data to resume, or another checkpoint folder to start over")


def _with_autograd(fn: Callable[..., FinetuneResult]) -> Callable[..., FinetuneResult]:
    """Run ``fn`` with gradients on and outside inference mode: callers may run under no_grad (the CLI) or inference
    mode (ComfyUI), and optimizer state and the graph need ordinary tensors."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> FinetuneResult:
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)

    return run


@_with_autograd
def finetune_backbone(
    backbone: torch.nn.Module,
    train: Pairs,
    val: Pairs | None = None,
    config: FinetuneConfig | None = None,
    *,
    perceptual: Callable[[Tensor, Tensor], Tensor] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
    accelerator: Any = None,
) -> FinetuneResult:
    """Fine-tune ``backbone`` (from `load_restorer`, on its device) in place on ``train`` pairs; see the module
    docstring. Returns a `FinetuneResult`; the backbone is left frozen in eval mode holding the final weights (the
    EMA's when ``ema_decay`` > 0), ready for `save_backbone`.

    ``val``: held-out pairs, validated every ``validate_every`` steps and at the end. ``progress(step, steps)``
    after each step (raising from it saves a checkpoint and re-raises: an interruption); ``cancel()`` before each
    step (True: save a checkpoint and return, ``stopped`` set); ``log(line)`` gets the validation lines.

    Errors: too few faces, a batch not divisible by the processes, a backbone without floating-point parameters or
    whose output gradients do not reach (ValueError/TypeError, before any step); out of memory at one face per
    micro-batch (RuntimeError saying what to change).
    """
    config = config or FinetuneConfig()
    config.check()
    rank, processes = ((accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1))
    main_process = rank == 0
    _check_data(train, val, config, processes)
    if val is not None and len(val) == 0:
        val = None
    trainable(backbone, train=config.train_mode)
    params = [p for p in backbone.parameters() if p.requires_grad]
    model: torch.nn.Module = backbone
    if accelerator is not None:
        model = accelerator.prepare_model(backbone)  # DDP (and the process's device)
    device = device_dtype_of(backbone)[0] or torch.device("cpu")
    if config.precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 mixed precision needs a CUDA device (the backbone is on {device}); use bf16 on CPU")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps, eta_min=config.lr_min)
    scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
    ema = _EMA(params, config.ema_decay) if config.ema_decay > 0 else None
    share = config.batch_size // processes
    result = FinetuneResult(step=0, micro_batch=min(config.micro_batch or share, share))
    record = _config_record(config, len(train))
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None

    saved = read_training_state(folder) if folder is not None else None
    if saved is not None:
        _check_resume(saved.get("config", {}), record, folder)
        backbone.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            for s, v in zip(ema.shadow, saved["ema"]):
                s.copy_(v)
        result.step = result.resumed_from = int(saved["step"])
        result.losses, result.validation = list(saved["losses"]), list(saved["validation"])

    def checkpoint() -> None:
        if folder is not None and main_process:
            write_training_state(folder, {
                "step": result.step, "config": record, "model": backbone.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.shadow if ema is not None else [],
                "losses": result.losses, "validation": result.validation})

    def validate() -> None:
        if val is None or not main_process:
            return
        with ema.applied() if ema is not None else contextlib.nullcontext():
            figures = evaluate_backbone(backbone, val, result.micro_batch)
        result.validation.append({"step": result.step, **figures})
        if log is not None:
            log(f"step {result.step}/{config.steps}: held-out PSNR {figures['psnr']:.2f} dB to the targets, "
                f"sharpness {figures['sharpness']:.1f}")

    def micro_step(idx: list[int], n_share: int, flips: Tensor, sync: bool) -> float:
        y, target = train.load(idx)
        y, target = y.to(device), target.to(device)
        f = flips.to(device).view(-1, 1, 1, 1)
        y, target = torch.where(f, y.flip(-1), y), torch.where(f, target.flip(-1), target)
        ctx = contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()
        with ctx:
            with _autocast(device, config.precision):
                out = model(y)
            out = out.float()
            loss = (out - target).abs().mean(dim=(1, 2, 3)).sum() / n_share
            if perceptual is not None and config.perceptual_weight > 0:
                loss = loss + config.perceptual_weight * perceptual(out, target) * (len(idx) / n_share)
            if not loss.requires_grad:
                raise ValueError("the backbone's output does not depend on its weights through autograd (it runs "
                                 "under no_grad/inference mode or detaches its output): it cannot be fine-tuned")
            scaler.scale(loss).backward()
        return float(loss.detach())

    def one_step() -> float:
        """One optimizer step at result.step (this process's share, in micro-batches); OOM halves and redoes."""
        # drawn for the whole batch, then shared out: N processes flip the same faces as one
        gen = torch.Generator().manual_seed(_step_seed(config.seed, result.step, 0))
        flips = torch.rand(config.batch_size, generator=gen) < 0.5 if config.flip else torch.zeros(config.batch_size,
                                                                                                  dtype=torch.bool)
        idx = _batch_indices(result.step, config.batch_size, len(train), config.seed)[rank::processes]
        flips = flips[rank::processes]
        while True:
            m = result.micro_batch
            chunks = [(k, min(k + m, len(idx))) for k in range(0, len(idx), m)]
            optimizer.zero_grad(set_to_none=True)
            try:
                with _seeded(_step_seed(config.seed, result.step, rank), device):
                    total = sum(micro_step(idx[a:b], len(idx), flips[a:b], sync=(a, b) == chunks[-1])
                                for a, b in chunks)
                break
            except OOM_ERROR:
                optimizer.zero_grad(set_to_none=True)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if m <= 1:
                    raise RuntimeError(
                        f"out of memory fine-tuning one {train.size[0]}x{train.size[1]} face at a time on {device}: "
                        f"use precision bf16, smaller crops, or a device with more memory") from None
                result.micro_batch = max(1, m // 2)
                if log is not None:
                    log(f"out of memory: micro-batch {m} → {result.micro_batch} (gradients accumulate; the step is "
                        f"unchanged)")
        if result.step == result.resumed_from and not any(p.grad is not None for p in params):
            raise ValueError("no gradient reached the backbone's weights: it cannot be fine-tuned (its forward "
                             "detaches or runs outside autograd)")
        if config.max_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update()
        return total

    if result.step == 0:
        validate()  # the starting point, for comparison
    _train_loop(result, config, one_step, validate, checkpoint, progress, cancel)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to_params()
    freeze(backbone)
    return result


def _train_loop(result: FinetuneResult, config: FinetuneConfig, one_step: Callable[[], float],
                validate: Callable[[], None], checkpoint: Callable[[], None], progress: ProgressCallback | None,
                cancel: Callable[[], bool] | None) -> None:
    """Steps until ``config.steps`` with validation, checkpoints, progress and cancellation between them."""
    while result.step < config.steps:
        if cancel is not None and cancel():
            result.stopped = True
            checkpoint()
            break
        result.losses.append(one_step())
        result.step += 1
        last = result.step == config.steps
        if last or result.step % config.validate_every == 0:
            validate()
        if last or result.step % config.checkpoint_every == 0:
            checkpoint()
        if progress is not None:
            try:
                progress(result.step, config.steps)
            except BaseException:
                if not (last or result.step % config.checkpoint_every == 0):
                    checkpoint()  # interrupted: keep what was done
                raise

