"""DifFace restoration sampling: backbone estimate → diffuse to step N → denoise back to 0 with a prior.

Pipeline per aligned face y (RGB in [0, 1]), DifFace (Yue & Loy, TPAMI 2024):

1. ``f(y)``: the restoration backbone (``restorer``; ``None`` = identity), run at the prior's resolution.
2. Transition to the intermediate step N:  x_N = sqrt(ā_N)·(2 f(y) − 1) + sqrt(1 − ā_N)·ε.
3. Reverse diffusion from N to 0 with the pretrained prior (DDIM or DPM-Solver++, via diffusers
   schedulers), x0 predictions clipped to [−1, 1]; the result is (x_0 + 1)/2 clamped to [0, 1].

Strength ↔ start timestep
-------------------------
``strength`` ∈ [0, 1] is the fraction of the training chain that is re-generated:
``t_N = round(strength · T)`` with T = ``len(prior.alphas_cumprod)`` (1000), capped at T − 1 (so 1.0 is t = 999,
pure noise for the linear schedule). ``strength = 0`` means no diffusion at all: the result is f(y).
``strength = 0.4`` ↔ t_N = 400 (ā = 0.1936), DifFace's official setting and the default.
`strength_to_timestep` / `timestep_to_strength` convert.

Timesteps (``steps`` = number of denoiser evaluations from N down to 0)
----------------------------------------------------------------------
* Official path (``sampler="ddim"``, t_N = 400, ``steps=100``): DifFace's own sampler — the 1000-step chain
  respaced to 250 (stride 4), started at respaced index 100. x_N is noised with ``alphas_cumprod[400]``, but the
  first denoising step is taken at t = 396 (DifFace's off-by-one, kept so the result matches its code), then
  392, …, 4, 0; the step from t = 0 goes to ā = 1. Identical to diffusers
  ``DDIMScheduler(linear, 1e-4, 0.02, clip_sample=True, set_alpha_to_one=True, timestep_spacing='leading')``
  with ``set_timesteps(250)`` over its last 100 timesteps (`official_timesteps`), DDIM η = 0.5, with the
  model's raw ε in the direction term (DifFace keeps ``pred_noise``; diffusers' ``use_clipped_model_output=False``).
* Every other (t_N, steps, sampler): steps evenly spaced from t_N itself down to one stride above 0,
  ``t_i = round(t_N · (steps − i) / steps)`` for i = 0 … steps−1 (e.g. N = 400, 20 steps: 400, 380, …, 20), the
  last step going to ā = 1 (DDIM: ``set_alpha_to_one``; DPM-Solver++: ``final_sigmas_type='zero'``). This starts
  at the noise level x_N actually has (no off-by-one), which matters with few, large steps. ``steps`` is capped
  at t_N (one step per integer timestep).
  DDIM on an arbitrary timestep list is done by respacing (as guided-diffusion's ``SpacedDiffusion``): a
  ``DDIMScheduler`` whose "training" schedule is the chosen ā values, stepping one virtual step at a time. Its
  ā are the prior's float64 values, so its per-step scalars are float64 like DifFace's (tensors stay float32);
  the official path then matches an independent implementation of DifFace's equations to ~2e-7.
* DPM-Solver++ (``sampler="dpmsolver++"``; ``DPMSolverMultistepScheduler``, 2nd order, lower-order final
  steps) is deterministic after x_N; ``eta`` is ignored. The clipped x0 is handed to it as a data prediction
  (``prediction_type='sample'``), so it clips exactly like the DDIM path.

Noise and batching
------------------
Face i of ``crops`` (0-based, across the whole call) draws all its noise from its own CPU
``torch.Generator`` seeded ``seed + i``: first ε for x_N (shape [C, S, S]), then, for DDIM with η > 0, one
[C, S, S] draw per step (also at the last step, where DDIM's σ is 0). Noise is drawn on the CPU in float32 and
moved to the model's device, so a face's result does not depend on its batch neighbours, on ``batch_size``
chunking or OOM retries, and is the same on any device up to the model's own numerics. (Face i of a batch
restored with ``seed`` equals that face restored alone with ``seed + i``.)

Sizes and channels
------------------
Crops of another size than ``prior.sample_size`` (S) are resized to S×S with antialiased bicubic
interpolation (``F.interpolate(mode='bicubic', antialias=True)``, as DifFace does), the backbone and the
diffusion run at S×S, and the result is resized back the same way to the crop's own H×W and clamped.
Non-square crops are stretched to the square and back (aligned face crops are square). The resized input is
clamped to [0, 1] before the backbone (bicubic overshoot is not valid image data); DifFace clamps only the
backbone's output, so for crops that need resizing the two differ slightly (at the prior's size they agree).
Channels: crops with the prior's channel count run directly. RGB crops with a 1-channel prior: the prior
restores the BT.601 luma of f(y) and the luma change is added to every channel of f(y) (colour kept). 1-channel
crops with an RGB prior: the gray image is repeated to RGB and the luma of the result returned. Anything else
raises ValueError. Non-finite input raises ValueError; finite input outside [0, 1] is clamped.

Guidance hook
-------------
``guidance(x_t, t, x0_pred, faces=idx) -> c``: x_t [n,C,S,S] float32 in model space, t the integer training
timestep, x0_pred the *clipped* x0 prediction in [−1, 1] (float32, detached), ``faces`` a CPU LongTensor of the
chunk's face indices into ``crops`` (so per-face references/masks can be picked). It is called under
``torch.enable_grad()`` once per step before the scheduler step; differentiating (e.g. w.r.t. a
``requires_grad_`` copy of x0_pred) is the guidance's own business. The correction c (same shape, model space)
is added to the model's x0 prediction before clipping, and the scheduler continues as if the model had predicted
it: DDIM receives ε − sqrt(ā_t/(1 − ā_t))·c (so its x0 is x0_raw + c, then clipped), DPM-Solver++ receives
clip(x0_raw + c). c = 0 is exactly "no guidance". Per step, DDIM (η = 0) moves x_{t−1} by
[sqrt(ā_prev) − sqrt((1 − ā_prev − σ²)·ā_t/(1 − ā_t))]·c, i.e. classifier-guidance scaling: the total effect is
roughly independent of ``steps``; the last step (to ā = 1) applies c in full.

Memory, dtype, progress
-----------------------
Faces run in chunks of ``batch_size``; a ``torch.OutOfMemoryError`` retries the chunk with half the size, down
to 1, then re-raises (later chunks keep the smaller size). The model runs in ``dtype`` (``None``: the dtype of
the prior's parameters, float32 for parameter-free callables; fp16/bf16 on wider weights runs under
``torch.autocast``; a dtype wider than the weights is a ValueError); scheduler math and noise are float32. ``progress(done, total)`` is called after every
denoising step of every chunk with ``total = steps × chunks`` (recomputed after an OOM retry); raising from it
(e.g. ComfyUI's interrupt) stops the run at once. No call is made when there is nothing to denoise
(strength 0).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..restoration.estimate import Restorer, apply_backbone, resize_crops
from ..utils import ProgressCallback, device_dtype_of, luma, run_chunked

NUM_TRAIN_TIMESTEPS = 1000
OFFICIAL_T_START = 400  # DifFace: respacing 250 (stride 4), start index 100 → alphas_cumprod[400]
OFFICIAL_RESPACING = 250
OFFICIAL_STEPS = 100
OFFICIAL_ETA = 0.5
DEFAULT_STRENGTH = OFFICIAL_T_START / NUM_TRAIN_TIMESTEPS  # 0.4
DEFAULT_STEPS = OFFICIAL_STEPS
SAMPLERS = ("ddim", "dpmsolver++")
_SAMPLER_ALIASES = {"ddim": "ddim", "dpmsolver++": "dpmsolver++", "dpm++": "dpmsolver++", "dpmpp": "dpmsolver++",
                    "dpm_solver++": "dpmsolver++", "dpmpp_2m": "dpmsolver++"}



@runtime_checkable
class DenoiserPrior(Protocol):
    """What the sampler needs from a diffusion prior (`bfr_core.diffusion.DiffusionPrior` is one; tests plug in
    analytic ones).

    ``model(x_t, t)``: x_t [B,C,H,W] in model space ([−1, 1] data), t LongTensor [B] of integer training
    timesteps 0 … T−1 → [B, C or 2C, H, W], ε in the first C channels (extra channels = learned variance,
    ignored here). ``alphas_cumprod``: float64 [T]. ``sample_size``: S. ``in_channels``: C.
    Optional: ``prediction_type`` ("epsilon" when absent; "sample" and "v_prediction" are converted to ε),
    ``device``/``dtype`` (else taken from ``model``'s parameters when it is an ``nn.Module``, else crops' device
    and float32).
    """

    model: Callable[[Tensor, Tensor], Tensor]
    alphas_cumprod: Tensor
    sample_size: int
    in_channels: int
    learned_variance: bool


class Guidance(Protocol):
    """Per-step x0 correction; see the module docstring ("Guidance hook") for exact semantics."""

    def __call__(self, x_t: Tensor, t: int, x0_pred: Tensor, *, faces: Tensor) -> Tensor: ...


# --------------------------------------------------------------------------------------------- schedule
def strength_to_timestep(strength: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> int:
    """t_N = round(strength · T), capped at T − 1; 0 ↔ no diffusion. 0.4 ↔ 400 (DifFace official)."""
    s = float(strength)
    if not math.isfinite(s) or s < 0.0 or s > 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    return min(int(math.floor(s * num_train_timesteps + 0.5)), num_train_timesteps - 1)


def timestep_to_strength(t_start: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> float:
    """Inverse of `strength_to_timestep` (exact for t < T − 1)."""
    if not 0 <= int(t_start) < num_train_timesteps:
        raise ValueError(f"t_start must be in [0, {num_train_timesteps - 1}], got {t_start}")
    return int(t_start) / num_train_timesteps


def official_timesteps(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """DifFace's official denoising timesteps: [396, 392, …, 4, 0] (respacing 250, start index 100).

    Equal to ``DDIMScheduler(timestep_spacing='leading').set_timesteps(250)`` → ``timesteps[-100:]``. x_N is
    noised at t = 400 (`OFFICIAL_T_START`), one stride above the first entry — DifFace's off-by-one.
    """
    stride = num_train_timesteps // OFFICIAL_RESPACING
    start_index = OFFICIAL_T_START * num_train_timesteps // NUM_TRAIN_TIMESTEPS // stride
    return [stride * i for i in reversed(range(start_index))]


def is_official(t_start: int, steps: int, sampler: str = "ddim", num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> bool:
    """True for DifFace's own setting, which keeps its off-by-one timesteps."""
    return (_canonical_sampler(sampler) == "ddim" and num_train_timesteps == NUM_TRAIN_TIMESTEPS
            and int(t_start) == OFFICIAL_T_START and int(steps) == OFFICIAL_STEPS)


def denoising_timesteps(t_start: int, steps: int, sampler: str = "ddim",
                        num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """The integer training timesteps at which the denoiser is evaluated, descending (module docstring)."""
    t_start, steps = int(t_start), int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 <= t_start < num_train_timesteps:
        raise ValueError(f"t_start must be in [0, {num_train_timesteps - 1}], got {t_start}")
    if t_start == 0:
        return []
    if is_official(t_start, steps, sampler, num_train_timesteps):
        return official_timesteps(num_train_timesteps)
    steps = min(steps, t_start)
    ts = [int(math.floor(t_start * (steps - i) / steps + 0.5)) for i in range(steps)]
    assert ts[0] == t_start and ts[-1] >= 1 and all(a > b for a, b in zip(ts, ts[1:])), ts
    return ts


def _canonical_sampler(sampler: str) -> str:
    key = str(sampler).strip().lower()
    if key not in _SAMPLER_ALIASES:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    return _SAMPLER_ALIASES[key]


def _betas_from_alphas_cumprod(acp: Tensor) -> list[float]:
    prev = torch.cat([acp.new_ones(1), acp[:-1]])
    return (1.0 - acp / prev).tolist()


def _ddim_scheduler(acp: Tensor, timesteps: Sequence[int]):
    """A DDIMScheduler respaced to exactly ``timesteps`` (descending): virtual step j ↔ timesteps[k−1−j]."""
    from diffusers import DDIMScheduler

    k = len(timesteps)
    virt = acp[torch.tensor(list(reversed(timesteps)))]  # ā at virtual steps 0 … k−1 (float64)
    sched = DDIMScheduler(
        num_train_timesteps=k, trained_betas=_betas_from_alphas_cumprod(virt), clip_sample=True,
        clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
        timestep_spacing="leading", thresholding=False,
    )
    # Keep the prior's float64 ā: diffusers then forms its per-step scalars (sqrt(ā), 1 − ā, σ) in float64 and
    # only the tensor products are float32 — as DifFace does. With float32 ā, 1 − ā near t = 0 (≈1e-4) loses
    # ~1e-3 relative precision and the result drifts by ~1e-5 from DifFace's.
    sched.alphas_cumprod = virt.clone()
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    sched.set_timesteps(k)
    assert sched.timesteps.tolist() == list(range(k - 1, -1, -1))
    return sched


def _dpmpp_scheduler(acp: Tensor, timesteps: Sequence[int]):
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=len(acp), trained_betas=_betas_from_alphas_cumprod(acp), solver_order=2,
        prediction_type="sample", algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero", thresholding=False,
    )
    a32 = acp.to(torch.float32)
    sched.alphas_cumprod = a32
    sched.alpha_t = a32.sqrt()
    sched.sigma_t = (1 - a32).sqrt()
    sched.lambda_t = torch.log(sched.alpha_t) - torch.log(sched.sigma_t)
    with warnings.catch_warnings():  # diffusers calls np.array() on a tensor (numpy 2 copy-keyword warning)
        warnings.simplefilter("ignore", DeprecationWarning)
        sched.set_timesteps(timesteps=list(timesteps))
    return sched


# ------------------------------------------------------------------------------------------ main entry
def restore_faces(
    crops: Tensor,
    prior: DenoiserPrior | None,
    restorer: Restorer | None = None,
    strength: float = DEFAULT_STRENGTH,
    steps: int = DEFAULT_STEPS,
    sampler: str = "ddim",
    eta: float = OFFICIAL_ETA,
    seed: int = 0,
    guidance: Guidance | None = None,
    batch_size: int = 4,
    dtype: torch.dtype | None = None,
    progress: ProgressCallback | None = None,
    *,
    seeds=None,
) -> Tensor:
    """DifFace-restore aligned faces ``crops`` [B,C,H,W] (RGB in [0, 1]) → [B,C,H,W] in [0, 1], crops' device/dtype.

    Defaults = DifFace's official restore (strength 0.4 ↔ t_N = 400, 100 DDIM steps, η = 0.5). See the module
    docstring for the strength mapping, timesteps, seeding, resizing, channels, guidance, OOM and progress.
    ``prior`` may be None only when strength is 0.
    """
    if not isinstance(crops, Tensor) or crops.ndim != 4:
        raise ValueError(f"crops must be a [B, C, H, W] tensor, got {getattr(crops, 'shape', type(crops))}")
    if not crops.is_floating_point():
        raise ValueError(f"crops must be a float tensor in [0, 1], got {crops.dtype}")
    if crops.shape[1] not in (1, 3):
        raise ValueError(f"crops must have 1 or 3 channels (RGB), got {crops.shape[1]}")
    if not bool(torch.isfinite(crops).all()):
        raise ValueError("crops contain NaN or infinite values")
    sampler = _canonical_sampler(sampler)
    steps, batch_size, seed = int(steps), int(batch_size), int(seed)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not (eta >= 0.0 and math.isfinite(eta)):
        raise ValueError(f"eta must be >= 0, got {eta}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    num_train = len(prior.alphas_cumprod) if prior is not None else NUM_TRAIN_TIMESTEPS
    t_start = strength_to_timestep(strength, num_train)
    if t_start > 0 and prior is None:
        raise ValueError("a diffusion prior is required for strength > 0")
    timesteps = denoising_timesteps(t_start, steps, sampler, num_train) if t_start > 0 else []
    if crops.shape[0] == 0:
        return crops.clone()
    if t_start == 0 and restorer is None:
        return crops.clamp(0, 1).clone()  # nothing to do: f = identity, no diffusion

    ctx = _Context.build(crops, prior, restorer, t_start, timesteps, sampler, float(eta), seed, guidance, dtype)
    ctx.seeds = None if seeds is None else [int(v) for v in seeds]

    def run(start: int, n: int, report: Callable[[int], None]) -> Tensor:
        out = ctx.run_chunk(crops[start:start + n], torch.arange(start, start + n), report)
        return out.to(device=crops.device, dtype=crops.dtype)

    return torch.cat(run_chunked(run, crops.shape[0], batch_size, len(timesteps), progress))


class _Context:
    """Everything constant across chunks of one `restore_faces` call."""

    @classmethod
    def build(cls, crops, prior, restorer, t_start, timesteps, sampler, eta, seed, guidance, dtype):
        self = cls()
        self.prior, self.restorer, self.t_start, self.timesteps = prior, restorer, t_start, list(timesteps)
        self.sampler, self.eta, self.seed, self.guidance = sampler, eta, seed, guidance
        c = crops.shape[1]
        self.size = None
        self.device = crops.device
        self.model_dtype, self.autocast_dtype = torch.float32, None
        if prior is not None:
            s = int(prior.sample_size)
            if s < 1:
                raise ValueError(f"prior.sample_size must be positive, got {prior.sample_size}")
            self.size = (s, s)
            p_dev, p_dtype = device_dtype_of(prior)
            m_dev, m_dtype = device_dtype_of(prior.model)
            self.device = p_dev or m_dev or crops.device
            param_dtype = p_dtype or m_dtype
            if dtype is None:
                self.model_dtype = param_dtype or torch.float32
            elif param_dtype is not None and dtype != param_dtype:
                if dtype not in (torch.float16, torch.bfloat16):
                    # autocast only lowers precision; silently running in the weights' dtype would lie.
                    raise ValueError(f"dtype {dtype} is wider than the prior's {param_dtype} weights; load the "
                                     f"prior in {dtype} instead (load_prior(..., dtype={dtype}))")
                self.model_dtype, self.autocast_dtype = param_dtype, dtype
            else:
                self.model_dtype = dtype
        if t_start > 0:
            cp = int(prior.in_channels)
            if cp != c and not (c == 3 and cp == 1) and not (c == 1 and cp == 3):
                raise ValueError(f"crops have {c} channels but the prior expects {cp}")
            self.cp = cp
            acp = torch.as_tensor(prior.alphas_cumprod).detach().to("cpu", torch.float64)
            if acp.ndim != 1 or not bool(((acp > 0) & (acp < 1)).all()):
                raise ValueError("prior.alphas_cumprod must be a 1-D tensor of values in (0, 1)")
            self.acp = acp
            self.prediction_type = str(getattr(prior, "prediction_type", "epsilon") or "epsilon")
            if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
                raise ValueError(f"unsupported prior.prediction_type {self.prediction_type!r}; "
                                 "expected 'epsilon', 'sample' or 'v_prediction'")
        return self

    # --- pieces
    def _eps(self, x: Tensor, t: int) -> Tensor:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        ac = (torch.autocast(x.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
              else contextlib.nullcontext())
        with torch.no_grad(), ac:
            out = self.prior.model(x.to(self.model_dtype), tt)
        if not isinstance(out, Tensor):  # e.g. diffusers' UNet2DOutput
            out = out.sample if hasattr(out, "sample") else out[0]
        c = x.shape[1]
        if out.ndim != 4 or out.shape[0] != x.shape[0] or out.shape[1] not in (c, 2 * c) or out.shape[2:] != x.shape[2:]:
            raise ValueError(f"prior model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                             f"expected [B, {c} or {2 * c}, H, W]")
        out = out[:, :c].float()
        if self.prediction_type == "epsilon":
            return out
        abar = float(self.acp[int(t)])
        if self.prediction_type == "sample":  # x0 → ε
            return (x - math.sqrt(abar) * out) / math.sqrt(1.0 - abar)
        return math.sqrt(abar) * out + math.sqrt(1.0 - abar) * x  # v → ε

    def _noise(self, gens: list[torch.Generator], shape: tuple[int, ...]) -> Tensor:
        return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]).to(self.device)

    def _guide(self, x: Tensor, t: int, eps: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
        """(corrected ε, corrected clipped x0) for guidance; unchanged when there is no guidance."""
        abar = float(self.acp[t])
        x0_raw = (x - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
        if self.guidance is None:
            return eps, x0_raw.clamp(-1, 1)
        with torch.enable_grad():
            corr = self.guidance(x.detach(), int(t), x0_raw.clamp(-1, 1).detach(), faces=faces)
        if not isinstance(corr, Tensor) or tuple(corr.shape) != tuple(x.shape):
            raise ValueError(f"guidance must return a tensor of shape {tuple(x.shape)}, got "
                             f"{getattr(corr, 'shape', type(corr))}")
        corr = corr.detach().to(device=x.device, dtype=torch.float32)
        eps = eps - math.sqrt(abar / (1.0 - abar)) * corr
        return eps, (x0_raw + corr).clamp(-1, 1)

    # --- one chunk
    def run_chunk(self, y: Tensor, faces: Tensor, report: Callable[[int], None]) -> Tensor:
        hw = tuple(y.shape[-2:])
        y = y.to(device=self.device, dtype=torch.float32).clamp(0, 1)
        work_hw = self.size or hw
        f = apply_backbone(self.restorer, resize_crops(y, work_hw))
        if self.t_start == 0:
            return resize_crops(f, hw)

        c = y.shape[1]
        x0 = f if self.cp == c else (luma(f) if self.cp == 1 else f.repeat(1, 3, 1, 1))
        x0 = x0 * 2.0 - 1.0
        shape = tuple(x0.shape[1:])
        seeds = [self.seed + int(i) for i in faces] if self.seeds is None else [self.seeds[int(i)] for i in faces]
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        abar_n = float(self.acp[self.t_start])
        x = math.sqrt(abar_n) * x0 + math.sqrt(1.0 - abar_n) * self._noise(gens, shape)

        if self.sampler == "ddim":
            sched = _ddim_scheduler(self.acp, self.timesteps)
            k = len(self.timesteps)
            for j, t in enumerate(self.timesteps):
                eps = self._eps(x, t)
                if self.guidance is not None:
                    eps, _ = self._guide(x, t, eps, faces)
                noise = self._noise(gens, shape) if self.eta > 0 else None
                x = sched.step(eps, k - 1 - j, x, eta=self.eta, variance_noise=noise).prev_sample
                report(j + 1)
        else:
            sched = _dpmpp_scheduler(self.acp, self.timesteps)
            for j, t in enumerate(self.timesteps):
                _, x0_pred = self._guide(x, t, self._eps(x, t), faces)
                x = sched.step(x0_pred, t, x).prev_sample
                report(j + 1)

        r = ((x.float() + 1.0) * 0.5).clamp(0, 1)
        if self.cp != c:
            r = (f + (r - luma(f))).clamp(0, 1) if self.cp == 1 else luma(r).clamp(0, 1)
        return resize_crops(r, hw)


__all__ = [
    "DEFAULT_STEPS",
    "DEFAULT_STRENGTH",
    "DenoiserPrior",
    "Guidance",
    "OFFICIAL_ETA",
    "OFFICIAL_STEPS",
    "OFFICIAL_T_START",
    "SAMPLERS",
    "denoising_timesteps",
    "is_official",
    "official_timesteps",
    "restore_faces",
    "strength_to_timestep",
    "timestep_to_strength",
]
