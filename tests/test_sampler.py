"""bfr_core.restoration.difface.restore_faces (DifFace restore path) and bfr_core.restoration.backbones.

Fast and weight-free: a tiny random conv "denoiser" for exactness/plumbing, the analytic prior of
tests/analytic_prior.py (exact ε* of an empirical distribution of real aligned faces) for quality, and the tiny
trained diffusers UNet from ../shared/data for a real learned model.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analytic_prior import AnalyticPrior, contrast_variants, degrade, linear_alphas_cumprod, nearest_index, psnr
from bfr_core.models.checkpoint import CheckpointError
from bfr_core.restoration.backbones import IdentityRestorer, load_restorer
from bfr_core.restoration.estimate import backbone_estimate
from bfr_core.diffusion.priors import DenoiserPrior
from bfr_core.diffusion.timesteps import (
    denoising_timesteps,
    is_official,
    official_timesteps,
    strength_to_timestep,
    timestep_to_strength,
)
from bfr_core.restoration.difface import restore_faces
from conftest import shared_path


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ test priors
class _TinyNet(torch.nn.Module):
    """A fixed random conv "denoiser": D(x_t, t) = tanh(conv(tanh(conv(x_t))) + emb(t)) is its clean-image guess
    and it returns ε = (x_t − sqrt(ā_t)·D)/sqrt(1 − ā_t) (plus variance channels). Structured like a real denoiser
    so the sampling chain is stable (a raw random ε-net makes DDIM chaotic: 1e-6 in → O(1) out), and
    timestep-dependent so wrong timesteps change the result."""

    def __init__(self, cin: int, cout: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(cin, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, cin, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
        self.register_buffer("freq", torch.randn(cin, generator=g))
        self.register_buffer("acp", linear_alphas_cumprod().float())
        self.extra = cout - cin

    def forward(self, x, t):
        emb = 0.3 * torch.sin(t.float()[:, None] / 50.0 * self.freq[None])[:, :, None, None]
        d = torch.tanh(self.conv2(torch.tanh(self.conv1(x))) + emb)
        ab = self.acp[t].view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * d) / (1 - ab).sqrt()
        return torch.cat([eps, torch.tanh(x[:, : self.extra])], 1) if self.extra else eps


class ConvPrior:
    def __init__(self, channels=3, size=32, learned_variance=True, seed=0):
        self.model = _TinyNet(channels, 2 * channels if learned_variance else channels, seed).eval()
        self.alphas_cumprod = linear_alphas_cumprod()
        self.sample_size = size
        self.in_channels = channels
        self.learned_variance = learned_variance


def reference_official(y01: torch.Tensor, model, acp: torch.Tensor, seed: int, eta: float = 0.5) -> torch.Tensor:
    """DifFace's official path written from its equations (guided-diffusion SpacedDiffusion 'ddim250', start index
    100, ddim_sample with clip_denoised and pred_noise), one face at a time, noise from Generator(seed + i):
    ε for q_sample first, then one draw per DDIM step."""
    use_t = list(range(0, 1000, 4))  # respaced 250
    sp_acp = acp[use_t]  # float64
    sp_prev = torch.cat([torch.ones(1, dtype=torch.float64), sp_acp[:-1]])
    outs = []
    for i, y in enumerate(y01):
        g = torch.Generator().manual_seed(seed + i)
        c = y.shape[0]
        x0 = y[None] * 2 - 1
        ab = float(sp_acp[100])
        x = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(y.shape, generator=g)[None]
        for n in reversed(range(100)):
            t = use_t[n]
            with torch.no_grad():
                e = model(x, torch.tensor([t]))[:, :c].float()
            ab, abp = float(sp_acp[n]), float(sp_prev[n])
            x0p = ((x - math.sqrt(1 - ab) * e) / math.sqrt(ab)).clamp(-1, 1)
            sigma = eta * math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(1 - ab / abp)
            z = torch.randn(y.shape, generator=g)[None]
            x = math.sqrt(abp) * x0p + math.sqrt(1 - abp - sigma**2) * e + (n != 0) * sigma * z
        outs.append(((x + 1) / 2).clamp(0, 1)[0])
    return torch.stack(outs)


@pytest.fixture(scope="module")
def degraded64(faces64) -> torch.Tensor:
    return torch.stack([degrade(faces64[i], seed=i) for i in range(4)])


# ------------------------------------------------------------------------------------------ schedule
def test_strength_timestep_mapping():
    assert strength_to_timestep(0.4) == 400 and timestep_to_strength(400) == 0.4
    assert strength_to_timestep(0.0) == 0
    assert strength_to_timestep(1.0) == 999
    assert strength_to_timestep(0.25) == 250
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            strength_to_timestep(bad)
    assert abs(float(linear_alphas_cumprod()[400]) - 0.1936) < 1e-4


def test_official_timesteps_match_diffusers_leading_250():
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True,
                      set_alpha_to_one=True, timestep_spacing="leading")
    s.set_timesteps(250)
    assert official_timesteps() == s.timesteps[-100:].tolist()
    assert official_timesteps()[0] == 396 and official_timesteps()[-1] == 0 and len(official_timesteps()) == 100
    with pytest.warns(DeprecationWarning):  # the official path is chosen by name now, not by a step-count rule
        assert is_official(400, 100, "ddim") and not is_official(400, 100, "dpmsolver++")
    assert denoising_timesteps(400, 100, "official") == official_timesteps()  # the off-by-one kept
    assert denoising_timesteps(400, None, "official") == official_timesteps()
    # elsewhere: evenly from t_N itself
    assert denoising_timesteps(400, 20, "ddim") == list(range(400, 0, -20))
    assert denoising_timesteps(400, 100, "dpmsolver++") == list(range(400, 0, -4))
    assert denoising_timesteps(5, 100) == [5, 4, 3, 2, 1]  # capped at t_N
    assert denoising_timesteps(0, 10) == []


# ------------------------------------------------------------------------------------------ exactness
def test_official_path_equals_independent_reference():
    prior = ConvPrior(channels=3, size=32, learned_variance=True)
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = restore_faces(y, prior, seed=7, sampler="official")  # strength 0.4, 100 DDIM steps, eta 0.5
    ref = reference_official(y, prior.model, prior.alphas_cumprod, seed=7, eta=0.5)
    assert out.shape == y.shape and out.dtype == torch.float32
    print(f"official vs independent reference: max |diff| = {(out - ref).abs().max().item():.3g}")
    assert (out - ref).abs().max().item() < 1e-5
    # not vacuous: a different seed or the off-by-one removed gives another result
    assert (restore_faces(y, prior, seed=8, sampler="official") - ref).abs().max().item() > 1e-2
    assert (restore_faces(y, prior, steps=100, sampler="ddim") - ref).abs().max().item() > 1e-2


def test_learned_variance_channels_are_ignored(faces64, degraded64):
    a = restore_faces(degraded64[:2], AnalyticPrior(faces64), steps=10, seed=3)
    b = restore_faces(degraded64[:2], AnalyticPrior(faces64, learned_variance=True), steps=10, seed=3)
    assert torch.equal(a, b)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_other_prediction_types_are_converted_to_epsilon(prediction_type):
    eps_prior = ConvPrior(learned_variance=False)
    other = ConvPrior(learned_variance=False)
    acp = other.alphas_cumprod.float()

    def model(x, t):  # the same denoiser, answering in another parameterisation
        eps = eps_prior.model(x, t)
        ab = acp[t].view(-1, 1, 1, 1)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        return x0 if prediction_type == "sample" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    other.model, other.prediction_type = model, prediction_type
    y = torch.rand(2, 3, 32, 32)
    a = restore_faces(y, eps_prior, strength=0.3, steps=8, seed=2)
    b = restore_faces(y, other, strength=0.3, steps=8, seed=2)
    assert (a - b).abs().max() < 1e-4


# ------------------------------------------------------------------------------------------ analytic prior
@pytest.mark.parametrize("sampler,steps", [("official", None), ("ddim", 100), ("dpmsolver++", 20)])
def test_analytic_prior_restores_degraded_face(faces64, degraded64, sampler, steps):
    # K = 4 faces + mirrors + copies at 1.3× and 0.5× contrast (distractors for a wrong transition scale)
    faces = torch.cat([faces64, contrast_variants(faces64, (1.3, 0.5))])
    prior = AnalyticPrior(faces)
    assert isinstance(prior, DenoiserPrior)
    truth = faces64[:4]
    p_in = psnr(degraded64, truth)
    out = restore_faces(degraded64, prior, restorer=None, steps=steps, sampler=sampler, seed=0)  # strength 0.4
    p_out = psnr(out, truth)
    assert (p_out >= p_in + 6.0).all(), (p_in, p_out)
    # The exact prior's posterior collapses onto one image: right schedule/transition/sampler reproduce the true
    # face to float precision (PSNR capped at 120 dB); wrong ones leave noise or land on another image (< 45 dB).
    assert (p_out > 60).all(), p_out
    assert nearest_index(out, faces).tolist() == [0, 1, 2, 3]


def test_analytic_prior_high_strength_lands_on_a_face(faces64, degraded64):
    prior = AnalyticPrior(faces64)
    out = restore_faces(degraded64, prior, strength=0.7, steps=25, seed=0)
    assert (psnr(out, faces64[:4]) > 60).all()  # still the right face
    out = restore_faces(degraded64, prior, strength=1.0, steps=25, seed=0)  # pure generation
    nearest = faces64[nearest_index(out, faces64)]
    assert (psnr(out, nearest) > 60).all()  # a clean sample of the distribution, not a blend or noise


@pytest.mark.parametrize("wrong", ["shifted", "cosine"])
def test_analytic_prior_wrong_schedule_fails(faces64, degraded64, wrong):
    acp = linear_alphas_cumprod()
    if wrong == "shifted":  # sampler believes ā_t = ā_{t+100}
        reported = torch.cat([acp[100:], acp[-1:].repeat(100)])
    else:
        s = np.arange(1001) / 1000
        f = np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
        reported = torch.from_numpy(np.clip(f[1:] / f[0], 1e-5, 1 - 1e-6))
    prior = AnalyticPrior(faces64, alphas_cumprod=reported, model_alphas_cumprod=acp)
    out = restore_faces(degraded64, prior, seed=0, sampler="official")
    assert (psnr(out, faces64[:4]) < 45).all()
    out = restore_faces(degraded64, prior, steps=20, sampler="dpmsolver++", seed=0)
    assert (psnr(out, faces64[:4]) < 45).all()


def test_dpmsolver_20_steps_close_to_official(faces64, degraded64):
    prior = AnalyticPrior(faces64)
    official = restore_faces(degraded64, prior, seed=0, sampler="official")
    fast = restore_faces(degraded64, prior, steps=20, sampler="dpmsolver++", seed=0)
    assert (psnr(fast, official) > 60).all()
    assert (psnr(fast, faces64[:4]) > 60).all()
    ddim20 = restore_faces(degraded64, prior, steps=20, seed=0)
    assert (psnr(ddim20, official) > 60).all()


# ------------------------------------------------------------------------------------------ tiny trained UNet
class _DiffusersPrior:
    """Adapter: diffusers UNet2DModel → DenoiserPrior (the prior package's load_prior will provide this)."""

    def __init__(self, unet):
        self.unet = unet
        self.alphas_cumprod = linear_alphas_cumprod()
        self.sample_size = int(unet.config.sample_size)
        self.in_channels = int(unet.config.in_channels)
        self.learned_variance = False

    def model(self, x, t):
        return self.unet(x, t).sample


def test_tiny_trained_prior_restores_its_own_sample():
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(str(shared_path("models/tiny_ddpm_lfw32"))).eval()
    prior = _DiffusersPrior(unet)
    assert prior.in_channels == 1 and prior.sample_size == 32
    clean = restore_faces(torch.zeros(3, 1, 32, 32), prior, strength=1.0, steps=20, sampler="dpmsolver++", seed=100)
    assert clean.shape == (3, 1, 32, 32) and torch.isfinite(clean).all() and clean.std() > 0.1
    g = torch.Generator().manual_seed(5)
    blurred = F.avg_pool2d(F.pad(clean, (1, 1, 1, 1), mode="replicate"), 3, 1)
    deg = (blurred + 0.15 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    out = restore_faces(deg, prior, strength=0.2, steps=20, seed=1)
    assert out.shape == deg.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    assert (psnr(out, clean) > psnr(deg, clean)).all(), (psnr(out, clean), psnr(deg, clean))


# ------------------------------------------------------------------------------------------ behaviour
def test_strength_zero_returns_backbone_output_exactly():
    prior = ConvPrior()
    y = torch.rand(3, 3, 32, 32)

    def f(x):
        return (x * 0.8 + 0.1) ** 1.2

    assert torch.equal(restore_faces(y, prior, restorer=f, strength=0.0), f(y).clamp(0, 1))
    assert torch.equal(restore_faces(y, None, restorer=f, strength=0.0), f(y).clamp(0, 1))
    assert torch.equal(restore_faces(y, prior, restorer=None, strength=0.0), y)
    with pytest.raises(ValueError):
        restore_faces(y, None, strength=0.4)


def test_seeds_and_batch_independence():
    prior = ConvPrior()
    y = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    kw = dict(strength=0.3, steps=12, eta=0.5)
    a = restore_faces(y, prior, seed=11, batch_size=3, **kw)
    assert torch.equal(a, restore_faces(y, prior, seed=11, batch_size=3, **kw))
    assert (a - restore_faces(y, prior, seed=12, batch_size=3, **kw)).abs().max() > 1e-3
    # face i uses seed + i: alone (as face 0 with seed 11 + i) or in other chunkings it gives the same result
    for bs in (1, 2):
        assert torch.allclose(a, restore_faces(y, prior, seed=11, batch_size=bs, **kw), atol=1e-6, rtol=0)
    alone = restore_faces(y[2:3], prior, seed=13, **kw)
    assert torch.allclose(alone, a[2:3], atol=1e-6, rtol=0)
    # DPM-Solver++ is deterministic after x_N but still seeded by it
    d1 = restore_faces(y, prior, seed=11, sampler="dpmsolver++", strength=0.3, steps=8)
    assert torch.allclose(d1[1:], restore_faces(y[1:], prior, seed=12, sampler="dpmsolver++", strength=0.3, steps=8),
                          atol=1e-6, rtol=0)


def test_invalid_inputs():
    prior = ConvPrior()
    y = torch.rand(2, 3, 32, 32)
    bad = y.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        restore_faces(bad, prior)
    with pytest.raises(ValueError):
        restore_faces(y[:, :2], prior)  # 2 channels
    with pytest.raises(ValueError):
        restore_faces(y, prior, sampler="euler")
    with pytest.raises(ValueError):
        restore_faces(y, prior, steps=0)
    with pytest.raises(ValueError):
        restore_faces(y, ConvPrior(channels=2))
    assert restore_faces(y[:0], prior).shape == (0, 3, 32, 32)


def test_non_prior_size_crops_are_resized_and_back():
    prior = ConvPrior(size=32)
    y = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(4))
    kw = dict(strength=0.3, steps=6, seed=5)
    out = restore_faces(y, prior, **kw)
    assert out.shape == y.shape and out.min() >= 0 and out.max() <= 1

    def rs(x, hw):
        return F.interpolate(x, size=hw, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)

    expected = rs(restore_faces(rs(y, (32, 32)), prior, **kw), (48, 40))
    assert torch.allclose(out, expected, atol=1e-6, rtol=0)


def test_rgb_crops_with_gray_prior_restore_luma_keep_colour():
    prior = ConvPrior(channels=1, size=32)
    y = 0.3 + 0.4 * torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    out = restore_faces(y, prior, strength=0.2, steps=5, seed=0)
    assert out.shape == y.shape
    delta = out - y
    inside = ((out > 0) & (out < 1)).all(1, keepdim=True)
    spread = (delta.max(1, keepdim=True).values - delta.min(1, keepdim=True).values)[inside]
    assert spread.max() < 1e-5  # the same luma change added to every channel
    gray = restore_faces(y[:, :1], ConvPrior(channels=3, size=32), strength=0.2, steps=5, seed=0)
    assert gray.shape == (2, 1, 32, 32)


def test_progress_reports_and_cancels():
    prior = ConvPrior()
    y = torch.rand(3, 3, 32, 32)
    calls = []
    restore_faces(y, prior, strength=0.2, steps=5, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 10) for i in range(1, 11)]

    n_model = [0]
    inner = prior.model

    def counting(x, t):
        n_model[0] += 1
        return inner(x, t)

    prior.model = counting

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        if done == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        restore_faces(y, prior, progress=cancel)
    assert n_model[0] == 3


def test_oom_retries_with_smaller_chunks():
    prior = ConvPrior()
    y = torch.rand(4, 3, 32, 32)
    kw = dict(strength=0.2, steps=4, seed=3)
    want = restore_faces(y, prior, batch_size=1, **kw)
    inner = prior.model
    sizes = []

    def picky(x, t):
        sizes.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return inner(x, t)

    prior.model = picky
    calls = []
    got = restore_faces(y, prior, batch_size=4, progress=lambda d, t: calls.append((d, t)), **kw)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert sizes[:2] == [4, 2] and set(sizes[2:]) == {1}
    assert calls[-1] == (16, 16)
    prior.model = lambda x, t: (_ for _ in ()).throw(torch.OutOfMemoryError("always"))
    with pytest.raises(torch.OutOfMemoryError):
        restore_faces(y, prior, batch_size=4, **kw)


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_guidance_hook(sampler):
    prior = ConvPrior()
    y = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    kw = dict(strength=0.3, steps=6, seed=1, sampler=sampler, batch_size=2)
    plain = restore_faces(y, prior, **kw)
    seen = []

    def zero(x_t, t, x0_pred, *, faces):
        assert x0_pred.min() >= -1 and x0_pred.max() <= 1 and x0_pred.shape == x_t.shape
        assert torch.is_grad_enabled()
        seen.append((t, faces.tolist()))
        return torch.zeros_like(x0_pred)

    assert torch.equal(restore_faces(y, prior, guidance=zero, **kw), plain)
    ts = denoising_timesteps(300, 6, sampler)
    assert seen == [(t, [0, 1]) for t in ts] + [(t, [2]) for t in ts]

    def to_gray(x_t, t, x0_pred, *, faces):  # pull the clean estimate toward mid-gray (0 in model space)
        x0 = x0_pred.clone().requires_grad_(True)
        loss = (x0**2).sum()
        (grad,) = torch.autograd.grad(loss, x0)
        return -0.25 * grad

    guided = restore_faces(y, prior, guidance=to_gray, **kw)
    assert (guided - 0.5).abs().mean() < 0.5 * (plain - 0.5).abs().mean()


def test_model_dtype_autocast_bf16():
    prior = ConvPrior()
    y = torch.rand(2, 3, 32, 32)
    a = restore_faces(y, prior, strength=0.2, steps=4, seed=0)
    b = restore_faces(y, prior, strength=0.2, steps=4, seed=0, dtype=torch.bfloat16)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).abs().mean() < 0.05


# ------------------------------------------------------------------------------------------ restorers
def test_identity_restorer():
    for p in (None, "none", "None"):
        r = load_restorer(p)
        assert isinstance(r, IdentityRestorer)
        x = torch.rand(2, 3, 16, 16)
        assert torch.equal(r(x), x)


def _tiny_difface_swinir():
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    # DifFace's backbone layout in miniature: pixel-unshuffle in, nearest+conv up, scale 1 overall
    return SwinIR(img_size=8, patch_size=1, in_chans=3, embed_dim=12, depths=[2], num_heads=[2], window_size=4,
                  mlp_ratio=2.0, upscale=4, img_range=1.0, upsampler="nearest+conv", resi_connection="1conv",
                  start_unshuffle=4).eval()


def test_swinir_in_difface_layout_loads_and_matches_spandrel(tmp_path):
    net = _tiny_difface_swinir()
    sd = {}
    for k, v in net.state_dict().items():  # DifFace: conv_first = Sequential(PixelUnshuffle, Conv2d)
        sd["module." + (k.replace("conv_first.", "conv_first.1.", 1) if k.startswith("conv_first.") else k)] = v
    path = tmp_path / "swinir_tiny.pth"
    torch.save({"state_dict": sd}, path)
    r = load_restorer(path)
    assert r.architecture == "SwinIR" and r.scale == 1
    x = torch.rand(2, 32, 32, 3).movedim(-1, 1)  # ComfyUI's non-contiguous view
    with torch.no_grad():
        ref = net(x.contiguous()).clamp(0, 1)
    out = r(x)
    assert out.shape == x.shape and torch.equal(out, ref)
    # used as DifFace's f: strength 0 returns exactly its output
    assert torch.equal(restore_faces(x, ConvPrior(size=32), restorer=r, strength=0.0), ref)
    # other sizes: resized to a valid size and back
    assert r(torch.rand(1, 3, 40, 24)).shape == (1, 3, 40, 24)


def test_restorer_wrong_kind_and_missing_file(tmp_path):
    path = tmp_path / "not_a_restorer.pth"
    torch.save({"params": {"encoder.foo.weight": torch.zeros(3, 3), "decoder.bar": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not_a_restorer.pth"):
        load_restorer(path)
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_restorer(tmp_path / "missing.pth")


def test_restorer_without_spandrel(monkeypatch, tmp_path):
    """Without spandrel: SwinIR files use the own loader (tests/test_swinir.py); others get a clear error."""
    monkeypatch.setitem(sys.modules, "spandrel", None)
    with pytest.raises(CheckpointError, match="x.pth"):
        load_restorer(tmp_path / "x.pth")
    other = tmp_path / "gfpgan.pth"
    torch.save({"params_ema": {"encoder.foo.weight": torch.zeros(3, 3)}}, other)
    with pytest.raises(CheckpointError, match="spandrel"):
        load_restorer(other)
    assert isinstance(load_restorer("none"), IdentityRestorer)


def test_gray_crops_with_an_rgb_backbone():
    """A real backbone only takes RGB: gray crops go in as RGB and come back as their luma."""
    class RGBOnly(torch.nn.Module):
        def forward(self, x):
            assert x.shape[1] == 3, "backbone got a non-RGB input"
            return (x * torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)).clamp(0, 1)

    y = torch.rand(2, 1, 32, 32)
    out = restore_faces(y, None, restorer=RGBOnly(), strength=0.0)
    expected = 0.299 * y + 0.587 * 0.5 * y
    assert out.shape == y.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_wider_dtype_than_the_weights_is_refused():
    prior = ConvPrior(channels=3, size=32)
    prior.model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="wider"):
        restore_faces(torch.rand(1, 3, 32, 32), prior, strength=0.2, steps=2, dtype=torch.float32)


def test_backbone_estimate_is_what_restore_faces_starts_from():
    """f(y) resized to the prior's size; restore_faces(f(y), restorer=None) == restore_faces(y, restorer=f)."""
    prior = ConvPrior(size=32)
    y = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(4))

    def f(x):
        return (x * 0.8 + 0.1) ** 1.2

    est = backbone_estimate(y, f, prior.sample_size, batch_size=2)
    assert est.shape == (3, 3, 32, 32) and est.dtype == torch.float32
    y32 = F.interpolate(y, size=(32, 32), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    torch.testing.assert_close(est, f(y32).clamp(0, 1), atol=1e-6, rtol=0)
    kw = dict(strength=0.3, steps=4, seed=2, batch_size=2)
    crops = y[:, :, :32, :32]  # at the prior's own size the two paths are the same computation
    assert torch.equal(restore_faces(backbone_estimate(crops, f, 32), prior, **kw),
                       restore_faces(crops, prior, restorer=f, **kw))
    assert torch.equal(backbone_estimate(crops, None), crops)  # no backbone, no resize: the crops themselves
    assert backbone_estimate(y[:0], f, 32).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="NaN"):
        backbone_estimate(torch.full((1, 3, 8, 8), float("nan")), f)


def test_backbone_estimate_halves_chunks_on_oom_and_reports_progress():
    sizes, calls = [], []

    def picky(x):
        sizes.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x.flip(-1)

    y = torch.rand(5, 3, 16, 16)
    out = backbone_estimate(y, picky, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert torch.equal(out, y.flip(-1))
    assert sizes == [4, 2, 2, 1]
    assert calls[-1] == (3, 3)  # after the retry: 3 chunks of at most 2
    with pytest.raises(torch.OutOfMemoryError):
        backbone_estimate(y, lambda x: (_ for _ in ()).throw(torch.OutOfMemoryError("always")), batch_size=4)
