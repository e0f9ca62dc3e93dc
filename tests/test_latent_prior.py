"""The prior interface (encode / denoise / decode): pixel priors and a toy latent prior through the same sampler.

The toy VAE is exactly invertible (PixelUnshuffle(2) then an orthogonal 1×1 conv; decode = the inverse) and
exposes AutoencoderKL's interface (``encode(x).latent_dist.mean``, ``decode(z).sample``, ``config``); the
analytic (exact) denoiser of tests/analytic_prior.py runs over the encoded faces in latent space.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from analytic_prior import (AnalyticDenoiser, AnalyticPrior, ToyVAE, degrade, linear_alphas_cumprod, nearest_index,
                            psnr)
from bfr_core.archs.iddpm_unet import TINY_CONFIG, IDDPMUNet
from bfr_core.diffusion.priors import DiffusionPrior, LatentPrior, PixelPrior, Prior, as_prior
from bfr_core.restoration.difface import restore_faces

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def degraded64(faces64) -> torch.Tensor:
    return torch.stack([degrade(faces64[i], seed=i) for i in range(4)])


def _latent_prior(faces01, vae, scaling_factor=0.7, **kw):
    acp = linear_alphas_cumprod()
    prior = LatentPrior(None, vae, acp, latent_size=faces01.shape[-1] // (1 if vae.identity else 2),
                        latent_channels=3 if vae.identity else 12, scaling_factor=scaling_factor, **kw)
    prior.model = AnalyticDenoiser(prior.encode(faces01), acp)  # exact ε* over the encoded faces
    return prior


def test_toy_vae_is_exactly_invertible(faces64):
    vae = ToyVAE()
    prior = _latent_prior(faces64, vae)
    z = prior.encode(faces64)
    assert z.shape == (8, 12, 32, 32) and prior.sample_size == 64 and isinstance(prior, Prior)
    assert (prior.decode(z) - faces64).abs().max() < 1e-5


@pytest.mark.parametrize("sampler", ["fast", "dpmsolver++", "ddpm"])
def test_latent_prior_restores_degraded_faces(faces64, degraded64, sampler):
    from diffusers import DDPMScheduler

    prior = _latent_prior(faces64, ToyVAE())
    s = DDPMScheduler(clip_sample=False) if sampler == "ddpm" else sampler
    out = restore_faces(degraded64, prior, sampler=s, seed=0)
    p = psnr(out, faces64[:4])
    assert (p >= 40).all(), p
    assert nearest_index(out, faces64).tolist() == [0, 1, 2, 3]


def test_identity_autoencoder_latent_path_equals_pixel_path(faces64, degraded64):
    pixel = AnalyticPrior(faces64)
    latent = _latent_prior(faces64, ToyVAE(identity=True), scaling_factor=1.0, clip_sample=1.0)
    assert latent.sample_size == 64

    def hook(x_t, t, x0_pred, *, faces):
        return 0.05 * torch.tanh(x0_pred) * (faces.view(-1, 1, 1, 1) + 1)

    for kw in (dict(sampler="fast"), dict(sampler="official"), dict(sampler="dpmsolver++", steps=8),
               dict(sampler="fast", steps=6, guidance=hook, batch_size=3)):
        a = restore_faces(degraded64, pixel, seed=3, **kw)
        b = restore_faces(degraded64, latent, seed=3, **kw)
        assert torch.equal(a, b), (kw, (a - b).abs().max())


def test_guidance_and_cond_in_latent_space(faces64, degraded64):
    prior = _latent_prior(faces64, ToyVAE())
    analytic = prior.model
    conds = []

    def denoiser(z, t, cond):  # a conditional denoiser: cond is split with the chunks
        conds.append(cond.tolist())
        return analytic(z, t)

    prior.model = denoiser
    shapes = []

    def hook(x_t, t, x0_pred, *, faces):
        shapes.append((tuple(x_t.shape), faces.tolist()))
        return torch.zeros_like(x0_pred)

    restore_faces(degraded64[:3], prior, steps=2, batch_size=2, guidance=hook, cond=torch.tensor([10, 11, 12]))
    assert conds == [[10, 11]] * 2 + [[12]] * 2
    assert shapes == [((2, 12, 32, 32), [0, 1])] * 2 + [((1, 12, 32, 32), [2])] * 2


def test_pixel_priors_share_the_interface():
    torch.manual_seed(0)
    unet = IDDPMUNet(TINY_CONFIG).eval()
    dp = DiffusionPrior(model=unet, alphas_cumprod=linear_alphas_cumprod(), sample_size=TINY_CONFIG.image_size,
                        in_channels=3, out_channels=6, learned_variance=True)
    assert as_prior(dp) is dp and isinstance(dp, Prior) and dp.image_channels == 3
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(dp.encode(x), x * 2 - 1) and torch.equal(dp.decode(x * 2 - 1), (x * 2 - 1 + 1) * 0.5)
    plain = SimpleNamespace(model=unet, alphas_cumprod=dp.alphas_cumprod, sample_size=dp.sample_size, in_channels=3,
                            learned_variance=True)
    assert isinstance(as_prior(plain), PixelPrior)
    y = torch.rand(2, 3, dp.sample_size, dp.sample_size, generator=torch.Generator().manual_seed(1))
    assert torch.equal(restore_faces(y, dp, strength=0.2, steps=2, seed=1),
                       restore_faces(y, plain, strength=0.2, steps=2, seed=1))
    with pytest.raises(ValueError, match="not a diffusion prior"):
        restore_faces(y, object(), strength=0.2)
