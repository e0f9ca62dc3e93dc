"""Noise schedules of the diffusion priors, as float64 `alphas_cumprod` tensors.

DifFace's prior was trained with the DDPM linear schedule: betas = linspace(1e-4, 0.02, 1000) in
float64 (numpy), abar_t = prod_{s<=t} (1 - beta_s), t = 0..999 (0-indexed, integer timesteps).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "linear_betas",
    "linear_alphas_cumprod",
    "alphas_cumprod_from_betas",
    "alphas_cumprod_from_scheduler_config",
]


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Linear betas in float64, computed with numpy's linspace like the original training code."""
    return torch.from_numpy(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


def alphas_cumprod_from_betas(betas: Tensor | np.ndarray) -> Tensor:
    """abar_t = cumprod(1 - beta) in float64."""
    betas = np.asarray(torch.as_tensor(betas).double().cpu().numpy(), dtype=np.float64)
    if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
        raise ValueError("betas must be a 1-D sequence in (0, 1]")
    return torch.from_numpy(np.cumprod(1.0 - betas, axis=0))


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The schedule DifFace was trained with (defaults): float64 tensor [num_steps]."""
    return alphas_cumprod_from_betas(linear_betas(num_steps, beta_start, beta_end))


def alphas_cumprod_from_scheduler_config(config: Mapping[str, Any]) -> Tensor:
    """float64 abar of a diffusers scheduler config (scheduler_config.json contents).

    'linear' and 'scaled_linear' are computed here in float64; other schedules (cosine, sigmoid,
    trained betas, zero-SNR rescaling) take diffusers' betas and accumulate them in float64.
    """
    cls = str(config.get("_class_name", ""))
    if "ScoreSdeVe" in cls or "KarrasVe" in cls:
        raise ValueError(f"{cls} is a variance-exploding (score-SDE) schedule; only DDPM-style (variance-preserving) "
                         f"priors work with DifFace's transition")
    n = int(config.get("num_train_timesteps") or 1000)
    start = float(config.get("beta_start", 1e-4))
    end = float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is None and not config.get("rescale_betas_zero_snr", False):
        if kind == "linear":
            return linear_alphas_cumprod(n, start, end)
        if kind == "scaled_linear":
            return alphas_cumprod_from_betas(np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2)
    from diffusers import DDPMScheduler

    known = {k: v for k, v in config.items() if not k.startswith("_")}
    sched = DDPMScheduler.from_config(known)
    return alphas_cumprod_from_betas(sched.betas.double())
