"""Diffusion: noise schedules, priors (encode/denoise/decode), timesteps and presets, samplers, the core loop.

No backbone knowledge lives here; the DifFace recipe (`restore_faces`) is `bfr_core.restoration.difface`.
"""
from ..lazy import lazy_exports

_EXPORTS = {
    "load_prior": ".loading",
    "DenoiserPrior": ".priors",
    "DiffusionPrior": ".priors",
    "LatentPrior": ".priors",
    "LatentDiffusionPrior": ".latent",
    "PromptEmbeddings": ".latent",
    "encode_prompt": ".latent",
    "PixelPrior": ".priors",
    "Prior": ".priors",
    "as_prior": ".priors",
    "resolve_sampler": ".samplers",
    "Sampler": ".samplers",
    "KDiffusionGuidance": ".kdiffusion",
    "Guidance": ".sampling",
    "sample_latents": ".sampling",
    "linear_alphas_cumprod": ".schedules",
    "DEFAULT_SAMPLER": ".timesteps",
    "DEFAULT_STEPS": ".timesteps",
    "DEFAULT_STRENGTH": ".timesteps",
    "PRESETS": ".timesteps",
    "SAMPLERS": ".timesteps",
    "get_preset": ".timesteps",
    "official_timesteps": ".timesteps",
    "strength_to_timestep": ".timesteps",
    "timestep_to_strength": ".timesteps",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

