"""Test stand-in for comfy.samplers (ComfyUI v0.3.64), written from its documented behaviour.

What the pack uses, with the real names and call signatures: the KSampler sampler/scheduler name lists,
`calculate_sigmas` (karras, exponential, simple, normal), `KSampler` (its `sigmas` for steps/denoise, including the
"denoise < 1: compute int(steps/denoise) sigmas and keep the last steps+1" rule), `sampler_object` (euler,
dpmpp_2m; "ddim" is euler as in ComfyUI) and `CFGGuider` (set_conds / set_cfg / predict_noise / sample).

The model a guider drives is a stand-in too (tests build it): ``model_patcher.model`` has
``apply_model(x, sigma, cond) -> denoised`` (k-diffusion x = x0 + σ·ε, cond the CONDITIONING's first tensor or
None), ``model_sampling`` (``sigmas``, ``sigma_min``/``sigma_max``, ``noise_scaling``) and ``latent_format``
(``process_in``/``process_out``); ``model_patcher.get_model_object(name)`` returns those attributes.
"""
from __future__ import annotations

import math

import torch

import comfy.model_management

KSAMPLER_NAMES = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
                  "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
                  "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
                  "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
                  "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
                  "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
                  "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
                  "sa_solver_pece"]
SAMPLER_NAMES = KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"]
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]


def _karras(n, sigma_min, sigma_max, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    s = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([s, s.new_zeros(1)])


def _exponential(n, sigma_min, sigma_max):
    s = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return torch.cat([s, s.new_zeros(1)])


def _simple(ms, steps):
    stride = len(ms.sigmas) / steps
    s = [float(ms.sigmas[-(1 + int(x * stride))]) for x in range(steps)] + [0.0]
    return torch.FloatTensor(s)


def _normal(ms, steps):
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    ts = torch.linspace(start, end, steps + 1)[:-1]
    return torch.FloatTensor([float(ms.sigma(t)) for t in ts] + [0.0])


def calculate_sigmas(model_sampling, scheduler_name: str, steps: int) -> torch.Tensor:
    if scheduler_name == "karras":
        return _karras(steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max))
    if scheduler_name == "exponential":
        return _exponential(steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max))
    if scheduler_name == "simple":
        return _simple(model_sampling, steps)
    if scheduler_name == "normal":
        return _normal(model_sampling, steps)
    if scheduler_name not in SCHEDULER_NAMES:
        raise ValueError(f"error invalid scheduler {scheduler_name}")
    raise NotImplementedError(f"stub: scheduler {scheduler_name}")


# ---------------------------------------------------------------------------------------------- samplers
def _euler(model, x, sigmas, extra_args, callback):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def _dpmpp_2m(model, x, sigmas, extra_args, callback):
    s_in = x.new_ones([x.shape[0]])
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * d
        old = denoised
    return x


class KSAMPLER:
    def __init__(self, sampler_function):
        self.sampler_function = sampler_function

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        ms = model_wrap.inner_model.model_sampling
        max_denoise = math.isclose(float(ms.sigma_max), float(sigmas[0]), rel_tol=1e-5) or \
            float(sigmas[0]) > float(ms.sigma_max)
        x = ms.noise_scaling(sigmas[0], noise, latent_image, max_denoise)
        total = len(sigmas) - 1
        k_cb = None if callback is None else (lambda d: callback(d["i"], d["denoised"], d["x"], total))
        return self.sampler_function(model_wrap, x, sigmas, extra_args, k_cb)


def sampler_object(name):
    if name in ("euler", "ddim"):
        return KSAMPLER(_euler)
    if name == "dpmpp_2m":
        return KSAMPLER(_dpmpp_2m)
    raise NotImplementedError(f"stub: sampler {name}")


class KSampler:
    SCHEDULERS = SCHEDULER_NAMES
    SAMPLERS = SAMPLER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}

    def __init__(self, model, steps, device, sampler=None, scheduler=None, denoise=None, model_options={}):
        self.model, self.device = model, device
        self.scheduler = scheduler if scheduler in self.SCHEDULERS else self.SCHEDULERS[0]
        self.sampler = sampler if sampler in self.SAMPLERS else self.SAMPLERS[0]
        self.set_steps(steps, denoise)
        self.denoise = denoise

    def calculate_sigmas(self, steps):
        discard = self.sampler in self.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sigmas = calculate_sigmas(self.model.get_model_object("model_sampling"), self.scheduler,
                                  steps + 1 if discard else steps)
        return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas

    def set_steps(self, steps, denoise=None):
        self.steps = steps
        if denoise is None or denoise > 0.9999:
            self.sigmas = self.calculate_sigmas(steps).to(self.device)
        elif denoise <= 0.0:
            self.sigmas = torch.FloatTensor([])
        else:
            self.sigmas = self.calculate_sigmas(int(steps / denoise)).to(self.device)[-(steps + 1):]


# ---------------------------------------------------------------------------------------------- guider
def _cond_tensor(cond):
    return None if cond is None else cond[0][0]


PREPARED: list = []  # per sampling run: the additional models loaded with the MODEL


class CFGGuider:
    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.model_options = getattr(model_patcher, "model_options", {})
        self.original_conds = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative):
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_cfg(self, cfg):
        self.cfg = cfg

    def inner_set_conds(self, conds):
        for k in conds:
            self.original_conds[k] = conds[k]

    def __call__(self, *args, **kwargs):
        return self.outer_predict_noise(*args, **kwargs)

    def outer_predict_noise(self, x, timestep, model_options={}, seed=None):
        return self.predict_noise(x, timestep, model_options, seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        model = self.inner_model
        cond = model.apply_model(x, timestep, _cond_tensor(self.conds.get("positive")))
        if math.isclose(self.cfg, 1.0):
            return cond
        uncond = model.apply_model(x, timestep, _cond_tensor(self.conds.get("negative")))
        return uncond + (cond - uncond) * self.cfg

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:
            latent_image = self.inner_model.latent_format.process_in(latent_image)
        extra_args = {"model_options": dict(self.model_options), "seed": seed}
        samples = sampler.sample(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.inner_model.latent_format.process_out(samples.to(torch.float32))

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                     seed=None):
        self.inner_model = self.model_patcher.model
        # as comfy.sampler_helpers.prepare_sampling: the MODEL's additional models are loaded together with it
        extra = list(getattr(self.model_patcher, "get_nested_additional_models", lambda: [])())
        if extra:
            comfy.model_management.load_models_gpu(extra)
        PREPARED.append(extra)
        device = getattr(self.model_patcher, "load_device", torch.device("cpu"))
        try:
            return self.inner_sample(noise.to(device), latent_image.to(device), device, sampler, sigmas.to(device),
                                     denoise_mask, callback, disable_pbar, seed)
        finally:
            del self.inner_model

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        self.conds = {k: list(v) for k, v in self.original_conds.items()}
        try:
            return self.outer_sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            del self.conds
