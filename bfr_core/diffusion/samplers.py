"""Samplers: short built-in step loops (k-diffusion style) and a driver for any diffusers scheduler instance.

Every sampler sees the model only through ``denoise(x_t, t) -> (eps, x0)``: x_t in model space (pixel priors:
[−1, 1] data; latent priors: latents), t an integer training timestep; eps the (guidance-corrected) ε prediction
and x0 the x0 prediction derived from it, clipped to the prior's ``clip_sample`` range (`sampling` builds it).
Noise comes from a `Noise` source: per-face CPU generators, one [C, h, w] draw per face per call.

Built-in samplers (used by the presets of `timesteps`; per-step scalars are Python float64, tensors float32)
-----------------------------------------------------------------------------------------------------------
* `ddim`: x_{prev} = sqrt(ā_prev)·x0 + sqrt(1 − ā_prev − σ²)·ε + σ·z with
  σ = η·sqrt((1 − ā_prev)/(1 − ā_t))·sqrt(1 − ā_t/ā_prev); ε is the model's raw (guided) ε, x0 clipped — DifFace's
  ``ddim_sample`` with ``clip_denoised`` (diffusers' ``use_clipped_model_output=False``). ā_prev of the last step is
  1. With η > 0 one noise draw per step, also at the last step (where σ = 0), so the draw order is fixed.
  With float64 scalars the official preset matches an independent implementation of DifFace's equations to ~2e-7.
* `ddpm`: ancestral DDPM posterior steps (``p_sample``) over the given chain with its own (respaced) betas and
  the fixed posterior variance β̃ of that chain; an ``after_step`` hook may edit each new state (used by the DT-BFR
  pseudo-targets' low-pass consistency, `consistency`). Not a preset; one noise draw per step.
* `dpmpp_2m`: DPM-Solver++(2M) (midpoint form, data prediction = the clipped x0), first order at the first
  step, and the last step goes to σ = 0 (returns x0) — diffusers' ``DPMSolverMultistepScheduler(solver_order=2,
  algorithm_type='dpmsolver++', solver_type='midpoint', lower_order_final=True, final_sigmas_type='zero')``.
  Deterministic: draws no noise.

x_N for the built-ins: x_N = sqrt(ā_N)·x0 + sqrt(1 − ā_N)·ε at t_N (`q_sample`), ε the first draw of each face.

Diffusers scheduler instances (`SchedulerSampler`)
--------------------------------------------------
The user's instance is never touched: a copy is configured with the public API,
``type(s).from_config(s.config, num_train_timesteps=T, trained_betas=<the prior's betas from its
alphas_cumprod>, prediction_type="epsilon")`` (plus ``rescale_betas_zero_snr=False`` and a fixed variance for
``variance_type='learned*'``, since the prior's own schedule is given and only ε is passed); everything else
(clip_sample, thresholding, solver order, …) stays as the user set it. A fresh copy is built per chunk
(multistep schedulers keep state). The timesteps are given in one of three ways, tried in this order:

1. ``set_timesteps(timesteps=[...])`` where the signature takes it (DDPM, DPM-Solver multistep, Euler, Heun,
   LCM, TCD): our integer timesteps (the ``fast`` rule from t_N with ``steps`` (default 20), or ``timesteps=``).
2. ``set_timesteps(sigmas=[...])`` (VP σ = sqrt((1 − ā)/ā) at our timesteps) where only that is taken; kept only
   if the scheduler then reports our timesteps.
3. otherwise (DDIM, Euler ancestral, UniPC; or a config such as Karras sigmas that refuses custom timesteps):
   img2img style — ``set_timesteps(num_inference_steps=n)`` with the smallest n whose schedule has ``steps``
   timesteps ≤ t_N, start at the first of them (``set_begin_index``) and run the tail. The evaluated timesteps
   then follow the scheduler's own spacing (and the start may lie a little below t_N).

x_N is noised with the scheduler's own ``add_noise`` at its first timestep (sigma-space schedulers such as Euler
keep x in their own scaling), from the same per-face ε draw; each model input is ``scale_model_input(x, t)``
(model space); the prior's prediction is converted to ε and guided; ``step(eps, t, x, generator=<per-face CPU
generators>)`` (plus ``eta=`` for schedulers whose ``step`` takes it, when ``restore_faces`` got an ``eta``)
draws any further noise. Non-integer scheduler timesteps are rounded for the prior.
"""
from __future__ import annotations

import inspect
import math
import os
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from .timesteps import DEFAULT_STEPS, check_timesteps, evenly_spaced_timesteps, get_preset

Denoise = Callable[[Tensor, int], "tuple[Tensor, Tensor]"]
Callback = Callable[[int], None]

__all__ = ["BUILTIN_SAMPLERS", "BuiltinSampler", "Noise", "Sampler", "SchedulerSampler", "configure_scheduler", "ddim",
           "ddpm", "check_eta", "dpmpp_2m", "q_sample", "resolve_sampler"]


@runtime_checkable
class Sampler(Protocol):
    """What `restore_faces` runs (`BuiltinSampler`, `SchedulerSampler`, or an object of the caller's).

    ``num_steps``: model evaluations per chunk (for progress). ``run(denoise, x0, acp, noise, callback)``: from the
    clean start latents x0 [n, c, h, w] (float32, the prior's encoding of the backbone estimates) → denoised
    latents; ``denoise`` the library's ``(x_t, t) -> (ε, x0)`` (`sampling.ModelDenoiser`: the prior's model, ε
    conversion and the guidance hook; its ``guidance`` and ``faces`` attributes are there for samplers that bring
    their own model and apply the hook themselves, e.g. through `kdiffusion.KDiffusionGuidance`), ``acp`` the
    prior's float64 ā, ``noise`` the per-face `Noise` (its first draw is each face's start noise), ``callback(j)``
    after model evaluation j. An object with these two members is used as-is by `resolve_sampler`.
    """

    num_steps: int

    def run(self, denoise: Any, x0: Tensor, acp: Tensor, noise: "Noise", callback: Callback | None = None
            ) -> Tensor: ...


class Noise:
    """Per-face noise: ``draw()`` → [n, *shape] float32 on ``device``; face k's draw comes from ``generators[k]``
    (the values of diffusers' ``randn_tensor`` with a list of CPU generators), so it does not depend on the batch.

    ``prefetch`` (for GPUs): the CPU draws one call ahead in background threads (one face per thread, each face's
    generator used by one thread in order, so the values are the same), into pinned memory copied without blocking.
    A batch of 16 faces at 512 px is 12.6M normal samples per step, tens of ms of one CPU core: drawn in line, that
    would cost more than the GPU's UNet step. Only for samplers that draw solely through `draw` (the built-ins; a
    diffusers scheduler draws from ``generators`` itself). The last prefetched draw is wasted (the generators are
    per call).
    """

    def __init__(self, generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device,
                 prefetch: bool = False):
        self.generators = list(generators)
        self.shape = (len(self.generators), *shape)
        self.device = torch.device(device)
        self._pool = None
        self._pending = None
        if prefetch and self.generators:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=min(len(self.generators), os.cpu_count() or 1),
                                            thread_name_prefix="bfr-noise")
            self._pending = self._submit()

    def _submit(self) -> list:
        pin = self.device.type == "cuda"
        buf = torch.empty(self.shape, dtype=torch.float32, pin_memory=pin)
        # randn is empty + normal_: filling face k's slice from its generator gives randn_tensor's values
        return [self._pool.submit(buf[k].normal_, generator=g) for k, g in enumerate(self.generators)] + [buf]

    def draw(self) -> Tensor:
        if self._pool is None:  # what diffusers' randn_tensor does with a list of generators (no import needed)
            draws = [torch.randn(self.shape[1:], generator=g, dtype=torch.float32)[None] for g in self.generators]
            return torch.cat(draws).to(self.device) if draws else torch.zeros(self.shape, device=self.device)
        *faces, buf = self._pending
        for f in faces:
            f.result()
        self._pending = self._submit()
        return buf.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stops the background draws (pending ones finish); `draw` then draws in line."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = self._pending = None

    __call__ = draw


def q_sample(x0: Tensor, t: int, acp: Tensor, eps: Tensor) -> Tensor:
    """x_t = sqrt(ā_t)·x0 + sqrt(1 − ā_t)·ε (float64 scalars)."""
    a = float(acp[int(t)])
    return math.sqrt(a) * x0 + math.sqrt(1.0 - a) * eps


# ------------------------------------------------------------------------------------------ built-in
def ddim(denoise: Denoise, x: Tensor, timesteps: Sequence[int], acp: Tensor, *, eta: float = 0.0,
         noise: Callable[[], Tensor] | None = None, callback: Callback | None = None) -> Tensor:
    """DDIM from x at timesteps[0] down to ā = 1 (module docstring)."""
    k = len(timesteps)
    for j, t in enumerate(timesteps):
        a_t = float(acp[t])
        a_prev = float(acp[timesteps[j + 1]]) if j + 1 < k else 1.0
        eps, x0 = denoise(x, t)
        std = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev - std**2) * eps
        if eta > 0:
            x = x + std * noise()
        if callback is not None:
            callback(j)
    return x


def ddpm(denoise: Denoise, x: Tensor, timesteps: Sequence[int], acp: Tensor, *,
         noise: Callable[[], Tensor], callback: Callback | None = None,
         after_step: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
    """Ancestral DDPM (``p_sample``) steps from x at timesteps[0] down to ā = 1, over the chain ``timesteps``.

    Each step t → prev (the next entry; ā_prev = 1 after the last) is the DDPM posterior q(x_prev | x_t, x0) of the
    *respaced* chain, with β = 1 − ā_t/ā_prev: mean = sqrt(ā_prev)·β/(1 − ā_t)·x0 + sqrt(1 − β)·(1 − ā_prev)/(1 − ā_t)·x_t
    with the clipped x0, and fixed variance σ² = β·(1 − ā_prev)/(1 − ā_t) — the posterior variance of the respaced
    chain (guided-diffusion's ``fixed_small``; a learned-variance model's extra channels are ignored). σ = 0 on the
    last step. One noise draw per step, also the last, so the draw order is fixed. ``after_step(j, x) -> x`` may
    replace the state after step j (before ``callback(j)``), e.g. a consistency constraint.
    """
    k = len(timesteps)
    for j, t in enumerate(timesteps):
        a_t = float(acp[t])
        a_prev = float(acp[timesteps[j + 1]]) if j + 1 < k else 1.0
        beta = 1.0 - a_t / a_prev
        _, x0 = denoise(x, t)
        mean = (math.sqrt(a_prev) * beta / (1.0 - a_t)) * x0 + (math.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)) * x
        z = noise()
        x = mean + math.sqrt(beta * (1.0 - a_prev) / (1.0 - a_t)) * z if j + 1 < k else mean
        if after_step is not None:
            x = after_step(j, x)
        if callback is not None:
            callback(j)
    return x


def dpmpp_2m(denoise: Denoise, x: Tensor, timesteps: Sequence[int], acp: Tensor, *, eta: float = 0.0,
             noise: Callable[[], Tensor] | None = None, callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2M) on the clipped x0 from timesteps[0] down to σ = 0 (module docstring); ``eta`` unused."""

    def lam(a: float) -> float:  # λ = log(α/σ)
        return 0.5 * (math.log(a) - math.log1p(-a))

    k = len(timesteps)
    x0_prev = h_prev = None
    for j, t in enumerate(timesteps):
        _, x0 = denoise(x, t)
        if j + 1 == k:
            x = x0  # σ_next = 0: the step lands on the data prediction
        else:
            a_t, a_s = float(acp[t]), float(acp[timesteps[j + 1]])
            h = lam(a_s) - lam(a_t)
            d = x0 if x0_prev is None else x0 + (0.5 * h / h_prev) * (x0 - x0_prev)
            x = math.sqrt((1.0 - a_s) / (1.0 - a_t)) * x - (math.sqrt(a_s) * math.expm1(-h)) * d
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(j)
    return x


BUILTIN_SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddim": ddim, "dpmsolver++": dpmpp_2m}


class BuiltinSampler:
    """A built-in step loop over fixed timesteps, started from x0 noised at t_N."""

    def __init__(self, step: str, t_start: int, timesteps: Sequence[int], eta: float):
        self.fn = BUILTIN_SAMPLERS[step]
        self.name, self.t_start, self.timesteps, self.eta = step, int(t_start), list(timesteps), float(eta)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def run(self, denoise: Denoise, x0: Tensor, acp: Tensor, noise: Noise, callback: Callback | None = None) -> Tensor:
        x = q_sample(x0, self.t_start, acp, noise.draw())
        return self.fn(denoise, x, self.timesteps, acp, eta=self.eta, noise=noise.draw, callback=callback)


# ------------------------------------------------------------------------------------------ diffusers
def _betas_from_alphas_cumprod(acp: Tensor) -> list[float]:
    prev = torch.cat([acp.new_ones(1), acp[:-1]])
    return (1.0 - acp / prev).tolist()


def configure_scheduler(scheduler: Any, acp: Tensor, clip_sample: float | None = 1.0) -> Any:
    """A new scheduler of ``scheduler``'s class and config, on the prior's schedule and ε prediction.

    ``clip_sample``: the prior's x0 range; None (latent priors: latents are not bounded) turns the scheduler's own
    x0 clipping off (DDPM/DDIM clip to ±1 by default, which would wreck latents)."""
    cls = type(scheduler)
    params = inspect.signature(cls.__init__).parameters
    missing = [k for k in ("num_train_timesteps", "trained_betas", "prediction_type") if k not in params]
    if missing or not hasattr(scheduler, "config") or not hasattr(cls, "from_config"):
        raise ValueError(f"{cls.__name__} cannot be driven on the prior's schedule (it takes no {missing or 'config'});"
                         f" pass a diffusers DDPM-family scheduler or a preset name")
    over: dict[str, Any] = dict(num_train_timesteps=len(acp), trained_betas=_betas_from_alphas_cumprod(acp),
                                prediction_type="epsilon")
    if "rescale_betas_zero_snr" in params:
        over["rescale_betas_zero_snr"] = False
    if str(scheduler.config.get("variance_type", "")).startswith("learned"):
        over["variance_type"] = "fixed_small"
    if clip_sample is None and "clip_sample" in params:
        over["clip_sample"] = False
    return cls.from_config(scheduler.config, **over)


class SchedulerSampler:
    """Drives a diffusers scheduler instance through its public API (module docstring)."""

    draws_from_generators = True  # its step() draws from the per-face generators directly (no Noise prefetch)

    def __init__(self, scheduler: Any, acp: Tensor, t_start: int, timesteps: Sequence[int] | None = None,
                 steps: int | None = None, eta: float | None = None, clip_sample: float | None = 1.0):
        self.template = configure_scheduler(scheduler, acp, clip_sample)
        self.explicit = timesteps is not None
        self.name = type(scheduler).__name__
        self.acp, self.t_start, self.eta = acp, int(t_start), eta
        steps = DEFAULT_STEPS if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.wanted = list(timesteps) if timesteps is not None else evenly_spaced_timesteps(t_start, steps)
        self.mode, self.num_inference_steps, self.begin = "timesteps", None, 0
        sched = self._setup(self.template)
        ts = sched.timesteps[self.begin:]
        self.timesteps = [int(round(float(t))) for t in ts]  # where the prior is evaluated, one per model call
        if not self.timesteps or max(self.timesteps) >= len(acp) or min(self.timesteps) < 0:
            raise ValueError(f"{self.name} gave timesteps {self.timesteps} outside [0, {len(acp) - 1}]")
        step_params = inspect.signature(sched.step).parameters
        self.step_kwargs_names = {k for k in ("generator", "eta") if k in step_params}

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def _setup(self, template: Any) -> Any:
        """A fresh configured copy with its timesteps set (deciding the mode on the first call)."""
        sched = type(template).from_config(template.config)
        if self.mode == "timesteps" and self.num_inference_steps is None:
            params = inspect.signature(sched.set_timesteps).parameters
            if "timesteps" in params:
                try:
                    sched.set_timesteps(timesteps=self.wanted)
                    return sched
                except ValueError:  # e.g. Karras sigmas refuse custom timesteps
                    sched = type(template).from_config(template.config)
            if "sigmas" in params:
                a = self.acp[torch.tensor(self.wanted)]
                try:
                    sched.set_timesteps(sigmas=((1 - a) / a).sqrt().tolist())
                    if [int(round(float(t))) for t in sched.timesteps] == self.wanted:
                        self.mode = "sigmas"
                        return sched
                except (ValueError, TypeError):
                    pass
                sched = type(template).from_config(template.config)
            if self.explicit:  # its own spacing would silently replace the timesteps asked for
                raise ValueError(f"{self.name} takes neither custom timesteps nor sigmas, so timesteps= cannot be "
                                 f"honoured; pass steps= (it then runs its own spacing from t_N) or use a preset")
            self.mode = "tail"
            self.num_inference_steps, self.begin = self._tail_plan(sched)
        if self.mode == "timesteps":
            sched.set_timesteps(timesteps=self.wanted)
        elif self.mode == "sigmas":
            a = self.acp[torch.tensor(self.wanted)]
            sched.set_timesteps(sigmas=((1 - a) / a).sqrt().tolist())
        else:
            sched.set_timesteps(self.num_inference_steps)
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(self.begin)
        return sched

    def _tail_plan(self, sched: Any) -> tuple[int, int]:
        """(n, begin): a num_inference_steps whose schedule has at least len(wanted) distinct timesteps ≤ t_N (the
        first such n counting up from an estimate; the scheduler's rounding can give one or two more), and the index
        of the first of them."""
        want = len(self.wanted)
        top = max(self.wanted[0], self.t_start)
        n_train = len(self.acp)
        n = max(1, int(want * n_train / (top + 1)) - 2)
        while True:
            sched.set_timesteps(n)
            ts = [float(t) for t in sched.timesteps]
            tail = [i for i, t in enumerate(ts) if round(t) <= top]
            if tail and (len({round(ts[i]) for i in tail}) >= want or n >= n_train):
                return n, tail[0]
            if n >= n_train:
                raise ValueError(f"{self.name} has no timestep <= {top}")
            n += 1

    def run(self, denoise: Denoise, x0: Tensor, acp: Tensor, noise: Noise, callback: Callback | None = None) -> Tensor:
        sched = self._setup(self.template)
        ts = sched.timesteps[self.begin:]
        t0 = ts[:1].repeat(x0.shape[0]).to(x0.device)
        x = sched.add_noise(x0, noise.draw(), t0)
        kw: dict[str, Any] = {}
        if "generator" in self.step_kwargs_names:
            kw["generator"] = noise.generators
        if "eta" in self.step_kwargs_names and self.eta is not None:
            kw["eta"] = float(self.eta)
        for j, t in enumerate(ts):
            xin = sched.scale_model_input(x, t)
            eps, _ = denoise(xin, self.timesteps[j])
            x = sched.step(eps.to(x.dtype), t, x, **kw).prev_sample
            if callback is not None:
                callback(j)
        return x


def check_eta(eta: float | None) -> None:
    """η (DDIM-style noise per step) must lie in [0, 1]: above 1 the step's variance exceeds what is left."""
    if eta is not None and not (math.isfinite(float(eta)) and 0.0 <= float(eta) <= 1.0):
        raise ValueError(f"eta must be in [0, 1] (0 = deterministic, 0.5 = DifFace), got {eta}")


def resolve_sampler(sampler: Any, acp: Tensor, t_start: int, steps: int | None = None, eta: float | None = None,
                    timesteps: Sequence[int] | None = None,
                    clip_sample: float | None = 1.0) -> Sampler:
    """A preset name or alias (`timesteps.get_preset`) → `BuiltinSampler`; a diffusers scheduler instance →
    `SchedulerSampler`; a `Sampler` → itself. ``steps``/``eta`` None = the preset's defaults; ``timesteps`` overrides the rule and steps;
    ``clip_sample``: the prior's x0 range (None: unbounded latents, scheduler clipping off)."""
    n_train = len(acp)
    check_eta(eta)
    if timesteps is not None:
        timesteps = check_timesteps(timesteps, t_start, n_train)
    if isinstance(sampler, str):
        preset = get_preset(sampler)
        if steps is not None and int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if timesteps is not None:
            if preset.spacing == "official" and (steps is not None or eta not in (None, preset.eta)):
                preset.resolve(t_start, steps, eta, n_train)  # raises the official preset's error
            return BuiltinSampler(preset.step, t_start, timesteps, preset.eta if eta is None else float(eta))
        ts, eta_ = preset.resolve(t_start, steps, eta, n_train)
        return BuiltinSampler(preset.step, t_start, ts, eta_)
    if hasattr(sampler, "set_timesteps") and hasattr(sampler, "step"):
        return SchedulerSampler(sampler, acp, t_start, timesteps, steps, eta, clip_sample)
    if callable(getattr(sampler, "run", None)) and isinstance(getattr(sampler, "num_steps", None), int):
        return sampler  # a `Sampler` of the caller's: it brings its own steps (steps/eta/timesteps unused)
    raise ValueError(f"sampler must be a preset name, a diffusers scheduler instance or a Sampler (num_steps + "
                     f"run), got {type(sampler).__name__}")
