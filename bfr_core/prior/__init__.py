"""Face diffusion priors: DifFace's iDDPM UNet (own port) and diffusers UNet2DModel folders."""
from .iddpm_unet import DIFFACE_FFHQ512, TINY_CONFIG, IDDPMUNet, IDDPMUNetConfig
from .loader import DiffusionPrior, PriorLike, load_prior
from .schedule import linear_alphas_cumprod

__all__ = ["DIFFACE_FFHQ512", "DiffusionPrior", "IDDPMUNet", "IDDPMUNetConfig", "PriorLike", "TINY_CONFIG",
           "linear_alphas_cumprod", "load_prior"]
