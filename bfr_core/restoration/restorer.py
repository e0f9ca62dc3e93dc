"""`FaceRestorer`: the restore recipe, in one place — aligned crops → restored crops.

backbone f (optional) → DifFace transition with a diffusion prior (optional) → identity guidance during sampling
(optional). The CLI, the ComfyUI nodes and any other adapter build one of these and call it; none of them composes
the recipe itself.

How a call runs: the backbone's estimate f(y) of every crop is computed first, at the prior's resolution, in
chunks with progress (`backbone_estimate`). It is both the sampler's input and, for blind identity guidance, the
identity target. Then `restore_faces` noises it to the start step set by ``strength`` and denoises it with the
prior (``restorer=None``: the backbone already ran; on one device the result is bit-identical to letting
`restore_faces` run the backbone itself — across devices the resize runs where the crops are, which may differ in
the last bits). The result comes back at the crops' own size, on their device.

Settings are checked when the restorer is made (sampler name, steps, eta against the strength; identity guidance
works with pixel and latent priors), so a bad value fails before any face is processed.

Speed (`bfr_core.utils.acceleration`): on the CPU the prior's network is put in channels_last memory format on the
first call (``channels_last=None``: on for the CPU, left alone elsewhere; the weights are changed in place, the
results only by float rounding). ``compile`` ("off" by default; True/"default", "max-autotune", or
"reduce-overhead" = CUDA graphs) runs the prior's network through ``torch.compile`` — compiled once per network and
mode and reused by every restorer sharing the prior; a failure falls back to eager with a warning. The precision
is the prior's (load it with ``dtype="auto"``: bf16 on CPUs with native bf16 and on recent GPUs, see
`bfr_core.utils.precision.preferred_dtype`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from ..diffusion.priors import DenoiserPrior, LatentPrior, as_prior
from ..diffusion.samplers import resolve_sampler
from ..diffusion.timesteps import DEFAULT_SAMPLER, DEFAULT_STRENGTH, strength_to_timestep
from ..identity.settings import IdentitySettings
from ..utils import ProgressCallback, device_dtype_of
from ..utils.acceleration import check_compile_mode, compiled, to_channels_last, wants_channels_last
from ..utils.color_fix import check_color_fix
from ..utils.layout import check_images
from .backbones import IdentityRestorer
from .difface import restore_faces
from .estimate import Restorer, backbone_estimate, resize_crops

DEFAULT_CROP_SIZE = 512


@dataclass
class FaceRestorer:
    """Owns the networks and the settings of one restore recipe; call it on aligned crops.

    prior: a diffusion prior (None: the backbone alone). backbone: f (None: the crop itself). strength: how much of
    the diffusion chain is re-generated (0 = the backbone's estimate, 0.4 = DifFace). steps, sampler, eta: the
    sampling schedule (see `restore_faces`; the default preset "fast" is 20 DDIM steps, η 0.5). identity:
    `IdentitySettings` for identity guidance (pixel or latent prior). batch_size: faces per network call (halves itself on out-of-memory). dtype: the prior's compute precision.
    progress: the default ``progress(done, total)`` callback of calls that pass none. channels_last, compile: how the
    prior's network runs (module docstring: None = channels_last on the CPU; compile off by default). color_fix:
    "wavelet", "adain" or "none" (None: the prior's own, see `restore_faces`). ``sampler`` may also be a
    `bfr_core.diffusion.samplers.Sampler` that brings its own model, with a codec prior (`LatentPrior` without a
    denoiser): the ComfyUI nodes restore with the user's MODEL so.
    """

    prior: DenoiserPrior | None = None
    backbone: Restorer | None = None
    strength: float = DEFAULT_STRENGTH
    steps: int | None = None  # None: the sampler preset's
    sampler: Any = DEFAULT_SAMPLER  # a preset name or a diffusers scheduler instance (see restore_faces)
    eta: float | None = None
    identity: IdentitySettings | None = None
    batch_size: int = 4
    dtype: torch.dtype | None = field(default=None, repr=False)
    progress: ProgressCallback | None = field(default=None, repr=False)
    channels_last: bool | None = None
    compile: Any = "off"  # "off" | True / "default" | "max-autotune" | "reduce-overhead"
    color_fix: str | None = None  # "wavelet" | "adain" | "none"; None: the prior's own (restore_faces)

    def __post_init__(self) -> None:
        self.compile = check_compile_mode(self.compile)
        if self.color_fix is not None:
            self.color_fix = check_color_fix(self.color_fix)
        if isinstance(self.backbone, IdentityRestorer):
            self.backbone = None  # the "none" backbone: same result, no resize round trip
        if self.identity is not None and self.prior is None:
            raise ValueError("identity guidance steers the diffusion prior's sampling: load a prior too")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.prior is None:
            return
        prior = as_prior(self.prior)
        t_start = strength_to_timestep(self.strength, len(prior.alphas_cumprod))
        if t_start > 0:  # the sampler's settings against this strength, before any face is processed
            resolve_sampler(self.sampler, torch.as_tensor(prior.alphas_cumprod).double(), t_start, self.steps,
                            self.eta, clip_sample=prior.clip_sample)

    @property
    def crop_size(self) -> int:
        """The crop size this recipe works at best: the prior's resolution (at least 512 px), else 512."""
        if self.prior is None:
            return DEFAULT_CROP_SIZE
        return max(DEFAULT_CROP_SIZE, int(self.prior.sample_size))

    def modules(self) -> list[torch.nn.Module]:
        """The networks a call runs, for adapters that place models on a device before calling."""
        found = [getattr(self.prior, "model", None), getattr(self.prior, "vae", None), self.backbone,
                 getattr(self.identity.recognizer, "model", None) if self.identity is not None else None]
        return [m for m in found if isinstance(m, torch.nn.Module)]

    def __call__(self, crops: Tensor, *, seed: int = 0, seeds: Sequence[int] | Tensor | None = None,
                 progress: ProgressCallback | None = None) -> Tensor:
        """Restore aligned crops [F, C, H, W] in [0, 1] (C = 1 or 3) → same shape, device and dtype.

        Face i's noise comes from ``seeds[i]`` when given (e.g. `AlignedFaces.face_seeds`), else ``seed + i``.
        ``progress(done, total)`` is called per backbone chunk (when there is a backbone), then per denoising step
        (raising from it stops the run).
        """
        check_images(crops, "crops", channels=(1, 3), allow_empty=True)
        hw = tuple(crops.shape[-2:])
        progress = progress or self.progress
        if crops.shape[0] == 0:
            return crops.clone()
        diffuse = self.prior is not None and float(self.strength) > 0
        if not diffuse and self.backbone is None:
            return crops.clamp(0, 1)  # nothing to do: no backbone, no diffusion
        # The backbone runs at the prior's resolution whenever there is a prior, as inside restore_faces.
        size = None if self.prior is None else int(self.prior.sample_size)
        estimates = backbone_estimate(crops, self.backbone, size, self.batch_size,
                                      progress if self.backbone is not None else None)
        if not diffuse:
            return resize_crops(estimates, hw).to(crops.dtype)
        guidance = None
        if self.identity is not None:
            prior = as_prior(self.prior)  # latent priors: the hook decodes its latents for the recognizer
            guidance = self.identity.build(estimates, self.prior.alphas_cumprod,
                                           prior if isinstance(prior, LatentPrior) else None)
        out = restore_faces(estimates, self._fast_prior(), restorer=None, strength=self.strength, steps=self.steps,
                            sampler=self.sampler, eta=self.eta, seed=seed, guidance=guidance,
                            batch_size=self.batch_size, dtype=self.dtype, progress=progress, seeds=seeds,
                            color_fix=self.color_fix)
        return resize_crops(out, hw).to(crops.dtype)

    def _fast_prior(self) -> Any:
        """The prior with its network laid out and compiled as this recipe's speed settings say (module docstring);
        the prior object itself when there is nothing to change."""
        model = getattr(self.prior, "model", None)
        if not isinstance(model, torch.nn.Module):
            return self.prior
        if wants_channels_last(device_dtype_of(model)[0], self.channels_last):
            to_channels_last(model)
        if self.compile == "off":
            return self.prior
        fast = copy.copy(self.prior)  # shares everything but the network it calls
        fast.model = compiled(model, self.compile)
        return fast
