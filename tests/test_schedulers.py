"""Samplers as replaceable parts: presets, explicit timesteps, diffusers scheduler instances, per-face seeds.

Quality runs use the exact analytic prior (tests/analytic_prior.py): a correct sampler lands on the true face to
float precision, a wrong noise level / schedule / timestep handling lands elsewhere or leaves noise (< 45 dB).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from analytic_prior import AnalyticPrior, contrast_variants, degrade, linear_alphas_cumprod, nearest_index, psnr
from bfr_core.diffusion.samplers import SchedulerSampler, resolve_sampler
from bfr_core.diffusion.timesteps import PRESETS, SAMPLERS, denoising_timesteps, get_preset, official_timesteps
from bfr_core.restoration.difface import restore_faces
from test_sampler import ConvPrior

pytestmark = pytest.mark.usefixtures("one_thread")


def _cosine_alphas_cumprod() -> torch.Tensor:
    s = np.arange(1001) / 1000
    f = np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    return torch.from_numpy(np.clip(f[1:] / f[0], 1e-5, 1 - 1e-6))


def _schedulers():
    import diffusers as d

    return {
        "ddpm": lambda: d.DDPMScheduler(),  # ancestral, custom timesteps
        "euler": lambda: d.EulerDiscreteScheduler(),  # sigma space, custom timesteps
        "euler_ancestral": lambda: d.EulerAncestralDiscreteScheduler(),  # sigma space, tail of its own schedule
        "heun": lambda: d.HeunDiscreteScheduler(),  # 2nd order, two model calls per step
        "dpmsolver++": lambda: d.DPMSolverMultistepScheduler(),
        "dpmsolver++_sde": lambda: d.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"),
        "unipc": lambda: d.UniPCMultistepScheduler(),  # no custom timesteps: tail
        "ddim": lambda: d.DDIMScheduler(),  # no custom timesteps: tail
        "lcm": lambda: d.LCMScheduler(),
        "tcd": lambda: d.TCDScheduler(),
    }


SCHEDULERS = list(_schedulers())


@pytest.fixture(scope="module")
def degraded64(faces64) -> torch.Tensor:
    return torch.stack([degrade(faces64[i], seed=i) for i in range(4)])


@pytest.fixture(scope="module")
def face_set(faces64) -> torch.Tensor:
    return torch.cat([faces64, contrast_variants(faces64, (1.3, 0.5))])  # with contrast distractors


# ------------------------------------------------------------------------------------------ presets
def test_presets_registry():
    assert SAMPLERS[0] == "fast" and {"fast", "official", "ddim", "dpmsolver++"} <= set(PRESETS)
    assert get_preset("DPM++") is PRESETS["dpmsolver++"] and get_preset("dpmpp_2m").step == "dpmsolver++"
    fast = get_preset("fast")
    assert (fast.step, fast.steps, fast.eta) == ("ddim", 20, 0.5)
    assert denoising_timesteps(400, None, "fast") == list(range(400, 0, -20))
    with pytest.raises(ValueError, match="euler"):
        get_preset("euler")
    with pytest.raises(ValueError, match="ddim"):  # official takes its own step count
        resolve_sampler("official", linear_alphas_cumprod(), 400, steps=20)
    with pytest.raises(ValueError, match="multiple"):  # t_N = 401 is not on DifFace's respaced chain
        resolve_sampler("official", linear_alphas_cumprod(), 401)
    assert official_timesteps(t_start=200) == list(range(196, -1, -4))


def test_default_is_fast_20_ddim_steps():
    prior = ConvPrior()
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    a = restore_faces(y, prior, seed=4)
    assert torch.equal(a, restore_faces(y, prior, seed=4, sampler="ddim", steps=20, eta=0.5))
    assert torch.equal(a, restore_faces(y, prior, seed=4, sampler="fast", steps=20, eta=0.5))


# ------------------------------------------------------------------------------------------ timesteps=
def test_explicit_official_timesteps_equal_the_official_preset():
    prior = ConvPrior()
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    official = restore_faces(y, prior, seed=7, sampler="official")
    assert torch.equal(restore_faces(y, prior, seed=7, sampler="ddim", eta=0.5, timesteps=official_timesteps()),
                       official)


def _recording_prior() -> tuple[ConvPrior, list[int]]:
    """A ConvPrior that records the timestep of every model call."""
    prior, seen = ConvPrior(), []
    inner = prior.model

    def recording(x, t):
        seen.append(int(t[0]))
        return inner(x, t)

    prior.model = recording
    return prior, seen


def test_explicit_timesteps_are_honoured():
    prior, seen = _recording_prior()
    y = torch.rand(1, 3, 32, 32)
    for sampler in ("ddim", "dpmsolver++", "fast"):
        seen.clear()
        restore_faces(y, prior, strength=0.4, sampler=sampler, timesteps=[350, 200, 77, 3], seed=0)
        assert seen == [350, 200, 77, 3]
    with pytest.raises(ValueError, match="exceed"):
        restore_faces(y, prior, strength=0.3, timesteps=[350, 100])
    for bad in ([100, 200], [100, 100], [1000], [], [10.5]):
        with pytest.raises(ValueError):
            restore_faces(y, prior, strength=0.4, timesteps=bad)


# ------------------------------------------------------------------------------------------ diffusers
@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_instance_lands_on_the_true_face(faces64, face_set, degraded64, name):
    """Every scheduler is driven on the prior's own (here cosine) schedule, from t_N = 500: the exact prior's
    posterior then collapses onto the true face. The negative control — the same prior reporting its schedule
    wrongly (a linear-schedule denoiser) — must fail, so the test sees the schedule, the start and the timesteps."""
    import diffusers

    scheduler = _schedulers()[name]()
    config_before = dict(scheduler.config)
    cos = _cosine_alphas_cumprod()
    prior = AnalyticPrior(face_set, alphas_cumprod=cos)
    out = restore_faces(degraded64, prior, sampler=scheduler, strength=0.5, steps=20, seed=0)
    p = psnr(out, faces64[:4])
    print(f"{name}: PSNR {[round(float(v), 1) for v in p]}")
    assert (p >= 40).all(), p
    assert nearest_index(out, face_set).tolist() == [0, 1, 2, 3]
    assert dict(scheduler.config) == config_before  # the caller's instance is not touched
    assert not isinstance(scheduler, diffusers.DDIMScheduler) or scheduler.num_inference_steps is None
    wrong = AnalyticPrior(face_set, alphas_cumprod=cos, model_alphas_cumprod=linear_alphas_cumprod())
    bad = restore_faces(degraded64, wrong, sampler=_schedulers()[name](), strength=0.5, steps=20, seed=0)
    assert (psnr(bad, faces64[:4]) < 40).all()


@pytest.mark.parametrize("name,mode", [("ddpm", "timesteps"), ("euler", "timesteps"), ("heun", "timesteps"),
                                       ("dpmsolver++", "timesteps"), ("lcm", "timesteps"), ("ddim", "tail"),
                                       ("unipc", "tail"), ("euler_ancestral", "tail")])
def test_scheduler_timesteps_and_progress(name, mode):
    prior, seen = _recording_prior()
    plan = SchedulerSampler(_schedulers()[name](), prior.alphas_cumprod, 400, steps=10)
    assert plan.mode == mode
    calls = []
    restore_faces(torch.rand(3, 3, 32, 32), prior, strength=0.4, steps=10, sampler=_schedulers()[name](),
                  batch_size=2, progress=lambda d, t: calls.append((d, t)))
    n = plan.num_steps
    assert seen == plan.timesteps * 2 and calls == [(i, 2 * n) for i in range(1, 2 * n + 1)]
    if mode == "timesteps":  # our evenly spaced timesteps from t_N (Heun evaluates each inner one twice)
        assert sorted(set(plan.timesteps), reverse=True) == list(range(400, 0, -40))
    else:  # the scheduler's own spacing, its first 10 timesteps at or below t_N
        assert plan.timesteps[0] <= 400 and len(set(plan.timesteps)) >= 10
    if mode == "timesteps":
        custom = SchedulerSampler(_schedulers()[name](), prior.alphas_cumprod, 400, timesteps=[400, 250, 100])
        assert sorted(set(custom.timesteps), reverse=True) == [400, 250, 100]
    else:  # its own spacing would silently replace the timesteps asked for: refused
        with pytest.raises(ValueError, match="timesteps= cannot be honoured"):
            SchedulerSampler(_schedulers()[name](), prior.alphas_cumprod, 400, timesteps=[400, 250, 100])


def test_ddim_instance_equals_builtin_ddim_on_the_same_timesteps():
    """diffusers' DDIM (tail of its own 'leading' schedule, η 0.5 through step(eta=, generator=)) and the built-in
    DDIM on the same timesteps, started at the same noise level, draw the same noise: equal up to diffusers'
    float32 schedule."""
    from diffusers import DDIMScheduler

    prior = ConvPrior()
    y = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    sched = DDIMScheduler(clip_sample=True, set_alpha_to_one=True)
    plan = SchedulerSampler(sched, prior.alphas_cumprod, 400, steps=21)
    assert plan.mode == "tail" and plan.timesteps == list(range(400, -1, -20))  # set_timesteps(50), its tail
    a = restore_faces(y, prior, sampler=sched, steps=21, eta=0.5, seed=3)
    b = restore_faces(y, prior, sampler="ddim", timesteps=plan.timesteps, eta=0.5, seed=3)
    assert (a - b).abs().max() < 1e-4, (a - b).abs().max()
    assert (a - restore_faces(y, prior, sampler="ddim", timesteps=plan.timesteps, eta=0.5, seed=4)).abs().max() > 1e-2


def test_dpmsolver_instance_equals_builtin_dpmsolver():
    from diffusers import DPMSolverMultistepScheduler

    prior = ConvPrior()  # its x0 guesses lie in (−1, 1): the built-in's clipping is inactive
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    a = restore_faces(y, prior, sampler=DPMSolverMultistepScheduler(), strength=0.3, steps=8, seed=2)
    b = restore_faces(y, prior, sampler="dpmsolver++", strength=0.3, steps=8, seed=2)
    assert (a - b).abs().max() < 1e-4, (a - b).abs().max()


def test_guidance_reaches_scheduler_instances():
    from diffusers import EulerDiscreteScheduler

    prior = ConvPrior()
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    kw = dict(strength=0.3, steps=6, seed=1, sampler=EulerDiscreteScheduler())
    plain = restore_faces(y, prior, **kw)
    seen = []

    def zero(x_t, t, x0_pred, *, faces):
        assert x0_pred.min() >= -1 and x0_pred.max() <= 1 and x0_pred.shape == x_t.shape
        assert x_t.abs().max() < 5  # model space (scale_model_input), not Euler's sigma-space sample
        seen.append(t)
        return torch.zeros_like(x0_pred)

    assert torch.allclose(restore_faces(y, prior, guidance=zero, **kw), plain, atol=1e-6, rtol=0)
    assert seen == list(range(300, 0, -50))

    def to_gray(x_t, t, x0_pred, *, faces):
        return -0.25 * x0_pred

    guided = restore_faces(y, prior, guidance=to_gray, **kw)
    assert (guided - 0.5).abs().mean() < (plain - 0.5).abs().mean()


# ------------------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("sampler", ["fast", "ddpm"])
def test_per_face_seeds(sampler):
    def make():
        return _schedulers()["ddpm"]() if sampler == "ddpm" else sampler

    prior = ConvPrior()
    y = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    kw = dict(strength=0.3, steps=8)
    batch = restore_faces(y, prior, seeds=[5, 9, 2], batch_size=2, sampler=make(), **kw)
    for i, s in enumerate([5, 9, 2]):
        alone = restore_faces(y[i:i + 1], prior, seeds=[s], sampler=make(), **kw)
        assert torch.allclose(alone, batch[i:i + 1], atol=1e-6, rtol=0)
    as_tensor = restore_faces(y, prior, seeds=torch.tensor([5, 9, 2]), batch_size=3, sampler=make(), **kw)
    assert torch.allclose(batch, as_tensor, atol=1e-6, rtol=0)
    # seeds=None is seed + i, as before
    assert torch.equal(restore_faces(y, prior, seed=11, sampler=make(), **kw),
                       restore_faces(y, prior, seeds=[11, 12, 13], sampler=make(), **kw))
    assert (batch[1] - restore_faces(y, prior, seeds=[5, 8, 2], sampler=make(), **kw)[1]).abs().max() > 1e-3


def test_seeds_validation():
    prior = ConvPrior()
    y = torch.rand(2, 3, 32, 32)
    for bad in ([1], [1, 2, 3], [1, -2], torch.tensor([1.0, 2.0]), "ab"):
        with pytest.raises(ValueError):
            restore_faces(y, prior, strength=0.2, steps=2, seeds=bad)


def test_latent_priors_turn_scheduler_clipping_off():
    """DDPM/DDIM clip x0 to ±1 by default: right for pixels, ruinous for latents (unbounded)."""
    from diffusers import DDPMScheduler

    from bfr_core.diffusion.samplers import configure_scheduler

    acp = linear_alphas_cumprod()
    assert configure_scheduler(DDPMScheduler(), acp).config.clip_sample is True  # pixel prior: as the user set it
    assert configure_scheduler(DDPMScheduler(), acp, clip_sample=None).config.clip_sample is False


def test_eta_out_of_range_is_named():
    prior = ConvPrior()
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="eta must be in"):
            restore_faces(torch.rand(1, 3, 32, 32), prior, strength=0.4, eta=bad)
