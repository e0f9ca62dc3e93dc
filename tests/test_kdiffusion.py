"""The k-diffusion bridge (`bfr_core.diffusion.kdiffusion`) and `restore_faces` with a `Sampler` that brings its own
model, checked against the library's own DDIM path on an exact prior in latent space.

A k-diffusion Euler loop (written here, in σ-space, as ComfyUI's samplers are) drives the analytic denoiser over the
ToyVAE latents of the test faces; the prior handed to `restore_faces` is a codec only (`LatentPrior(None, vae)`).
DDIM with η = 0 is Euler in σ-space, so at the same timesteps both paths must agree to float rounding, with and
without identity guidance.
"""
from __future__ import annotations

import math

import pytest
import torch

from analytic_prior import AnalyticDenoiser, ToyVAE, degrade, linear_alphas_cumprod
from bfr_core.diffusion.kdiffusion import (KDiffusionGuidance, alphas_cumprod_from_sigmas,
                                           sigmas_from_alphas_cumprod)
from bfr_core.diffusion.priors import LatentPrior
from bfr_core.diffusion.samplers import Sampler, resolve_sampler
from bfr_core.identity.guidance import IdentityGuidance, cosine_distance
from bfr_core.restoration.difface import restore_faces
from test_guidance import Recorder, TinyRecognizer

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 10
T_START = 400  # restore_faces' default strength 0.4


@pytest.fixture(scope="module")
def acp() -> torch.Tensor:
    return linear_alphas_cumprod()


@pytest.fixture(scope="module")
def denoiser(faces64, acp) -> AnalyticDenoiser:
    codec = LatentPrior(None, ToyVAE(), acp, latent_size=32, latent_channels=12, scaling_factor=0.7)
    return AnalyticDenoiser(codec.encode(faces64), acp)


@pytest.fixture(scope="module")
def full_prior(denoiser, acp) -> LatentPrior:
    return LatentPrior(denoiser, ToyVAE(), acp, latent_size=32, latent_channels=12, scaling_factor=0.7)


@pytest.fixture(scope="module")
def codec(acp) -> LatentPrior:
    return LatentPrior(None, ToyVAE(), acp, latent_size=32, latent_channels=12, scaling_factor=0.7)


@pytest.fixture(scope="module")
def degraded(faces64) -> torch.Tensor:
    return torch.stack([degrade(faces64[i], seed=i) for i in (0, 2, 3)])


@pytest.fixture(scope="module")
def timesteps(acp) -> list[int]:
    return list(resolve_sampler("ddim", acp, T_START, STEPS, 0.0).timesteps)


class KEuler:
    """A k-diffusion Euler sampler with its own ε-model (the `Sampler` protocol), guided through the bridge."""

    def __init__(self, model, acp, timesteps):
        self.model, self.acp = model, acp
        sig = sigmas_from_alphas_cumprod(acp)
        self.sigmas = [float(sig[t]) for t in timesteps] + [0.0]
        self.num_steps = len(timesteps)

    def denoised(self, x, sigma):
        t = int((sigmas_from_alphas_cumprod(self.acp) - sigma).abs().argmin())
        a = float(self.acp[t])
        x_t = x / math.sqrt(1 + sigma * sigma)
        eps = self.model(x_t, torch.full((x.shape[0],), t)).float()
        return (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)

    def run(self, denoise, x0, acp, noise, callback=None):
        bridge = KDiffusionGuidance(denoise.guidance, acp) if denoise.guidance is not None else None
        x = x0 + self.sigmas[0] * noise.draw()
        for j, (s, s_next) in enumerate(zip(self.sigmas[:-1], self.sigmas[1:])):
            d = self.denoised(x, s)
            if bridge is not None:
                d = bridge(x, torch.full((x.shape[0],), s), d, denoise.faces)
            x = d + s_next * (x - d) / s
            if callback is not None:
                callback(j)
        return x


def _guidance(rec, ref, prior, strength, mask="features"):
    return IdentityGuidance(rec, strength=strength, reference=ref, mask=mask, latent_prior=prior, alphas_cumprod=prior.alphas_cumprod)


def test_sigma_timestep_mapping_round_trips(acp):
    sig = sigmas_from_alphas_cumprod(acp)
    assert torch.allclose(alphas_cumprod_from_sigmas(sig), acp, rtol=0, atol=1e-12)
    bridge = KDiffusionGuidance(lambda x_t, t, x0, faces: torch.zeros_like(x0), acp)
    for t in (0, 1, 250, 999):
        assert bridge.timestep(float(sig[t])) == t
        assert bridge.timestep(float(sig[t]) * 1.0001) == t
    with pytest.raises(ValueError, match="sigmas"):
        alphas_cumprod_from_sigmas(torch.tensor([0.0, 1.0]))


def test_external_sampler_is_used_as_is(acp, denoiser, timesteps):
    s = KEuler(denoiser, acp, timesteps)
    assert isinstance(s, Sampler) and resolve_sampler(s, acp, T_START) is s
    with pytest.raises(ValueError, match="Sampler"):
        resolve_sampler(object(), acp, T_START)


def test_codec_prior_refuses_to_denoise(codec):
    with pytest.raises(ValueError, match="codec only"):
        restore_faces(torch.rand(1, 3, 64, 64), codec, steps=2)


def test_k_euler_equals_library_ddim_with_and_without_guidance(faces64, acp, denoiser, full_prior, codec, degraded,
                                                                timesteps):
    """Euler in σ-space with the bridge == the library's DDIM (η 0) with the hook, same timesteps/noise/latents."""
    rec = TinyRecognizer()
    ddim = restore_faces(degraded, full_prior, sampler="ddim", timesteps=timesteps, eta=0.0, seed=3)
    euler = restore_faces(degraded, codec, sampler=KEuler(denoiser, acp, timesteps), seed=3)
    assert (euler - ddim).abs().max() < 1e-5
    g_ddim = _guidance(rec, faces64[1], full_prior, 2.0)
    g_euler = _guidance(rec, faces64[1], codec, 2.0)
    guided_ddim = restore_faces(degraded, full_prior, sampler="ddim", timesteps=timesteps, eta=0.0, seed=3,
                                guidance=g_ddim)
    guided_euler = restore_faces(degraded, codec, sampler=KEuler(denoiser, acp, timesteps), seed=3, guidance=g_euler)
    assert (guided_euler - guided_ddim).abs().max() < 1e-4
    assert (guided_euler - euler).abs().max() > 1e-3  # the guidance did something


def test_guidance_off_is_exactly_unguided(acp, denoiser, codec, degraded, timesteps):
    rec = TinyRecognizer()
    plain = restore_faces(degraded, codec, sampler=KEuler(denoiser, acp, timesteps), seed=1)
    off = restore_faces(degraded, codec, sampler=KEuler(denoiser, acp, timesteps), seed=1,
                        guidance=IdentityGuidance(rec, strength=0.0, reference=torch.ones(8), latent_prior=codec,
                                                  alphas_cumprod=acp))
    assert torch.equal(plain, off)


def test_distance_falls_with_strength(faces64, acp, denoiser, codec, degraded, timesteps):
    rec = TinyRecognizer()
    ref = faces64[1]
    d = torch.stack([cosine_distance(rec, restore_faces(degraded, codec, sampler=KEuler(denoiser, acp, timesteps),
                                                        guidance=_guidance(rec, ref, codec, s, "none")), ref)
                     for s in (0.0, 0.25, 0.5, 1.0)])
    assert (d[1:] < d[:-1]).all(), d
    assert (d[-1] < d[0] - 0.05).all(), d


def test_correction_is_zero_outside_the_mask(faces64, acp, denoiser, codec, degraded, timesteps):
    rec = TinyRecognizer()
    user = torch.zeros(1, 128, 128)
    user[:, :, :64] = 1.0  # the left half of the crop → latent columns < 16
    hook = Recorder(IdentityGuidance(rec, strength=2.0, reference=faces64[1], mask=user, latent_prior=codec,
                                     alphas_cumprod=acp))
    restore_faces(degraded, codec, sampler=KEuler(denoiser, acp, timesteps), guidance=hook)
    assert len(hook.calls) == STEPS
    for t, _, _, c in hook.calls:
        assert t in timesteps
        assert torch.count_nonzero(c[..., 17:]) == 0 and c[..., :16].abs().amax() > 0


def test_bridge_guides_each_sigma_of_a_mixed_batch_separately(acp):
    calls = []

    def hook(x_t, t, x0, *, faces):
        calls.append((t, faces.tolist(), x_t.clone()))
        return torch.full_like(x0, float(t))

    bridge = KDiffusionGuidance(hook, acp)
    sig = sigmas_from_alphas_cumprod(acp)
    x, d = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    s = torch.tensor([float(sig[100]), float(sig[300]), float(sig[100])])
    out = bridge(x, s, d, torch.tensor([5, 6, 7]))
    assert sorted((t, f) for t, f, _ in calls) == [(100, [5, 7]), (300, [6])]
    assert torch.allclose(out[0] - d[0], torch.full_like(d[0], 100.0)) and torch.allclose(out[1] - d[1], torch.full_like(d[1], 300.0))
    x_t = next(v for t, _, v in calls if t == 300)
    assert torch.allclose(x_t, x[1:2] / math.sqrt(1 + float(sig[300]) ** 2))
    assert torch.equal(bridge(x, torch.zeros(3), d), d)  # σ = 0: unguided
