"""The bridge between k-diffusion samplers (ComfyUI's) and the library's guidance hook.

k-diffusion samplers see a VP model (SD1.5/SD2.x/SDXL: ā_t over integer training timesteps) in σ-space: the state
is x = x_t / sqrt(ā_t) = x0 + σ·ε with σ = sqrt((1 − ā)/ā), and the model is a ``denoised(x, σ)`` = x0 prediction.
The library's `sampling.Guidance` hook works on integer timesteps and VP states: ``hook(x_t, t, x0_pred, faces=…)
-> c``, c added to the x0 prediction. So for a model evaluation at σ:

    t        = the training timestep whose σ_t is nearest to σ in log σ (as ComfyUI's ``model_sampling.timestep``)
    x_t      = x / sqrt(1 + σ²)                     (ā = 1/(1 + σ²))
    denoised ← denoised + hook(x_t, t, denoised, faces)

A k-diffusion sampler that then steps with the corrected denoised does what the library's samplers do with a guided
x0: DDIM (η = 0) is exactly Euler in σ-space, so at the same timesteps the two agree to float rounding (tested), and
the hook's σ_t = sqrt(1 − ā_t) scaling, RMS normalisation, sub-steps and masks carry over unchanged. The hook gets
the model's own schedule: build it with ``alphas_cumprod=alphas_cumprod_from_sigmas(model_sigmas)``.

Evaluations at σ = 0 (none of the usual samplers make one) are returned unguided. When the σ of a batch differ
(no ComfyUI sampler does that), each distinct σ is guided separately.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .sampling import Guidance

__all__ = ["KDiffusionGuidance", "alphas_cumprod_from_sigmas", "sigmas_from_alphas_cumprod"]


def alphas_cumprod_from_sigmas(sigmas: Tensor) -> Tensor:
    """ā = 1/(1 + σ²), float64 on the CPU (k-diffusion's training σ per timestep → the VP schedule)."""
    s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
    if s.ndim != 1 or not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError("sigmas must be a 1-D tensor of finite values > 0 (one per training timestep)")
    return 1.0 / (1.0 + s * s)


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """σ = sqrt((1 − ā)/ā), float64 on the CPU."""
    a = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
    return ((1.0 - a) / a).sqrt()


class KDiffusionGuidance:
    """``denoised ← denoised + hook(x/sqrt(1+σ²), t(σ), denoised, faces)`` for a k-diffusion model evaluation.

    ``hook``: a `sampling.Guidance` (e.g. `IdentityGuidance` built on the same ā). ``alphas_cumprod``: the model's
    training schedule (float64 [T]; `alphas_cumprod_from_sigmas` for k-diffusion σ). Call it with the sampler's
    x, σ (a scalar or [B]), the model's denoised and the batch's face indices (default 0 … B−1).
    """

    def __init__(self, hook: Guidance | Callable[..., Tensor], alphas_cumprod: Tensor):
        self.hook = hook
        acp = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        if acp.ndim != 1 or not bool(((acp > 0) & (acp < 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D tensor of values in (0, 1)")
        self.alphas_cumprod = acp
        self.log_sigmas = sigmas_from_alphas_cumprod(acp).log()

    def timestep(self, sigma: float) -> int:
        """The training timestep nearest to σ in log σ."""
        return int((self.log_sigmas - math.log(sigma)).abs().argmin())

    def __call__(self, x: Tensor, sigma: Tensor | float, denoised: Tensor, faces: Tensor | None = None) -> Tensor:
        n = x.shape[0]
        faces = torch.arange(n) if faces is None else torch.as_tensor(faces, dtype=torch.long).reshape(-1).cpu()
        if len(faces) != n:
            raise ValueError(f"{len(faces)} face indices for a batch of {n}")
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().reshape(-1).cpu()
        s = s.expand(n) if s.numel() == 1 else s
        if s.numel() != n:
            raise ValueError(f"sigma has {s.numel()} values for a batch of {n}")
        out = denoised
        for value in torch.unique(s).tolist():
            if value <= 0:
                continue  # σ = 0: the state is already clean, nothing to guide
            rows = (s == value).nonzero().flatten()
            every = len(rows) == n
            x_t = (x if every else x[rows]).float() / math.sqrt(1.0 + value * value)
            d = (denoised if every else denoised[rows]).detach().float()
            c = self.hook(x_t, self.timestep(value), d, faces=faces if every else faces[rows])
            if not isinstance(c, Tensor) or tuple(c.shape) != tuple(d.shape):
                raise ValueError(f"guidance must return a tensor of shape {tuple(d.shape)}, got "
                                 f"{getattr(c, 'shape', type(c))}")
            c = c.detach().to(device=denoised.device, dtype=denoised.dtype)
            if every:
                out = denoised + c
            else:
                out = out.clone() if out is denoised else out
                out[rows.to(out.device)] = denoised[rows.to(out.device)] + c
        return out
