"""What a diffusion prior is to the sampler: ``encode`` an image into the space the diffusion runs in,
``denoise`` there, ``decode`` back.

The sampler (`sampling`) only ever calls the three methods of a `Prior`:

* ``encode(images) -> latents``: images [n, C, S, S] float32 in [0, 1] (C = ``image_channels``, S =
  ``sample_size``) → the clean latents x0 the diffusion starts from (float32).
* ``denoise(latents_t, t, cond) -> prediction``: latents_t [n, c, h, w] in the prior's ``dtype``, t a LongTensor
  [n] of integer training timesteps 0 … T−1, ``cond`` the caller's conditioning (None for unconditional priors)
  → [n, c or 2c, h, w], the model's prediction in its ``prediction_type`` ("epsilon", "sample" or
  "v_prediction") in the first c channels (extra channels = learned variance, ignored).
* ``decode(latents) -> images``: float32 latents → images in [0, 1] (not clamped; the caller clamps).

plus ``alphas_cumprod`` (float64 [T], the training schedule), ``sample_size`` (S, the image side the prior
restores at), ``image_channels`` (1 or 3), ``prediction_type``, and ``clip_sample`` (the x0 clipping range of the
built-in samplers: 1.0 for pixel priors, whose data is [−1, 1]; None = no clipping, latent priors).

Two kinds share the sampler and the guidance hook:

* pixel priors: identity encode/decode, ``encode(x) = x·2 − 1``, ``decode(z) = (z + 1)/2``. `DiffusionPrior`
  (a loaded network) is one; any older `DenoiserPrior` object (``.model(x_t, t)``, ``.alphas_cumprod``,
  ``.sample_size``, ``.in_channels``, optional ``.prediction_type``) is wrapped in a `PixelPrior` by `as_prior`.
* latent priors: `LatentPrior`, a denoiser over the latents of a VAE with AutoencoderKL's interface.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..models.holder import ModelHolder
from ..utils import device_dtype_of

__all__ = ["DenoiserPrior", "DiffusersUNetAdapter", "DiffusionPrior", "LatentPrior", "PixelPrior", "Prior",
           "PriorLike", "as_prior"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@runtime_checkable
class DenoiserPrior(Protocol):
    """The original pixel-prior interface (still accepted everywhere; `as_prior` wraps it in a `PixelPrior`).

    ``model(x_t, t)``: x_t [B,C,H,W] in model space ([−1, 1] data), t LongTensor [B] of integer training
    timesteps 0 … T−1 → [B, C or 2C, H, W], ε in the first C channels (extra channels = learned variance,
    ignored here). ``alphas_cumprod``: float64 [T]. ``sample_size``: S. ``in_channels``: C.
    Optional: ``prediction_type`` ("epsilon" when absent; "sample" and "v_prediction" are converted to ε),
    ``device``/``dtype`` (else taken from ``model``'s parameters when it is an ``nn.Module``, else crops' device
    and float32).
    """

    model: Callable[[Tensor, Tensor], Tensor]
    alphas_cumprod: Tensor
    sample_size: int
    in_channels: int
    learned_variance: bool


@runtime_checkable
class Prior(Protocol):
    """What the sampler calls (module docstring)."""

    alphas_cumprod: Tensor
    sample_size: int
    image_channels: int
    prediction_type: str
    clip_sample: float | None

    def encode(self, images: Tensor) -> Tensor: ...

    def denoise(self, latents_t: Tensor, t: Tensor, cond: Any = None) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


# Kept for older imports: the name the sampler used for "any prior".
PriorLike = DenoiserPrior


def _unwrap(out: Any) -> Tensor:
    """A model's output tensor (diffusers returns objects with ``.sample``; tuples give their first item)."""
    if isinstance(out, Tensor):
        return out
    return out.sample if hasattr(out, "sample") else out[0]


def _pixel_encode(images: Tensor) -> Tensor:
    return images * 2.0 - 1.0


def _pixel_decode(latents: Tensor) -> Tensor:
    return (latents + 1.0) * 0.5


class PixelPrior:
    """A `Prior` view of a `DenoiserPrior` object: identity encode/decode (x·2 − 1, (z + 1)/2), ``denoise`` =
    ``prior.model(x_t, t)`` (``cond`` ignored). The sampler takes device and dtype from the wrapped object."""

    clip_sample = 1.0

    def __init__(self, prior: DenoiserPrior):
        self.prior = prior
        self.model = prior.model
        self.alphas_cumprod = prior.alphas_cumprod
        self.sample_size = int(prior.sample_size)
        self.image_channels = int(prior.in_channels)
        self.prediction_type = str(getattr(prior, "prediction_type", "epsilon") or "epsilon")

    def encode(self, images: Tensor) -> Tensor:
        return _pixel_encode(images)

    def denoise(self, latents_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return _unwrap(self.prior.model(latents_t, t))

    def decode(self, latents: Tensor) -> Tensor:
        return _pixel_decode(latents)


def as_prior(prior: Any) -> Prior:
    """``prior`` itself when it has encode/denoise/decode, else a `PixelPrior` around a `DenoiserPrior`."""
    if all(callable(getattr(prior, m, None)) for m in ("encode", "denoise", "decode")):
        return prior
    if not all(hasattr(prior, a) for a in ("model", "alphas_cumprod", "sample_size", "in_channels")):
        raise ValueError(f"{type(prior).__name__} is not a diffusion prior: it needs encode/denoise/decode, or "
                         f"model/alphas_cumprod/sample_size/in_channels")
    return PixelPrior(prior)


class DiffusersUNetAdapter(nn.Module):
    """`forward(x, t)` → `UNet2DModel(x, t).sample`, with dtype handling like `IDDPMUNet`."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def forward(self, x: Tensor, t: Tensor | int | float) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.unet(x.to(self.dtype), t).sample.to(x.dtype).contiguous()


@dataclass
class DiffusionPrior(ModelHolder):
    """A loaded pixel prior (a `Prior` and a `DenoiserPrior`). `alphas_cumprod` stays float64 on the CPU."""

    model: nn.Module = field(repr=False)
    alphas_cumprod: Tensor = field(repr=False)
    sample_size: int
    in_channels: int
    out_channels: int
    learned_variance: bool
    prediction_type: str = "epsilon"
    kind: str = "iddpm"  # "iddpm" (DifFace layout) or "diffusers"
    source: str = ""
    config: Any = field(default=None, repr=False)

    clip_sample = 1.0  # class attribute, not a field: pixel data lives in [−1, 1]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def image_channels(self) -> int:
        return int(self.in_channels)

    def encode(self, images: Tensor) -> Tensor:
        """Identity encoding: [0, 1] → model space [−1, 1]."""
        return _pixel_encode(images)

    def denoise(self, latents_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """``model(x_t, t)`` (unconditional: ``cond`` is ignored)."""
        return _unwrap(self.model(latents_t, t))

    def decode(self, latents: Tensor) -> Tensor:
        """Model space → [0, 1] (not clamped)."""
        return _pixel_decode(latents)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "DiffusionPrior":
        nn.Module.to(self.model, device=device, dtype=dtype)
        return self


class LatentPrior:
    """A latent diffusion prior: ``denoiser`` over the latents of ``vae`` (AutoencoderKL's interface).

    ``encode(x)`` = (``vae.encode(2x − 1).latent_dist.mean`` − ``shift_factor``) · ``scaling_factor`` (the
    posterior's mean/mode, deterministic); ``decode(z)`` = (``vae.decode(z / scaling_factor + shift_factor).sample``
    + 1)/2. The VAE runs in its own device/dtype, without gradients; its outputs come back as float32.
    ``denoiser(z_t, t)`` — or ``denoiser(z_t, t, **cond)`` for a dict ``cond``, ``denoiser(z_t, t, cond)`` for any
    other non-None ``cond`` — returns a tensor or an object with ``.sample`` (diffusers' UNet2DConditionModel:
    ``cond = {"encoder_hidden_states": ...}``) in ``prediction_type``.
    ``latent_size``/``latent_channels``: the latent grid the denoiser works on; ``sample_size`` (the image side)
    defaults to ``latent_size`` × the VAE's downscale factor (2^(len(vae.config.block_out_channels) − 1), 8 when the
    VAE has no such config). ``clip_sample``: x0 clipping range of the built-in samplers in latent space (None: no
    clipping, the right choice for real VAEs). ``vae_batch_size``: images per VAE call (None: the whole chunk).
    ``denoiser=None`` makes a codec: encode/decode only, for a `samplers.Sampler` that brings its own model (the
    ComfyUI nodes: the user's MODEL through ComfyUI's samplers); ``denoise`` then raises ValueError.
    """

    def __init__(self, denoiser: Callable[..., Any] | None, vae: Any, alphas_cumprod: Tensor, latent_size: int,
                 latent_channels: int, scaling_factor: float = 1.0, prediction_type: str = "epsilon", *,
                 shift_factor: float = 0.0, sample_size: int | None = None, image_channels: int = 3,
                 clip_sample: float | None = None, vae_batch_size: int | None = None):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.model = denoiser  # `model`: where the sampler looks for the denoiser's device/dtype
        self.vae = vae
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        self.latent_size, self.latent_channels = int(latent_size), int(latent_channels)
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor)
        self.prediction_type = prediction_type
        self.image_channels = int(image_channels)
        self.clip_sample = clip_sample
        if sample_size is None:
            blocks = getattr(getattr(vae, "config", None), "block_out_channels", None)
            factor = 2 ** (len(blocks) - 1) if blocks else 8
            sample_size = self.latent_size * factor
        self.sample_size = int(sample_size)
        if vae_batch_size is not None and int(vae_batch_size) < 1:
            raise ValueError(f"vae_batch_size must be >= 1 or None, got {vae_batch_size}")
        self.vae_batch_size = None if vae_batch_size is None else int(vae_batch_size)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def _chunks(self, x: Tensor) -> list[Tensor]:
        """``x`` split along the batch into pieces of ``vae_batch_size`` (the VAE's activations dominate memory)."""
        n = self.vae_batch_size or max(1, x.shape[0])
        return list(x.split(n)) if x.shape[0] else [x]

    def _vae_device_dtype(self, like: Tensor) -> tuple[torch.device, torch.dtype]:
        dev, dt = device_dtype_of(self.vae)
        return dev or like.device, dt or torch.float32

    def encode(self, images: Tensor) -> Tensor:
        dev, dt = self._vae_device_dtype(images)
        parts = []
        with torch.no_grad():
            for chunk in self._chunks(images):
                dist = self.vae.encode(_pixel_encode(chunk).to(device=dev, dtype=dt)).latent_dist
                parts.append((dist.mean if hasattr(dist, "mean") else dist.mode()).to(images.device, torch.float32))
        z = torch.cat(parts)
        if self.shift_factor:
            z = z - self.shift_factor
        return z * self.scaling_factor

    def denoise(self, latents_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if self.model is None:
            raise ValueError("this LatentPrior is a codec only (denoiser=None): use it with a sampler that brings its "
                             "own model (a `Sampler` object, e.g. ComfyUI's through the BFR nodes)")
        if cond is None:
            return _unwrap(self.model(latents_t, t))
        if isinstance(cond, dict):
            return _unwrap(self.model(latents_t, t, **cond))
        return _unwrap(self.model(latents_t, t, cond))

    def decode(self, latents: Tensor, *, grad: bool = False) -> Tensor:
        """Latents → images in [0, 1] (float32, not clamped). ``grad=True`` keeps the graph (latent identity
        guidance differentiates the recognizer's loss through the decoder)."""
        dev, dt = self._vae_device_dtype(latents)
        z = latents / self.scaling_factor
        if self.shift_factor:
            z = z + self.shift_factor
        with torch.set_grad_enabled(grad):
            parts = [_unwrap(self.vae.decode(c.to(device=dev, dtype=dt))).to(latents.device, torch.float32)
                     for c in self._chunks(z)]
        return _pixel_decode(torch.cat(parts))
