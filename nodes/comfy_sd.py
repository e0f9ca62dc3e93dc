"""Adapters over ComfyUI's MODEL, VAE and samplers for the SD/SDXL nodes (`sd_restore`). ComfyUI is imported lazily.

* `ComfyVAECodec`: ComfyUI's VAE with AutoencoderKL's interface, in the MODEL's own latent space (the
  ``latent_format``'s process_in/out), so a `LatentPrior` without a denoiser (a codec) encodes the backbone estimates
  and decodes the result — and identity guidance decodes each x0 prediction with gradients. ComfyUI runs nodes under
  ``torch.inference_mode()`` and loads weights there: such weights cannot be saved for backward, so the gradient
  path decodes with a copy of the VAE made outside inference mode (once per node run, only when guidance needs it).
* the identity guider (`new_guider`): a ``comfy.samplers.CFGGuider`` subclass whose ``predict_noise`` (the CFG-combined denoised) gets the
  identity correction through `bfr_core.diffusion.kdiffusion.KDiffusionGuidance`. Without a hook it is exactly a
  CFGGuider. The BFR Identity Guider node hands it to SamplerCustomAdvanced; the restore node drives it itself.
* `ComfySampler`: the library's `Sampler` protocol over a guider and ``comfy.samplers.sampler_object`` with
  KSampler's sigmas (``comfy.samplers.KSampler(...).sigmas``: steps, scheduler and denoise exactly as KSampler).
  ``restore_faces`` gives it the clean latents and each face's start noise (the per-face generators); CFGGuider
  loads the MODEL like the core samplers (``prepare_sampling`` → ``load_models_gpu``).
"""
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import Tensor

from ..bfr_core.diffusion.kdiffusion import KDiffusionGuidance, alphas_cumprod_from_sigmas
from ..bfr_core.diffusion.priors import LatentPrior
from ..bfr_core.identity.settings import IdentitySettings
from ..bfr_core.restoration.restorer import FaceRestorer
from ..bfr_core.utils import resize_antialiased
from ..bfr_core.utils.layout import split_alpha
from .comfy_glue import check_interrupted, to_bchw, to_bhwc
from .memory import models_loaded
from .restore import crop_seeds, run_restore

__all__ = ["ComfySampler", "ComfyVAECodec", "codec_prior", "make_identity_guider", "new_guider",
           "restore_crops_with_model", "with_guidance_models"]


def _model_object(model, name: str):
    getter = getattr(model, "get_model_object", None)
    if getter is None:
        raise ValueError(f"'model' must be a ComfyUI MODEL (from a checkpoint loader), got {type(model).__name__}")
    return getter(name)


def model_alphas_cumprod(model) -> Tensor:
    """The MODEL's ā (float64, CPU) from its k-diffusion σ table; SD1.5/SD2.x/SDXL-type (discrete VP) models only.

    The kind is told by isinstance: ComfyUI names every MODEL's sampling class "ModelSampling" (model_base builds it
    on the fly). EPS and its subclasses (v-prediction, EDM, x0) add noise as x0 + σ·ε, which the guidance bridge
    assumes; flow models (SD3, Flux: CONST) add it as (1 − σ)·x0 + σ·ε and are refused."""
    import comfy.model_sampling

    ms = _model_object(model, "model_sampling")
    sigmas = getattr(ms, "sigmas", None)
    if (sigmas is None or torch.as_tensor(sigmas).ndim != 1 or len(sigmas) < 2
            or not isinstance(ms, comfy.model_sampling.EPS)):
        raise ValueError(f"this MODEL's sampling ({type(ms).__name__}) is not a discrete VP schedule: the BFR SD nodes "
                         f"work with SD1.5, SD2.x and SDXL-type checkpoints")
    return alphas_cumprod_from_sigmas(sigmas)


class ComfyVAECodec:
    """ComfyUI's VAE as an AutoencoderKL-like object in the MODEL's latent space (module docstring).

    ``encode(x)``: x [B, 3, H, W] in [−1, 1] → ``.latent_dist.mean`` = process_in(VAE latents) (ComfyUI's VAE
    encodes the posterior's mode). ``decode(z)``: model-space latents → ``.sample`` in [−1, 1]; with gradients
    enabled it runs the VAE's decoder in the autograd graph (identity guidance), else ComfyUI's own ``vae.decode``
    (memory management, tiled fallback on out-of-memory)."""

    dtype = torch.float32  # LatentPrior hands float32 to us; the VAE's own dtype is applied here

    def __init__(self, vae, latent_format):
        if not callable(getattr(vae, "encode", None)) or not hasattr(vae, "first_stage_model"):
            raise ValueError(f"'vae' must be a ComfyUI VAE (from a checkpoint or VAE loader), got {type(vae).__name__}")
        self.vae, self.latent_format = vae, latent_format
        self.device = getattr(vae, "device", None)

    def encode(self, x: Tensor):
        pixels = ((x.float() + 1.0) * 0.5).clamp(0, 1).movedim(1, -1)
        raw = self.vae.encode(pixels[..., :3])
        z = self.latent_format.process_in(raw.float())
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=z))

    def decode(self, z: Tensor):
        if torch.is_grad_enabled():
            return SimpleNamespace(sample=self._decode_with_grad(z))
        raw = self.latent_format.process_out(z.float())
        img = self.vae.decode(raw)  # [B, H, W, C] in [0, 1]
        return SimpleNamespace(sample=img.movedim(-1, 1).float().to(z.device) * 2.0 - 1.0)

    def _decode_with_grad(self, z: Tensor) -> Tensor:
        import comfy.model_management as mm

        vae = self.vae
        with torch.inference_mode(False):
            # During sampling the VAE was loaded with the MODEL (`with_guidance_models`); loading it again here would
            # let ComfyUI free memory for it by unloading the UNet in the middle of sampling.
            if vae.patcher not in mm.loaded_models():
                mm.load_models_gpu([vae.patcher], memory_required=3 * z.shape[0] * vae.memory_used_decode(
                    (1, *z.shape[1:]), vae.vae_dtype))
            model = self._grad_decoder()
            raw = self.latent_format.process_out(z)
            out = model.decode(raw.to(device=vae.device, dtype=vae.vae_dtype))
        return out.float().to(z.device)

    def _grad_decoder(self):
        """The VAE's first stage model, or a copy of it outside inference mode when its weights are inference
        tensors (they cannot be saved for backward). The copy is kept with the VAE (one per VAE, not one per run) and
        follows the original's device, so ComfyUI's unloading of the VAE also moves the copy off the GPU."""
        fsm = self.vae.first_stage_model
        if not any(p.is_inference() for p in fsm.parameters()):
            return fsm
        cached = getattr(self.vae, _GRAD_COPY_ATTR, None)
        if cached is None or cached[0] is not fsm:
            cached = (fsm, copy.deepcopy(fsm).requires_grad_(False))
            setattr(self.vae, _GRAD_COPY_ATTR, cached)
        device = next(fsm.parameters()).device
        return cached[1].to(device)


_GRAD_COPY_ATTR = "_bfr_grad_decoder"  # on ComfyUI's VAE object: (its first stage model, the grad-able copy)


def with_guidance_models(model, vae, recognizer):
    """A clone of the MODEL patcher that loads the VAE and the recognizer with the UNet (ComfyUI's
    ``prepare_sampling`` loads a model's additional models together with it), so guidance never has to load them in
    the middle of sampling, where ComfyUI could unload the UNet to make room."""
    from .memory import patcher_of

    patchers = [p for p in (getattr(vae, "patcher", None), patcher_of(recognizer)) if p is not None]
    if not patchers or not callable(getattr(model, "clone", None)):
        return model
    model = model.clone()
    model.set_additional_models("bfr_identity", patchers)
    return model


def _downscale(vae) -> int:
    """Pixels per latent position (SD/SDXL VAEs: 8)."""
    ratio = getattr(vae, "downscale_ratio", 8)
    return int(ratio) if isinstance(ratio, int) else 8


def codec_prior(model, vae, size: int) -> LatentPrior:
    """A `LatentPrior` codec (no denoiser) over ComfyUI's VAE in the MODEL's latent space, restoring at ``size``."""
    latent_format = _model_object(model, "latent_format")
    codec = ComfyVAECodec(vae, latent_format)
    ratio = _downscale(vae)
    if int(size) % ratio:
        raise ValueError(f"size {size} is not a multiple of the VAE's downscale factor {ratio}")
    channels = int(getattr(vae, "latent_channels", getattr(latent_format, "latent_channels", 4)))
    return LatentPrior(None, codec, model_alphas_cumprod(model), latent_size=int(size) // ratio,
                       latent_channels=channels, sample_size=int(size))


def _guider_class():
    import comfy.samplers

    class _IdentityGuider(comfy.samplers.CFGGuider):
        """CFGGuider + identity guidance on the CFG-combined denoised (`KDiffusionGuidance`).

        ``settings`` (`IdentitySettings`) and ``vae`` make the hook at ``sample`` time for the latents' size;
        ``target``: [F, 3, H, W] in [0, 1] faces (F = the latent batch, or 1) whose identity to keep (None: the
        settings' reference). ``bridge``: a ready `KDiffusionGuidance` instead (the restore node's)."""

        settings: IdentitySettings | None = None
        vae: Any = None
        downscale: int = 8
        target: Tensor | None = None
        bridge: KDiffusionGuidance | None = None
        faces: Tensor | None = None

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            denoised = super().predict_noise(x, timestep, model_options, seed)
            if self.bridge is None:
                return denoised
            check_interrupted()
            return self.bridge(x, timestep, denoised, self.faces)

        def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
            if self.settings is not None:
                self.bridge, self.faces = self._bridge_for(latent_image), torch.arange(latent_image.shape[0])
            try:  # *args/**kwargs: whatever else this ComfyUI's CFGGuider.sample takes, passed on unchanged
                return super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs)
            finally:
                if self.settings is not None:
                    self.bridge = None  # per run: the hook holds this batch's targets

        def _bridge_for(self, latent_image: Tensor) -> KDiffusionGuidance:
            n, _, h, w = latent_image.shape
            if h != w:
                raise ValueError(f"BFR Identity Guider works on square latents of aligned face crops, got {h}x{w}")
            codec = codec_prior(self.model_patcher, self.vae, h * self.downscale)
            acp = codec.alphas_cumprod
            side = int(codec.sample_size)
            if self.target is None:  # reference photos only: nothing per face to prepare
                if self.settings.reference is None or self.settings.fidelity > 0:
                    raise ValueError("BFR Identity Guider: connect 'target' (the faces whose identity to keep) or give "
                                     "BFR Identity Guidance reference photos (fidelity > 0 needs 'target' too)")
                faces = torch.zeros(n, 3, side, side)
            else:
                faces = self.target
                if faces.shape[0] not in (1, n):
                    raise ValueError(f"'target' has {faces.shape[0]} faces for {n} latents: give one per latent (or "
                                     f"one for all)")
                faces = faces.expand(n, -1, -1, -1) if faces.shape[0] == 1 else faces
                faces = resize_antialiased(faces.float(), (side, side)).clamp(0, 1)
            with models_loaded(self.settings.recognizer):
                hook = self.settings.build(faces, acp, codec).encode_anchors((h, w))  # no VAE encode mid-sampling
                return KDiffusionGuidance(hook, acp)

    return _IdentityGuider


def _check_guidance(guidance) -> None:
    # duck-typed: the settings may come from another import of the pack's library (tests, reloads)
    if not (callable(getattr(guidance, "build", None)) and hasattr(guidance, "recognizer")):
        raise ValueError(f"'guidance' must come from BFR Identity Guidance, got {type(guidance).__name__}")


def new_guider(model, positive, negative, cfg: float):
    """A fresh `IdentityGuider` (a CFGGuider subclass) with the conditioning and scale set."""
    guider = _guider_class()(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(float(cfg))
    return guider


def make_identity_guider(model, positive, negative, vae, guidance: IdentitySettings, cfg: float,
                         target: Tensor | None = None):
    """The BFR Identity Guider node: a GUIDER for SamplerCustomAdvanced."""
    _check_guidance(guidance)
    if target is None and guidance.reference is None:
        raise ValueError("BFR Identity Guider: connect 'target' (the faces whose identity to keep, e.g. the aligned "
                         "crops or the backbone's estimate) or give BFR Identity Guidance reference photos")
    codec_prior(model, vae, 512)  # a MODEL or VAE of the wrong kind fails here, not at sampling
    guider = new_guider(with_guidance_models(model, vae, guidance.recognizer), positive, negative, cfg)
    guider.settings, guider.vae, guider.downscale = guidance, vae, _downscale(vae)
    guider.target = None if target is None else split_alpha(to_bchw(target))[0].cpu()
    return guider


class ComfySampler:
    """The library's `Sampler` over ComfyUI: a guider (CFG + optional identity guidance) and a ComfyUI sampler on
    KSampler's sigmas for steps/scheduler/denoise (module docstring)."""

    def __init__(self, model, positive, negative, cfg: float, sampler_name: str, scheduler: str, steps: int,
                 denoise: float, seed: int = 0, vae=None):
        import comfy.samplers

        if sampler_name not in comfy.samplers.KSampler.SAMPLERS:
            raise ValueError(f"unknown sampler {sampler_name!r}; expected one of ComfyUI's KSampler samplers")
        if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; expected one of ComfyUI's KSampler schedulers")
        self.model, self.positive, self.negative, self.cfg = model, positive, negative, float(cfg)
        self.sampler_name, self.seed, self.vae = sampler_name, int(seed), vae
        ks = comfy.samplers.KSampler(model, steps=int(steps), device=torch.device("cpu"), sampler=sampler_name,
                                     scheduler=scheduler, denoise=float(denoise))
        self.sigmas = ks.sigmas.float().cpu()
        self.num_steps = max(0, len(self.sigmas) - 1)
        self.latent_format = _model_object(model, "latent_format")

    def run(self, denoise: Any, x0: Tensor, acp: Tensor, noise: Any, callback: Callable[[int], None] | None = None
            ) -> Tensor:
        import comfy.samplers

        eps = noise.draw()  # each face's start noise from its own generator
        if self.num_steps == 0:
            return x0
        hook = getattr(denoise, "guidance", None)
        model = self.model if hook is None else with_guidance_models(self.model, self.vae,
                                                                      getattr(hook, "recognizer", None))
        guider = new_guider(model, self.positive, self.negative, self.cfg)
        if hook is not None:
            if callable(getattr(hook, "encode_anchors", None)):  # the VAE encode before sampling, not during it
                hook.encode_anchors(tuple(x0.shape[-2:]))
            guider.bridge, guider.faces = KDiffusionGuidance(hook, acp), denoise.faces
        cb = None if callback is None else (lambda step, _x0, _x, _total: callback(step))
        raw = self.latent_format.process_out(x0.float())
        out = guider.sample(eps, raw, comfy.samplers.sampler_object(self.sampler_name), self.sigmas, callback=cb,
                            disable_pbar=True, seed=self.seed)
        return self.latent_format.process_in(out.float()).to(x0.device)


def restore_crops_with_model(crops, model, vae, positive, negative, *, seed: int, steps: int, cfg: float,
                             sampler_name: str, scheduler: str, denoise: float, size: int, color_fix: str,
                             batch_size: int, restorer=None, guidance=None, faces=None) -> Tensor:
    """The BFR Restore Crops with SD/SDXL Model node: crops [B, H, W, C] → restored crops, same shape."""
    rgb, _ = split_alpha(to_bchw(crops))
    if guidance is not None:
        _check_guidance(guidance)
    seeds = crop_seeds(faces, rgb.shape[0], seed)
    prior = codec_prior(model, vae, size)
    sampler = ComfySampler(model, positive, negative, cfg, sampler_name, scheduler, steps, denoise, seed, vae=vae)
    # strength > 0 only selects "diffuse": ComfySampler's sigmas (KSampler's denoise) decide where sampling starts
    strength = 1.0 if sampler.num_steps > 0 else 0.0
    face_restorer = FaceRestorer(prior, restorer, strength=strength, sampler=sampler, identity=guidance,
                                 batch_size=batch_size, color_fix=color_fix)
    out = run_restore(face_restorer, rgb, seed, seeds)  # progress, cancel, backbone/recognizer on the device
    return to_bhwc(out)
