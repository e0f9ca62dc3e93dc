"""DifFace restoration of aligned faces: backbone estimate → encode → diffuse to t_N → denoise → decode.

Pipeline per aligned face y (RGB in [0, 1]), DifFace (Yue & Loy, TPAMI 2024):

1. ``f(y)``: the restoration backbone (``restorer``; ``None`` = identity), run at the prior's resolution
   (`estimate.apply_backbone`).
2. x0 = ``prior.encode(f(y))`` (pixel priors: 2 f(y) − 1; latent priors: the VAE's latents), then the transition
   to the intermediate step N: x_N = sqrt(ā_N)·x0 + sqrt(1 − ā_N)·ε (`diffusion.timesteps`: strength ↔ t_N).
3. Reverse diffusion from N to 0 with the prior and a sampler — a named preset (``official`` = DifFace exactly,
   ``fast`` = the default, ``ddim``, ``dpmsolver++``; `diffusion.timesteps`) or any diffusers scheduler instance
   (`diffusion.samplers`); the core loop, guidance hook and noise order are in `diffusion.sampling`.
4. ``prior.decode`` → clamped to [0, 1], back to the crop's size and channels.

Seeds
-----
Face i of ``crops`` (0-based, across the whole call) draws all its noise from its own CPU ``torch.Generator``
seeded ``seeds[i]`` when ``seeds`` is given (a list or LongTensor of one non-negative int per face; ``seed`` is then
unused), else ``seed + i``. (Face i of a batch restored with ``seed`` equals that face restored alone with
``seed + i``; with ``seeds`` it equals the face restored alone with ``seeds=[seeds[i]]``.) The order of draws per
face is in `diffusion.sampling` ("Noise").

Sizes and channels
------------------
Crops of another size than ``prior.sample_size`` (S) are resized to S×S with antialiased bicubic
interpolation (``F.interpolate(mode='bicubic', antialias=True)``, as DifFace does), the backbone and the
diffusion run at S×S, and the result is resized back the same way to the crop's own H×W and clamped.
Non-square crops are stretched to the square and back (aligned face crops are square). The resized input is
clamped to [0, 1] before the backbone (bicubic overshoot is not valid image data); DifFace clamps only the
backbone's output, so for crops that need resizing the two differ slightly (at the prior's size they agree).
Channels: crops with the prior's image channel count run directly. RGB crops with a 1-channel prior: the prior
restores the BT.601 luma of f(y) and the luma change is added to every channel of f(y) (colour kept). 1-channel
crops with an RGB prior: the gray image is repeated to RGB and the luma of the result returned. Anything else
raises ValueError. Non-finite input raises ValueError; finite input outside [0, 1] is clamped.

Memory, dtype, progress
-----------------------
Faces run in chunks of ``batch_size``; a ``torch.OutOfMemoryError`` retries the chunk with half the size, down
to 1, then re-raises (later chunks keep the smaller size; `utils.run_chunked`). The model runs in ``dtype``
(``None``: the dtype of the prior's parameters, float32 for parameter-free callables; fp16/bf16 on wider weights
runs under ``torch.autocast``; a dtype wider than the weights is a ValueError); sampler math and noise are
float32. ``progress(done, total)`` is called after every model evaluation of every chunk with ``total =
evaluations per chunk × chunks`` (recomputed after an OOM retry); raising from it (e.g. ComfyUI's interrupt)
stops the run at once. No call is made when there is nothing to denoise (strength 0).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..diffusion.priors import DenoiserPrior, Prior, as_prior
from ..diffusion.samplers import check_eta, resolve_sampler
from ..diffusion.sampling import Guidance, model_device_dtype, sample_latents, slice_cond
from ..diffusion.timesteps import (DEFAULT_SAMPLER, DEFAULT_STRENGTH, NUM_TRAIN_TIMESTEPS, get_preset,
                                   strength_to_timestep)
from ..utils import ProgressCallback, luma, run_chunked
from ..utils.color_fix import apply_color_fix, check_color_fix
from ..utils.layout import check_images
from .estimate import Restorer, apply_backbone, resize_crops

__all__ = ["face_seeds", "restore_faces"]


def face_seeds(seeds: Any, seed: int, n: int) -> list[int]:
    """One non-negative int seed per face: ``seeds`` checked (list or 1-D integer tensor of n), else seed + i."""
    if seeds is None:
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        return [seed + i for i in range(n)]
    if isinstance(seeds, Tensor):
        if seeds.is_floating_point() or seeds.is_complex() or seeds.ndim != 1:
            raise ValueError(f"seeds must be a 1-D integer tensor, got {seeds.dtype} {tuple(seeds.shape)}")
        values = [int(s) for s in seeds.tolist()]
    else:
        try:
            values = [int(s) for s in seeds]
        except (TypeError, ValueError):
            raise ValueError(f"seeds must be a list of ints, got {seeds!r}") from None
        if any(isinstance(s, float) and not float(s).is_integer() for s in seeds):
            raise ValueError(f"seeds must be integers, got {list(seeds)}")
    if len(values) != n:
        raise ValueError(f"seeds has {len(values)} entries for {n} crops (one per face)")
    if any(s < 0 for s in values):
        raise ValueError(f"seeds must be >= 0, got {values}")
    return values


def restore_faces(
    crops: Tensor,
    prior: Prior | DenoiserPrior | None,
    restorer: Restorer | None = None,
    strength: float = DEFAULT_STRENGTH,
    steps: int | None = None,
    sampler: Any = DEFAULT_SAMPLER,
    eta: float | None = None,
    seed: int = 0,
    guidance: Guidance | None = None,
    batch_size: int = 4,
    dtype: torch.dtype | None = None,
    progress: ProgressCallback | None = None,
    *,
    timesteps: Sequence[int] | None = None,
    seeds: Sequence[int] | Tensor | None = None,
    cond: Any = None,
    color_fix: str | None = None,
) -> Tensor:
    """DifFace-restore aligned faces ``crops`` [B,C,H,W] (RGB in [0, 1]) → [B,C,H,W] in [0, 1], crops' device/dtype.

    ``sampler``: a preset name (``"fast"`` default: 20 DDIM steps, η 0.5; ``"official"``: DifFace exactly;
    ``"ddim"``; ``"dpmsolver++"``) or a diffusers scheduler instance (driven on the prior's schedule, 20 steps
    evenly spaced from t_N unless ``steps``/``timesteps`` say otherwise; ``eta`` goes to its ``step`` where that takes
    one); ``steps``/``eta`` None = the preset's defaults; ``timesteps``: explicit descending integer timesteps
    (override steps and spacing). ``seeds``: one
    seed per face (else face i uses ``seed + i``). ``cond``: passed to ``prior.denoise`` (tensors whose first
    dimension is B are split with the chunks). ``color_fix``: "wavelet", "adain" or "none" — the decoded result's
    colours matched to the backbone's estimate (`bfr_core.utils.color_fix`); None = the prior's own ``color_fix``
    attribute (`LatentDiffusionPrior`: "wavelet"), else "none". ``prior`` may be None only when strength is 0. See the module
    docstrings of this module and of `bfr_core.diffusion.timesteps` / `samplers` / `sampling`.
    """
    check_images(crops, "crops", channels=(1, 3), allow_empty=True)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_eta(eta)
    per_face = face_seeds(seeds, seed, crops.shape[0])

    p = as_prior(prior) if prior is not None else None
    num_train = len(p.alphas_cumprod) if p is not None else NUM_TRAIN_TIMESTEPS
    t_start = strength_to_timestep(strength, num_train)
    if t_start > 0 and p is None:
        raise ValueError("a diffusion prior is required for strength > 0")
    if isinstance(sampler, str):
        get_preset(sampler)  # a bad name is an error even when nothing is denoised
    if crops.shape[0] == 0:
        return crops.clone()
    if t_start == 0 and restorer is None:
        return crops.clamp(0, 1).clone()  # nothing to do: f = identity, no diffusion

    fix = check_color_fix(color_fix if color_fix is not None else getattr(p, "color_fix", "none"))
    run_ctx = _Run(crops, prior, p, restorer, t_start, sampler, steps, eta, timesteps, per_face, guidance,
                   dtype, cond, fix)

    def run(start: int, n: int, report: Callable[[int], None]) -> Tensor:
        out = run_ctx.chunk(crops[start:start + n], torch.arange(start, start + n), report)
        return out.to(device=crops.device, dtype=crops.dtype)

    return torch.cat(run_chunked(run, crops.shape[0], batch_size, run_ctx.num_steps, progress))


class _Run:
    """Everything constant across the chunks of one `restore_faces` call."""

    def __init__(self, crops, raw_prior, prior, restorer, t_start, sampler, steps, eta, timesteps, face_seeds,
                 guidance, dtype, cond, color_fix):
        self.prior, self.restorer, self.t_start, self.color_fix = prior, restorer, t_start, color_fix
        self.face_seeds, self.guidance, self.cond, self.batch = face_seeds, guidance, cond, crops.shape[0]
        self.size, self.device = None, crops.device
        self.model_dtype, self.autocast_dtype = torch.float32, None
        self.sampler, self.num_steps = None, 0
        if prior is not None:
            s = int(prior.sample_size)
            if s < 1:
                raise ValueError(f"prior.sample_size must be positive, got {prior.sample_size}")
            self.size = (s, s)
            self.device, self.model_dtype, self.autocast_dtype = model_device_dtype(raw_prior, dtype, crops.device)
        if t_start > 0:
            acp = torch.as_tensor(prior.alphas_cumprod).detach().to("cpu", torch.float64)
            if acp.ndim != 1 or not bool(((acp > 0) & (acp < 1)).all()):
                raise ValueError("prior.alphas_cumprod must be a 1-D tensor of values in (0, 1)")
            self.sampler = resolve_sampler(sampler, acp, t_start, steps, eta, timesteps, prior.clip_sample)
            self.num_steps = self.sampler.num_steps
            c, cp = crops.shape[1], int(prior.image_channels)
            if cp != c and not (c == 3 and cp == 1) and not (c == 1 and cp == 3):
                raise ValueError(f"crops have {c} channels but the prior expects {cp}")
            self.cp = cp

    def chunk(self, y: Tensor, faces: Tensor, report: Callable[[int], None]) -> Tensor:
        hw = tuple(y.shape[-2:])
        y = y.to(device=self.device, dtype=torch.float32).clamp(0, 1)
        f = apply_backbone(self.restorer, resize_crops(y, self.size or hw))
        if self.t_start == 0:
            return resize_crops(f, hw)

        c = y.shape[1]
        img = f if self.cp == c else (luma(f) if self.cp == 1 else f.repeat(1, 3, 1, 1))
        with torch.no_grad():
            x0 = self.prior.encode(img).float()
        gens = [torch.Generator(device="cpu").manual_seed(self.face_seeds[int(i)]) for i in faces]
        z = sample_latents(self.prior, x0, self.sampler, gens, guidance=self.guidance, faces=faces,
                           cond=slice_cond(self.cond, faces, self.batch), model_dtype=self.model_dtype,
                           autocast_dtype=self.autocast_dtype, callback=lambda j: report(j + 1))
        with torch.no_grad():
            r = self.prior.decode(z).float().clamp(0, 1)
        r = apply_color_fix(r, img, self.color_fix)
        if self.cp != c:
            r = (f + (r - luma(f))).clamp(0, 1) if self.cp == 1 else luma(r).clamp(0, 1)
        return resize_crops(r, hw)
