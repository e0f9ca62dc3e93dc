"""Diffusion: noise schedules, priors (encode/denoise/decode), timesteps and presets, samplers, the core loop.

No backbone knowledge lives here; the DifFace recipe (`restore_faces`) is `bfr_core.restoration.difface`.
"""
from .loading import load_prior
from .priors import DenoiserPrior, DiffusionPrior, LatentPrior, PixelPrior, Prior, as_prior
from .samplers import resolve_sampler
from .sampling import Guidance, sample_latents
from .schedules import linear_alphas_cumprod
from .timesteps import (DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_STRENGTH, PRESETS, SAMPLERS, get_preset,
                        official_timesteps, strength_to_timestep, timestep_to_strength)

__all__ = ["DEFAULT_SAMPLER", "DEFAULT_STEPS", "DEFAULT_STRENGTH", "DenoiserPrior", "DiffusionPrior", "Guidance",
           "LatentPrior", "PRESETS", "PixelPrior", "Prior", "SAMPLERS", "as_prior", "get_preset", "linear_alphas_cumprod",
           "load_prior", "official_timesteps", "resolve_sampler", "sample_latents", "strength_to_timestep",
           "timestep_to_strength"]
