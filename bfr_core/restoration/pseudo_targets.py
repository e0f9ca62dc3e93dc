"""DT-BFR pseudo-targets: the backbone's estimate refined by the diffusion prior under a low-pass consistency.

DT-BFR (Kuai et al., WACV 2025) adapts a fast restoration backbone to a user's own degraded faces without ground
truth: for each LQ crop y, the backbone's estimate x̂ = f(y) is diffused to an intermediate step and sampled back
by the prior with ancestral DDPM steps, and while the noise is still high the sample's low-frequency band is
replaced by x̂'s (ILVR-style), so the target keeps the photo's coarse content and colours while the prior supplies
the detail. The backbone is then fine-tuned on (y, target) pairs (the training loop is not here yet).

The chain (all in the prior's model space: pixel priors, [−1, 1] images)
-------------------------------------------------------------------------
The prior's T training steps (1000 for DifFace) are respaced to ``respacing`` (250: stride s = T/250 = 4). Step
indices k = ``t_start`` … 0 of the respaced chain stand for training timesteps s·k (index 0 = the clean image, ā = 1).
``t_start`` and ``constrain_until`` are indices of this chain (DT-BFR: 150 and 90 of 250, i.e. training timesteps
600 and 360 — as DifFace's "N = 100 of 250" is timestep 400).

1. x̂ = `backbone_estimate` (crops resized to the prior's size S, antialiased bicubic; restorer None = identity);
   x̂ is encoded (pixel priors: 2x̂ − 1).
2. x_{t_start} = q_sample(x̂, s·t_start, ε) (`diffusion.samplers.q_sample`).
3. ``t_start`` ancestral steps (`diffusion.samplers.ddpm`: DDPM posterior of the respaced chain, clipped x0, fixed
   variance = that chain's posterior variance β̃, none on the last step) from index k to k − 1.
4. After a step lands on index m (m = k − 1): if ``constrain_until`` ≥ 1 and m ≥ ``constrain_until``,
   x_m ← x_m − lowpass(x_m) + lowpass(q_sample(x̂, s·m, ε')) with fresh noise ε' (`diffusion.consistency`;
   lowpass = antialiased bicubic down by 1/``lowpass`` and back up; DT-BFR: 16 for SwinIR, 8 for other
   backbones). With the defaults that is 60 of the 150 steps (states 149 … 90). ``constrain_until`` 0 turns it off
   (plain DDPM from x̂); = ``t_start`` constrains nothing.
5. decode, clamp to [0, 1], resize back to the crop's H×W (antialiased bicubic) in the crops' dtype (with the
   prior's channel count: a gray prior makes gray targets of RGB crops, from the estimate's luma).

Seeds, chunks, progress
-----------------------
Face i draws all its noise from its own CPU generator seeded ``seeds[i]`` (else ``seed + i``): first ε of step 2,
then per step the ancestral draw, then (constrained steps) ε'. So a face's target does not depend on its batch
neighbours, the chunking or OOM retries. Faces run in chunks of ``batch_size`` (halved on out-of-memory,
`utils.run_chunked`); ``progress(done, total)`` counts model evaluations (t_start per chunk); raising from it
stops the run.

Priors: any pixel prior the engine takes (`DiffusionPrior`, diffusers UNet folders, `DenoiserPrior` objects).
Latent priors are refused (ValueError): the low band would have to be swapped in image space, through the VAE,
at every step — not done here.

Files: `bfr_core.training.pseudo_targets.write_pseudo_targets` writes one 16-bit PNG per face as soon as its chunk
is done (atomically) and skips faces whose target exists, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..diffusion.consistency import check_lowpass_factor, replace_lowpass
from ..diffusion.priors import LatentPrior, as_prior
from ..diffusion.samplers import Noise, ddpm, q_sample
from ..diffusion.sampling import ModelDenoiser, model_device_dtype, slice_cond
from ..utils import ProgressCallback, luma, run_chunked
from ..utils.layout import check_images
from .difface import face_seeds as check_face_seeds
from .estimate import Restorer, backbone_estimate, resize_crops

__all__ = ["DEFAULT_CONSTRAIN_UNTIL", "DEFAULT_LOWPASS", "DEFAULT_RESPACING", "DEFAULT_T_START",
           "generate_pseudo_targets", "pseudo_target_timesteps"]

DEFAULT_RESPACING = 250
DEFAULT_T_START = 150
DEFAULT_CONSTRAIN_UNTIL = 90
DEFAULT_LOWPASS = 16  # DT-BFR: 16 for SwinIR, 8 for other backbones

StepHook = Callable[[int, Tensor, "Tensor | None"], None]


def pseudo_target_timesteps(t_start: int, respacing: int = DEFAULT_RESPACING,
                            num_train_timesteps: int = 1000) -> list[int]:
    """The training timesteps the prior is evaluated at: [s·t_start, s·(t_start − 1), …, s] with s = T/respacing."""
    T, r = int(num_train_timesteps), int(respacing)
    if not 1 <= r <= T or T % r:
        raise ValueError(f"respacing must divide the prior's {T} training steps, got {respacing}")
    if not 0 < int(t_start) < r:
        raise ValueError(f"t_start must be in (0, {r}) (an index of the {r}-step respacing), got {t_start}")
    s = T // r
    return [s * k for k in range(int(t_start), 0, -1)]


def generate_pseudo_targets(
    lq_crops: Tensor,
    prior: Any,
    restorer: Restorer | None = None,
    *,
    t_start: int = DEFAULT_T_START,
    lowpass: int = DEFAULT_LOWPASS,
    constrain_until: int = DEFAULT_CONSTRAIN_UNTIL,
    seed: int = 0,
    seeds: Sequence[int] | Tensor | None = None,
    respacing: int = DEFAULT_RESPACING,
    batch_size: int = 4,
    dtype: torch.dtype | None = None,
    progress: ProgressCallback | None = None,
    cond: Any = None,
    step_hook: StepHook | None = None,
) -> Tensor:
    """DT-BFR pseudo-targets of aligned LQ crops [B, C, H, W] (float, [0, 1]) → [B, Cp, H, W] in [0, 1].

    C and the prior's channel count Cp are 1 or 3; when they differ the target has the prior's channels (a gray
    prior refines the estimate's BT.601 luma; an RGB prior gets gray crops repeated to RGB).

    ``prior``: a pixel diffusion prior (latent priors: ValueError); ``restorer``: the backbone whose estimate is
    refined (None = the crop itself). ``t_start``, ``constrain_until``: indices of the ``respacing``-step chain
    (module docstring); ``lowpass``: the down factor of the low band, in [1, S]. ``seeds``: one per face, else
    ``seed + i``. ``step_hook(m, x_m, ref_m)``: called after every step with the new index m, the state (model
    space, float32, after the constraint) and the diffused estimate whose low band was put in (None when that step
    was not constrained) — for inspection; it must not modify them. See the module docstring.
    """
    check_images(lq_crops, "lq_crops", allow_empty=True)  # channels: checked against the prior's below
    if prior is None:
        raise ValueError("a diffusion prior is required for pseudo-targets")
    p = as_prior(prior)
    if isinstance(p, LatentPrior):
        raise ValueError("pseudo-targets need a pixel diffusion prior: the low-pass consistency works on images, "
                         "and latent priors (SD-style VAE latents) are not supported")
    acp = torch.as_tensor(p.alphas_cumprod).detach().to("cpu", torch.float64)
    if acp.ndim != 1 or not bool(((acp > 0) & (acp < 1)).all()):
        raise ValueError("prior.alphas_cumprod must be a 1-D tensor of values in (0, 1)")
    timesteps = pseudo_target_timesteps(t_start, respacing, len(acp))
    t_start, stride = int(t_start), len(acp) // int(respacing)
    c_until = int(constrain_until)
    if c_until != constrain_until or not (c_until == 0 or 1 <= c_until <= t_start):
        raise ValueError(f"constrain_until must be 0 (off) or an integer in [1, t_start = {t_start}], "
                         f"got {constrain_until!r}")
    size = int(p.sample_size)
    if size < 1:
        raise ValueError(f"prior.sample_size must be positive, got {p.sample_size}")
    factor = check_lowpass_factor(lowpass, size)
    c, cp = lq_crops.shape[1], int(p.image_channels)
    if c not in (1, 3) or cp not in (1, 3):
        raise ValueError(f"lq_crops have {c} channels and the prior {cp}; pseudo-targets need 1 or 3 (RGB)")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    face_seeds = check_face_seeds(seeds, seed, lq_crops.shape[0])
    if lq_crops.shape[0] == 0:
        return lq_crops.clone()
    device, model_dtype, autocast_dtype = model_device_dtype(prior, dtype, lq_crops.device)
    n_total = lq_crops.shape[0]

    def run(start: int, n: int, report: Callable[[int], None]) -> Tensor:
        y = lq_crops[start:start + n]
        hw = tuple(y.shape[-2:])
        est = backbone_estimate(y, restorer, size, batch_size=n).to(device=device, dtype=torch.float32)
        if cp != c:  # gray prior: the estimate's luma; RGB prior on gray crops: gray repeated to RGB
            est = luma(est) if cp == 1 else est.repeat(1, 3, 1, 1)
        with torch.no_grad():
            x_hat = p.encode(est).float()
        if tuple(x_hat.shape) != tuple(est.shape):
            raise ValueError(f"prior.encode changed the shape {tuple(est.shape)} → {tuple(x_hat.shape)}: only pixel "
                             f"priors are supported for pseudo-targets")
        faces = torch.arange(start, start + n)
        gens = [torch.Generator(device="cpu").manual_seed(face_seeds[int(i)]) for i in faces]
        noise = Noise(gens, tuple(x_hat.shape[1:]), x_hat.device)
        model = ModelDenoiser(p, acp, model_dtype=model_dtype, autocast_dtype=autocast_dtype, faces=faces,
                              cond=slice_cond(cond, faces, n_total))

        def after_step(j: int, x: Tensor) -> Tensor:
            m = t_start - 1 - j  # the index the step landed on
            ref = None
            if c_until >= 1 and m >= c_until:
                ref = q_sample(x_hat, stride * m, acp, noise.draw())
                x = replace_lowpass(x, ref, factor)
            if step_hook is not None:
                step_hook(m, x, ref)
            return x

        x = q_sample(x_hat, timesteps[0], acp, noise.draw())
        z = ddpm(model, x, timesteps, acp, noise=noise.draw, callback=lambda j: report(j + 1), after_step=after_step)
        with torch.no_grad():
            r = p.decode(z).float().clamp(0, 1)
        return resize_crops(r, hw).to(device=lq_crops.device, dtype=lq_crops.dtype)

    return torch.cat(run_chunked(run, n_total, batch_size, len(timesteps), progress))
