"""BFR Restore Crops with SD/SDXL Model and BFR Identity Guider, without ComfyUI: the stand-ins of tests/comfy_stub
(comfy.samplers: CFGGuider, KSampler sigmas, euler / dpmpp_2m) drive a stand-in MODEL whose network is the exact
analytic denoiser over the test faces' latents, and a stand-in VAE (ToyVAE: exactly invertible, 2x downscale).
Nodes run under torch.inference_mode(), as in ComfyUI; the VAE's weight is made there too (an inference tensor,
as ComfyUI's checkpoint loader makes them), so the guidance's decoder gradient goes through the node's copy.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from analytic_prior import AnalyticDenoiser, ToyVAE, degrade, linear_alphas_cumprod, nearest_index, psnr
from bfr_core.identity.guidance import cosine_distance, embed_images
from bfr_core.identity.settings import IdentitySettings
from conftest import run_node
from test_guidance import TinyRecognizer

pytestmark = pytest.mark.usefixtures("comfy_inference_mode", "one_thread")
SCALE = 0.7  # the stand-in latent format's scale factor (SD1.5: 0.18215)


class _StubSampling:
    """ComfyUI's ModelSamplingDiscrete + EPS for a given ā (k-diffusion σ table, EPS noise scaling)."""

    def __init__(self, acp):
        self.sigmas = ((1 - acp) / acp).sqrt().float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return (sigma.log().reshape(-1)[:, None] - self.log_sigmas[None]).abs().argmin(1).view(sigma.shape)

    def sigma(self, t):
        return self.sigmas[int(round(float(t)))]

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return latent_image + noise * (math.sqrt(1 + float(sigma) ** 2) if max_denoise else float(sigma))


def StubModelSampling(acp):
    """Built the way ComfyUI's model_base builds it: a class named ModelSampling over the sampling and prediction."""
    import comfy.model_sampling as ms

    return ms.model_sampling(ms.ModelSamplingDiscrete, ms.EPS, base=_StubSampling)(acp)


class StubLatentFormat:
    scale_factor = SCALE

    def process_in(self, x):
        return x * SCALE

    def process_out(self, x):
        return x / SCALE


class StubBaseModel:
    """apply_model(x, σ, cond) → denoised: the analytic ε* at t(σ); cond shifts ε (so CFG matters)."""

    def __init__(self, denoiser, acp):
        self.denoiser = denoiser
        self.model_sampling = StubModelSampling(acp)
        self.latent_format = StubLatentFormat()
        self.calls = 0

    def apply_model(self, x, sigma, cond=None):
        self.calls += 1
        t = self.model_sampling.timestep(sigma.reshape(-1)).long()
        s = sigma.reshape(-1, 1, 1, 1).float()
        eps = self.denoiser(x.float() / (1 + s * s).sqrt(), t).float()
        if cond is not None:
            eps = eps + 0.02 * cond.float().mean()
        return x - s * eps


class StubModelPatcher:
    def __init__(self, model):
        self.model = model
        self.model_options = {}
        self.load_device = torch.device("cpu")

    def get_model_object(self, name):
        return getattr(self.model, name)

    # ModelPatcher's clone and additional models (prepare_sampling loads those with the model)
    def clone(self):
        other = StubModelPatcher(self.model)
        other.additional_models = dict(getattr(self, "additional_models", {}))
        return other

    def set_additional_models(self, key, models):
        self.additional_models = {**getattr(self, "additional_models", {}), key: list(models)}

    def get_nested_additional_models(self):
        return [m for ms in getattr(self, "additional_models", {}).values() for m in ms]


class StubFirstStage(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.toy = ToyVAE()
        self.gain = torch.nn.Parameter(torch.ones(()))  # made under inference mode by the fixture: not saveable

    def encode(self, x):
        return self.toy.encode(x).latent_dist.mean

    def decode(self, z):
        return self.toy.decode(z).sample * self.gain


class StubVAE:
    """ComfyUI's VAE surface: encode(BHWC [0,1]) → raw latents, decode(raw) → BHWC [0,1], first_stage_model."""

    downscale_ratio = 2
    latent_channels = 12
    vae_dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self):
        import comfy.model_patcher

        self.first_stage_model = StubFirstStage()
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, torch.device("cpu"),
                                                        torch.device("cpu"))
        self.decodes = 0

    def memory_used_decode(self, shape, dtype):
        return int(math.prod(shape)) * 4

    def encode(self, pixels):
        return self.first_stage_model.encode(pixels.movedim(-1, 1) * 2 - 1).float()

    def decode(self, samples):
        self.decodes += 1
        return ((self.first_stage_model.decode(samples) + 1) / 2).clamp(0, 1).movedim(1, -1)


@pytest.fixture(scope="module")
def acp():
    return linear_alphas_cumprod()


@pytest.fixture
def vae(comfy_inference_mode):
    return StubVAE()  # its weight is an inference tensor, as ComfyUI's loaders make them


@pytest.fixture(scope="module")
def model(faces64, acp):
    raw = ToyVAE().encode(faces64 * 2 - 1).latent_dist.mean
    return StubModelPatcher(StubBaseModel(AnalyticDenoiser(raw * SCALE, acp), acp))


@pytest.fixture(scope="module")
def rec():
    with torch.inference_mode(False):  # as BFR Load Face Recognizer loads it: usable by autograd
        return TinyRecognizer()


@pytest.fixture(scope="module")
def degraded(faces64):
    return torch.stack([degrade(faces64[i], seed=i) for i in (0, 2, 3)])


def cond(value: float):
    return [[torch.full((1, 4, 8), value), {}]]


POS, NEG = cond(0.0), cond(1.0)


def restore(nodes, crops, model, vae, **kw):
    args = dict(seed=0, steps=10, cfg=1.0, sampler_name="euler", scheduler="karras", denoise=0.4, size=64,
                color_fix="none", batch_size=4)
    args.update(kw)
    (out,) = run_node(nodes["BFRRestoreCropsWithModel"], crops.movedim(1, -1), model, vae, POS, NEG, **args)
    return out.movedim(-1, 1)


def test_restores_degraded_faces_with_the_exact_prior(comfy_pack, faces64, model, vae, degraded):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    out = restore(nodes, degraded, model, vae)
    assert out.shape == degraded.shape
    assert nearest_index(out, faces64).tolist() == [0, 2, 3]
    assert (psnr(out, faces64[[0, 2, 3]]) > 35).all(), psnr(out, faces64[[0, 2, 3]])
    # crops at another size are resized to `size` and back
    big = torch.nn.functional.interpolate(degraded, size=96, mode="bilinear", antialias=True)
    assert restore(nodes, big, model, vae, sampler_name="dpmpp_2m").shape == big.shape


def test_denoise_zero_returns_the_crops_and_faces_do_not_depend_on_the_batch(comfy_pack, model, vae, degraded):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    assert torch.equal(restore(nodes, degraded, model, vae, denoise=0.0), degraded)
    # a stochastic start (denoise 1: pure noise) still makes each face's result its own: seed + i per face
    together = restore(nodes, degraded, model, vae, denoise=1.0, seed=5, batch_size=3)
    alone = restore(nodes, degraded[1:2], model, vae, denoise=1.0, seed=6, batch_size=1)
    assert torch.allclose(together[1:2], alone, atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-2)


def test_cfg_and_colour_fix_are_passed_through(comfy_pack, model, vae, degraded):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    plain = restore(nodes, degraded, model, vae, cfg=1.0)
    assert not torch.allclose(plain, restore(nodes, degraded, model, vae, cfg=4.0), atol=1e-4)
    assert not torch.allclose(plain, restore(nodes, degraded, model, vae, color_fix="adain"), atol=1e-4)


def test_identity_guidance_in_the_restore_node(comfy_pack, faces64, model, vae, degraded, rec):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    ref = faces64[1]
    settings = IdentitySettings(rec, strength=2.0, mask="none", reference=embed_images(rec, ref[None]))
    plain = restore(nodes, degraded, model, vae)
    guided = restore(nodes, degraded, model, vae, guidance=settings)
    assert (cosine_distance(rec, guided, ref) < cosine_distance(rec, plain, ref) - 0.02).all()
    off = IdentitySettings(rec, strength=0.0)
    assert torch.equal(restore(nodes, degraded, model, vae, guidance=off), plain)


def test_guidance_models_load_with_the_unet(comfy_pack, faces64, model, vae, degraded):
    """The VAE (decoded with gradients every step) and a managed recognizer go to ComfyUI as the MODEL's additional
    models, so prepare_sampling loads them with the UNet instead of the hook loading them mid-sampling (where
    ComfyUI may unload the UNet to make room); the user's MODEL itself is not changed (a clone carries them)."""
    import sys

    import comfy.samplers

    manage = sys.modules["bfr_pack_under_test.nodes.memory"].manage  # the pack as conftest.comfy_pack imports it
    with torch.inference_mode(False):
        managed = manage(TinyRecognizer())
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    settings = IdentitySettings(managed, strength=1.0, mask="none", reference=embed_images(managed, faces64[1][None]))
    comfy.samplers.PREPARED.clear()
    restore(nodes, degraded[:1], model, vae, guidance=settings)
    assert comfy.samplers.PREPARED and all(p == [vae.patcher, managed.comfy_patcher] for p in comfy.samplers.PREPARED)
    assert not getattr(model, "additional_models", {})
    comfy.samplers.PREPARED.clear()
    restore(nodes, degraded[:1], model, vae)  # unguided: nothing extra
    assert comfy.samplers.PREPARED and all(p == [] for p in comfy.samplers.PREPARED)
    comfy.samplers.PREPARED.clear()
    (guider,) = run_node(nodes["BFRIdentityGuider"], model, POS, NEG, vae, settings, 3.0)
    latent = vae.encode(degraded[:1].movedim(1, -1))
    sigmas = comfy.samplers.KSampler(model, 2, "cpu", "euler", "karras", denoise=0.5).sigmas
    guider.sample(torch.zeros_like(latent), latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0)
    assert comfy.samplers.PREPARED == [[vae.patcher, managed.comfy_patcher]]

    # fidelity anchors are VAE-encoded before sampling starts, in both routes: no VAE encode while the UNet samples
    pull = IdentitySettings(managed, strength=0.0, fidelity=1.0, mask="none")
    encodes, original = [], vae.encode
    vae.encode = lambda pixels: encodes.append(len(comfy.samplers.PREPARED)) or original(pixels)
    try:
        comfy.samplers.PREPARED.clear()
        out = restore(nodes, degraded[:1], model, vae, guidance=pull)
        assert torch.isfinite(out).all() and encodes and max(encodes) == 0, encodes
        encodes.clear()
        comfy.samplers.PREPARED.clear()
        (guider,) = run_node(nodes["BFRIdentityGuider"], model, POS, NEG, vae, pull, 3.0,
                             target=degraded[:1].movedim(1, -1))
        guider.sample(torch.zeros_like(latent), latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0)
        assert encodes and max(encodes) == 0, encodes
    finally:
        vae.encode = original


def test_identity_guider_off_is_a_plain_cfg_guider(comfy_pack, faces64, model, vae, degraded, rec):
    """The GUIDER in a SamplerCustomAdvanced-style call: guider.sample(noise, latent, sampler, sigmas, ...)."""
    import comfy.samplers

    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    latent = vae.encode(degraded.movedim(1, -1))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sigmas = comfy.samplers.KSampler(model, 10, "cpu", "euler", "karras", denoise=0.5).sigmas

    def run(guider):
        return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0)

    core = comfy.samplers.CFGGuider(model)
    core.set_conds(POS, NEG)
    core.set_cfg(3.0)
    (off,) = run_node(nodes["BFRIdentityGuider"], model, POS, NEG, vae, IdentitySettings(rec, strength=0.0), 3.0,
                      target=degraded.movedim(1, -1))
    assert isinstance(off, comfy.samplers.CFGGuider)
    assert torch.equal(run(off), run(core))

    ref = faces64[1]
    (guided,) = run_node(nodes["BFRIdentityGuider"], model, POS, NEG, vae,
                         IdentitySettings(rec, strength=2.0, mask="none"), 3.0, target=ref[None].movedim(1, -1))
    decode = lambda lat: vae.decode(lat).movedim(-1, 1)  # noqa: E731
    d_core, d_guided = cosine_distance(rec, decode(run(core)), ref), cosine_distance(rec, decode(run(guided)), ref)
    assert (d_guided < d_core - 0.02).all(), (d_core, d_guided)
    with pytest.raises(ValueError, match="'target' has 2 faces for 3 latents"):
        (bad,) = run_node(nodes["BFRIdentityGuider"], model, POS, NEG, vae, IdentitySettings(rec), 3.0,
                          target=faces64[:2].movedim(1, -1))
        run(bad)


def test_clear_errors(comfy_pack, model, vae, degraded, rec):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    with pytest.raises(ValueError, match="connect 'target'"):
        run_node(nodes["BFRIdentityGuider"], model, POS, NEG, vae, IdentitySettings(rec), 4.0)
    with pytest.raises(ValueError, match="ComfyUI MODEL"):
        restore(nodes, degraded, object(), vae)
    with pytest.raises(ValueError, match="ComfyUI VAE"):
        restore(nodes, degraded, model, object())
    with pytest.raises(ValueError, match="BFR Identity Guidance"):
        restore(nodes, degraded, model, vae, guidance="strong")
    import comfy.model_sampling as ms

    # SD3/Flux: flow matching; its class is named ModelSampling too, and it has a positive 1-D σ table
    flow_sampling = ms.model_sampling(ms.ModelSamplingDiscreteFlow, ms.CONST, base=_StubSampling)(
        torch.linspace(0.999, 0.5, 1000).double())
    flow = StubModelPatcher(SimpleNamespace(model_sampling=flow_sampling, latent_format=StubLatentFormat()))
    with pytest.raises(ValueError, match="not a discrete VP schedule"):
        restore(nodes, degraded, flow, vae)
    vae.downscale_ratio = 128
    with pytest.raises(ValueError, match="multiple of the VAE's downscale"):
        restore(nodes, degraded, model, vae)
    vae.downscale_ratio = 2
    with pytest.raises(ValueError, match="'faces' describes 2 faces but 3 crops"):
        restore(nodes, degraded, model, vae, faces=[0, 1])


def test_progress_and_cancel(comfy_pack, model, vae, degraded):
    import comfy.model_management as mm
    import comfy.utils

    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    comfy.utils.UPDATES.clear()
    restore(nodes, degraded, model, vae, steps=5, batch_size=2)
    assert comfy.utils.UPDATES[-1] == (comfy.utils.UPDATES[-1][1],) * 2 and len(comfy.utils.UPDATES) >= 10
    mm.INTERRUPT["flag"] = True
    with pytest.raises(mm.InterruptProcessingException):
        restore(nodes, degraded, model, vae)
    mm.INTERRUPT["flag"] = False
