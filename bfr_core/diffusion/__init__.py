"""Diffusion: noise schedules, priors (the denoisers), timesteps and samplers."""
from .priors import DiffusionPrior, load_prior
from .schedules import linear_alphas_cumprod

__all__ = ["DiffusionPrior", "linear_alphas_cumprod", "load_prior"]
