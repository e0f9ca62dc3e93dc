"""Diffusion: noise schedules, priors (the denoisers), timesteps and samplers."""
from .loading import load_prior
from .priors import DiffusionPrior
from .schedules import linear_alphas_cumprod

__all__ = ["DiffusionPrior", "linear_alphas_cumprod", "load_prior"]
