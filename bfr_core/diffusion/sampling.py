"""The core loop: clean start latents x0 → noised to t_N → denoised by a prior with a sampler → latents.

`sample_latents` knows nothing about backbones, crops or images: it takes the prior's start latents (what
``prior.encode`` made of the backbone estimates), a resolved sampler (`samplers.resolve_sampler`), one CPU
generator per face, and returns the denoised latents for ``prior.decode``.

Model call, prediction types
----------------------------
``prior.denoise(x_t.to(model_dtype), t, cond)`` runs under ``torch.no_grad()`` (and ``torch.autocast`` when an
``autocast_dtype`` is given); its first c channels are taken (extra channels = learned variance) and converted to
ε in float32: "epsilon" as is, "sample" (x0) → (x_t − sqrt(ā)·x0)/sqrt(1 − ā), "v_prediction" → sqrt(ā)·v +
sqrt(1 − ā)·x_t, with the prior's float64 ā at the integer timestep t. Sampler math and noise are float32.

Guidance hook
-------------
``guidance(x_t, t, x0_pred, faces=idx) -> c``: x_t [n, c, h, w] float32 in model space (pixel priors: [−1, 1]
images; latent priors: the prior's latents — the hook then works in latent space), t the integer training
timestep, x0_pred the x0 prediction clipped to the prior's ``clip_sample`` range (pixel priors: [−1, 1]; None: not
clipped), float32, detached; ``faces`` a CPU LongTensor of the chunk's face indices into the caller's batch (so
per-face references/masks can be picked). It is called under ``torch.enable_grad()`` once per model evaluation,
before the sampler's step; differentiating (e.g. w.r.t. a ``requires_grad_`` copy of x0_pred) is the hook's own
business. The correction c (same shape) is added to the model's x0 prediction before clipping, and the sampler
continues as if the model had predicted it: every sampler receives ε − sqrt(ā_t/(1 − ā_t))·c (so x0 =
x0_raw + c, then clipped), DPM-Solver++ uses that clipped x0. c = 0 is exactly "no guidance". Per step, DDIM (η = 0)
moves x_{t−1} by [sqrt(ā_prev) − sqrt((1 − ā_prev − σ²)·ā_t/(1 − ā_t))]·c, i.e. classifier-guidance scaling: the
total effect is roughly independent of ``steps``; the last step (to ā = 1) applies c in full.

Noise
-----
Face k of a chunk draws all its noise from ``generators[k]`` (CPU, float32, moved to the model's device): first ε
for x_N (shape [c, h, w]), then whatever its sampler draws (built-in DDIM with η > 0: one draw per step; a
diffusers scheduler: its ``step(..., generator=...)`` draws). So a face's result does not depend on its batch
neighbours, on chunking or OOM retries, and is the same on any device up to the model's own numerics. On a CUDA
device the built-in samplers' draws are made one step ahead in background threads (`samplers.Noise`; same values),
so drawing a large batch's noise on the CPU overlaps the UNet instead of stalling the GPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from ..utils import device_dtype_of
from .priors import PREDICTION_TYPES, Prior
from .samplers import Noise, Sampler



class Guidance(Protocol):
    """Per-step x0 correction; see the module docstring ("Guidance hook") for exact semantics."""

    def __call__(self, x_t: Tensor, t: int, x0_pred: Tensor, *, faces: Tensor) -> Tensor: ...


__all__ = ["Guidance", "ModelDenoiser", "model_device_dtype", "sample_latents", "slice_cond"]


def model_device_dtype(prior: Any, dtype: torch.dtype | None,
                       fallback_device: torch.device) -> tuple[torch.device, torch.dtype, torch.dtype | None]:
    """(device, model dtype, autocast dtype) for running ``prior``.

    ``dtype=None``: the dtype of the prior's parameters (float32 for parameter-free callables). fp16/bf16 on wider
    weights runs the weights' dtype under ``torch.autocast``; a dtype wider than the weights is a ValueError.
    ``prior`` is the caller's object (its own ``device``/``dtype``, else its ``model``'s parameters decide).
    """
    p_dev, p_dtype = device_dtype_of(prior)
    m_dev, m_dtype = device_dtype_of(getattr(prior, "model", None))
    device = p_dev or m_dev or fallback_device
    param_dtype = p_dtype or m_dtype
    if dtype is None:
        return device, param_dtype or torch.float32, None
    if param_dtype is not None and dtype != param_dtype:
        if dtype not in (torch.float16, torch.bfloat16):
            # autocast only lowers precision; silently running in the weights' dtype would lie.
            raise ValueError(f"dtype {dtype} is wider than the prior's {param_dtype} weights; load the "
                             f"prior in {dtype} instead (load_prior(..., dtype={dtype}))")
        return device, param_dtype, dtype
    return device, dtype, None


def slice_cond(cond: Any, index: Tensor, batch: int) -> Any:
    """The chunk's part of ``cond``: tensors whose first dimension is the whole batch are indexed by the chunk's
    faces (also inside dicts, lists, tuples and dataclass instances such as per-face `PromptEmbeddings`); anything
    else is passed through unchanged."""
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        return dataclasses.replace(cond, **{f.name: slice_cond(getattr(cond, f.name), index, batch)
                                            for f in dataclasses.fields(cond) if f.init})
    if isinstance(cond, Tensor):
        return cond[index.to(cond.device)] if cond.ndim > 0 and cond.shape[0] == batch else cond
    if isinstance(cond, dict):
        return {k: slice_cond(v, index, batch) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(slice_cond(v, index, batch) for v in cond)
    return cond


class ModelDenoiser:
    """``(x_t, t) -> (ε, clipped x0)`` for one chunk: the prior's call, ε conversion and the guidance hook."""

    def __init__(self, prior: Prior, acp: Tensor, *, model_dtype: torch.dtype = torch.float32,
                 autocast_dtype: torch.dtype | None = None, guidance: Guidance | None = None,
                 faces: Tensor | None = None, cond: Any = None):
        self.prior, self.acp = prior, acp
        self.prediction_type = str(getattr(prior, "prediction_type", "epsilon") or "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prior.prediction_type {self.prediction_type!r}; "
                             "expected 'epsilon', 'sample' or 'v_prediction'")
        clip = getattr(prior, "clip_sample", 1.0)
        self.clip = None if clip is None else float(clip)
        self.model_dtype, self.autocast_dtype = model_dtype, autocast_dtype
        self.guidance, self.faces, self.cond = guidance, faces, cond

    def eps(self, x: Tensor, t: int) -> Tensor:
        """The prior's prediction at (x_t, t) as float32 ε."""
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        ac = (torch.autocast(x.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
              else contextlib.nullcontext())
        with torch.no_grad(), ac:
            out = self.prior.denoise(x.to(self.model_dtype), tt, self.cond)
        c = x.shape[1]
        if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != x.shape[0] or \
                out.shape[1] not in (c, 2 * c) or out.shape[2:] != x.shape[2:]:
            raise ValueError(f"prior model returned shape {tuple(getattr(out, 'shape', ()))} for input "
                             f"{tuple(x.shape)}; expected [B, {c} or {2 * c}, H, W]")
        out = out[:, :c].float()
        if self.prediction_type == "epsilon":
            return out
        abar = float(self.acp[int(t)])
        if self.prediction_type == "sample":  # x0 → ε
            return (x - math.sqrt(abar) * out) / math.sqrt(1.0 - abar)
        return math.sqrt(abar) * out + math.sqrt(1.0 - abar) * x  # v → ε

    def _x0(self, x: Tensor, t: int, eps: Tensor) -> Tensor:
        abar = float(self.acp[int(t)])
        x0 = (x - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
        return x0 if self.clip is None else x0.clamp(-self.clip, self.clip)

    def __call__(self, x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        eps = self.eps(x, t)
        if self.guidance is not None:
            abar = float(self.acp[int(t)])
            with torch.enable_grad():
                corr = self.guidance(x.detach(), int(t), self._x0(x, t, eps).detach(), faces=self.faces)
            if not isinstance(corr, Tensor) or tuple(corr.shape) != tuple(x.shape):
                raise ValueError(f"guidance must return a tensor of shape {tuple(x.shape)}, got "
                                 f"{getattr(corr, 'shape', type(corr))}")
            corr = corr.detach().to(device=x.device, dtype=torch.float32)
            eps = eps - math.sqrt(abar / (1.0 - abar)) * corr
        return eps, self._x0(x, t, eps)


def sample_latents(
    prior: Prior,
    x0: Tensor,
    sampler: Sampler,
    generators: Sequence[torch.Generator],
    *,
    guidance: Guidance | None = None,
    faces: Tensor | None = None,
    cond: Any = None,
    model_dtype: torch.dtype = torch.float32,
    autocast_dtype: torch.dtype | None = None,
    callback: Callable[[int], None] | None = None,
) -> Tensor:
    """Denoised latents [n, c, h, w] float32 from clean start latents ``x0`` (float32, on the model's device).

    ``sampler`` (from `samplers.resolve_sampler`) noises x0 to its start (t_N; a scheduler instance: its first
    timestep) with each face's first draw and denoises; ``generators[k]`` serves face k; ``faces`` (the chunk's face
    indices, default 0 … n−1) goes to the guidance hook; ``cond`` to ``prior.denoise``; ``callback(j)`` after every
    model evaluation j (0-based). See the module docstring for the model call, guidance and noise.
    """
    if len(generators) != x0.shape[0]:
        raise ValueError(f"{len(generators)} generators for {x0.shape[0]} faces")
    acp = torch.as_tensor(prior.alphas_cumprod).detach().to("cpu", torch.float64)
    if faces is None:
        faces = torch.arange(x0.shape[0])
    model = ModelDenoiser(prior, acp, model_dtype=model_dtype, autocast_dtype=autocast_dtype, guidance=guidance,
                          faces=faces, cond=cond)
    # on a GPU the CPU draws the next step's noise while the UNet runs (`Noise`)
    prefetch = x0.device.type == "cuda" and not getattr(sampler, "draws_from_generators", False)
    noise = Noise(generators, tuple(x0.shape[1:]), x0.device, prefetch=prefetch)
    try:
        return sampler.run(model, x0.float(), acp, noise, callback)
    finally:
        noise.close()
