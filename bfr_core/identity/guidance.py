"""Identity guidance for the DifFace sampler (CLR-Face-style masked recognition gradients, PGDiff-style x0 guidance).

`IdentityGuidance` is a `bfr_core.diffusion.sampling.Guidance` hook: at each guided denoising step it takes the sampler's
clipped x0 prediction, measures how far the face recognizer puts it from a target identity, and returns an x0
correction that lowers that distance. The gradient is taken with respect to x0 only (no backprop through the
prior's UNet): one recognizer forward + backward per step.

Per step (x0 = the sampler's clipped x0 prediction, model space [−1, 1]; image = (x0 + 1)/2 in [0, 1])::

    L_i   = 1 − cos(embed(image_i), target_i)                      per face i (summed, so faces don't interact)
    g     = ∂ Σ_i L_i / ∂ x0                                       [n, C, S, S]
    ĝ_i   = m ⊙ g_i / rms_m(g_i),  rms_m(g)² = Σ m·g² / (C·Σ m)    gradient RMS-normalised inside the mask m
    c     = −σ_t · ( strength · STRENGTH_UNIT · ĝ  +  fidelity · m ⊙ (x0 − anchor) )

Scaling (why ``σ_t · RMS-normalised gradient``)
------------------------------------------------
* RMS normalisation: recognizer gradients differ by orders of magnitude between networks (random vs trained,
  iresnet50 vs 100, 112 px crop vs whole image) and with resolution; normalising makes ``strength`` a pixel
  amplitude: inside the mask the step's correction has RMS ≈ strength · STRENGTH_UNIT · σ_t (model space), for any
  recognizer. The gradient *direction* is the recognizer's; a face whose gradient is exactly 0 gets c = 0.
* σ_t = sqrt(1 − ā_t): the sampler adds c to the x0 prediction, and DDIM moves x_{t−1} by k_t·c with
  k_t = sqrt(ā_prev) − sqrt((1 − ā_prev − σ²)·ā_t/(1 − ā_t)) (the last step to ā = 1 applies c in full). Σ k_t over
  a trajectory grows with the number of steps (≈ 2.9 for 10 DDIM steps from t = 400, 6.1 for DifFace's official
  100), but Σ k_t·σ_t stays ≈ 1.1–1.4 (10, 20, 25 or 100 steps, η 0 or 0.5, t_N 400–600; 0.63 from t_N = 200).
  So with the σ_t factor the accumulated push is about strength · STRENGTH_UNIT · 1.2 whatever ``steps`` is, and it
  fades out at low noise, where the prior can no longer turn a correction into image content and c would be
  pasted onto the output as a raw gradient pattern. (The same factor as classifier guidance's ε̂ = ε − σ_t·∇.)
* STRENGTH_UNIT = 0.1: strength 1 (the default) ≈ a push of at most ~0.12 model-space RMS (0.06 in [0, 1]) inside
  the mask over a whole trajectory if every step pushed the same way — meant as a clear but moderate change of the
  facial features (a guess: not yet calibrated with trained prior and ArcFace weights). 0 is exactly "no
  guidance" (the hook returns zeros without running the recognizer).
* ``fidelity`` (PGDiff-style, default 0 = off): the gradient step on ½‖x0 − anchor‖² with step size
  fidelity·σ_t, anchor = the stored backbone estimate (`prepare`), i.e. each step pulls x0 a fraction
  fidelity·σ_t of the way back toward the estimate (inside the mask). Values in [0, 1].

Overshoot (``cap``)
------------------
The normalised step does not shrink as the distance goes to 0, so a strength far beyond what a face needs makes
the last (low-noise) steps jitter around the target: with the analytic test prior and a random recognizer, 10
steps, the distance falls with strength up to ~2–4 and rises again beyond. ``cap=k`` bounds each step's identity
correction by k × the Polyak step L/⟨∇L, m ⊙ ∇L⟩ (where the linearised distance reaches 0), so large strengths
saturate instead of overshooting. It is off by default because recognizers are not robust: their linearisation
says a near-invisible, adversarial-like change would reach the target, so a cap of ~1 keeps every step about that
small (in bench/bench_guidance.py, cap=1 stops all gain beyond strength ~2), and a trained prior most likely
treats such high-frequency changes as noise and removes them at the next step. Guidance that changes features
needs larger steps (as in PGDiff and classifier guidance); the σ_t factor already keeps the last steps small.

Large strengths: sub-steps (why strength used to stop working)
-------------------------------------------------------------
Measured with the exact prior (tests/analytic_prior.py) and a random-weight iresnet50 (bench/bench_identity_strength.py):
one normalised step per denoising step made strength stop moving identity long before image quality limited it.
Three things compound:

1. The prior undoes earlier corrections: an exact prior's x0 prediction snaps back onto its faces at the next
   step (the per-step distance in ``trace`` stays at the unguided face's value for every step but the last), and
   a trained prior does so in part. What reaches the output is mostly the last guided step's correction.
2. σ_t scaling makes that last correction the smallest (σ ≈ 0.05 at t = 20): the output is the face plus one
   gradient step of length ∝ strength.
3. One long step along the gradient taken at a single point overshoots: the recognizer's distance is far from linear
   over the step lengths large strengths ask for. Along one step, the distance falls to a minimum and then rises
   again while PSNR keeps falling (random iresnet50 at 64 px: 0.188 → 0.058 at a step of 0.02 RMS in [0, 1], back to
   0.184 at 0.2), whereas 8 shorter steps that re-take the gradient reach 0.005 at 0.05 RMS (29 dB vs 26 dB).
   Clipping x0 to [−1, 1] is not the limit (it only removes what would leave the image range).

So each guided step now spends its strength in ``k = ceil(strength / substep)`` sub-steps (at most ``max_substeps``)
of strength/k each, re-taking the recognizer's gradient where the previous sub-step ended (pixel priors: clipped to
the data range first). Up to ``substep`` (default 2, i.e. the default strength 1 and anything ≤ 2) nothing changes:
one evaluation, the same correction as before. Beyond it strength keeps lowering the distance until image quality
limits it, at k recognizer forward + backward passes per guided step (cost ∝ min(strength/2, 8)). ``substep=None``
restores the single step; ``cap`` (below) is the other remedy and turns sub-steps off.

Step range
----------
``start`` ≥ ``end`` are in the sampler's ``strength`` units, i.e. fractions of T (the number of training
timesteps, 1000): a step at integer timestep t is guided when ``end·T ≤ t ≤ start·T``. The default start = 1.0,
end = 0.0 guides every step. With the sampler's strength 0.4 (t_N = 400), start = 0.3 begins guiding at t ≤ 300 and
end = 0.05 stops after t = 50. Outside the range the hook returns exact zeros (and runs nothing).

Target identity
---------------
* ``reference``: a shared target for every face — aligned reference faces [R, 3, H, W] (or one [3, H, W]) in
  [0, 1], FFHQ-aligned like the crops (any size): the normalised mean of their normalised embeddings; or
  precomputed embeddings [R, D] / [D] (same). Takes precedence over per-face targets.
* `prepare` (blind use: the identity of the input itself): before sampling, the caller passes the backbone
  estimate f(y) of each face — or the LQ crops y — in the order of the crops given to `restore_faces`; per-face
  target embeddings are computed (no grad) and stored, and the images kept as the fidelity anchor. The hook picks
  face i's target with the sampler's ``faces`` indices. `restore_faces` computes f(y) internally, so a caller
  that wants f(y) as target runs the backbone itself and passes f(y) as the crops with ``restorer=None``
  (equivalent up to resizing: the sampler runs f at the prior's resolution)::

      est = restorer(crops)                                    # or crops themselves (target = LQ identity)
      g = IdentityGuidance.for_crops(recognizer, est, strength=1.0, alphas_cumprod=prior.alphas_cumprod)
      out = restore_faces(est, prior, restorer=None, guidance=g)

  A face index beyond the prepared (or per-face masked) batch raises ValueError; `validate(num_faces)` checks a
  batch size up front.

Mask
----
``mask="features"`` (default): soft eye, nose and mouth regions placed on the FFHQ 5-point template
(`bfr_core.faces.geometry.ffhq_template`), see `feature_mask` (≈ 13 % of the crop non-zero, 6 % at full weight).
``"none"`` (or None): the whole crop. A tensor [H, W], [B, H, W] or [B, 1, H, W] in crop space (1 = guide;
ComfyUI MASK layout) is resized to the sampler's resolution (bilinear, antialiased) and clamped to [0, 1]; a batch
of masks is indexed per face like the targets. The correction is the gradient multiplied by the mask, so it is
exactly 0 wherever the (resized) mask is 0 (resizing rounds values below 1e-6 to 0 so zeros stay zeros).

Latent priors
-------------
With ``latent_prior=prior`` (an SD/SDXL `LatentDiffusionPrior` or any `LatentPrior`) the hook's x0 is the predicted
clean *latent* z0 (CLR-Face's setting): the recognizer reads ``prior.decode(z0, grad=True)`` (the VAE decoder in
the graph), L is the same cosine distance, and g = ∂L/∂z0 — one decoder forward + backward and one recognizer
forward + backward per step, still no backprop through the UNet. The mask is applied on the latent grid: "features"
is drawn on the template at the latent size, a crop-space mask is resized (antialiased) to the latent grid, so the
correction is exactly 0 at latent positions the mask excludes. RMS normalisation and σ_t scaling are as above, in
latent units (SD latents × scaling_factor have unit-order RMS like pixel model space). The fidelity anchor is the
estimate's latents (``prior.encode``). Cost: the VAE decoder's backward dominates at 512 px (see
bench/bench_latent_prior.py).

Devices and dtypes
------------------
The recognizer may live on another device or dtype than the prior: x0 is moved to the recognizer's device
(``recognizer.device`` if it has one, else its (or its ``.model``'s) parameters' device, else x0's), cast to its
parameter dtype inside the graph (the leaf stays float32, so the gradient is float32), and the correction is
returned on x0_pred's device as float32. Recognizers with trainable parameters work, but freezing them
(``requires_grad_(False)``) avoids computing weight gradients.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..faces.geometry import ffhq_template
from ..utils import device_dtype_of, luma, resize_antialiased
from .regions import soft_ellipse

STRENGTH_UNIT = 0.1  # model-space RMS of one step's correction at strength 1 and σ_t = 1 (module docstring)
SUBSTEP_STRENGTH = 2.0  # the most strength one gradient evaluation may spend ("Large strengths: sub-steps")
MAX_SUBSTEPS = 8  # recognizer evaluations per guided step at most (cost grows with them)
MASK_MODES = ("features", "none")

_FEATHER = 0.35  # soft edge: full weight inside 65 % of each ellipse's radius, 0 from its rim on


@runtime_checkable
class FaceRecognizer(Protocol):
    """What identity guidance needs from a face recognizer.

    ``embed(faces)``: FFHQ-aligned crops [B, 3, H, W] in [0, 1], any size → embeddings [B, D], differentiable
    w.r.t. ``faces`` (normalisation is redone here, so un-normalised outputs work too). Optional: ``device``
    (torch.device or str) and ``dtype``; else taken from the parameters of the recognizer or of its ``.model``.
    """

    def embed(self, faces: Tensor) -> Tensor: ...


class LatentCodec(Protocol):
    """What latent-space guidance needs from a latent prior (`bfr_core.diffusion.priors.LatentPrior` has it)."""

    sample_size: int

    def encode(self, images: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor, *, grad: bool = False) -> Tensor: ...


# ------------------------------------------------------------------------------------------ helpers
def recognizer_device_dtype(recognizer) -> tuple[torch.device | None, torch.dtype | None]:
    """(device, floating dtype) a recognizer wants its input on; Nones when it does not say."""
    return device_dtype_of(recognizer)


def _as_channels_first_rgb(x: Tensor, what: str) -> Tensor:
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"{what} must be images [B, 3, H, W] in [0, 1], got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        hint = " (channels-last? use .movedim(-1, 1))" if x.shape[-1] in (1, 3) else ""
        raise ValueError(f"{what} must have 1 or 3 channels in dim 1, got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a float tensor in [0, 1], got {x.dtype}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def _embed(recognizer, images01: Tensor, grad: bool = False) -> Tensor:
    """Normalised float32 embeddings [B, D] of images [B, 3, H, W] in [0, 1] on the recognizer's device."""
    dev, dtype = recognizer_device_dtype(recognizer)
    x = images01.to(device=dev or images01.device)
    x = x.to(dtype) if dtype is not None else x
    with torch.set_grad_enabled(grad):
        e = recognizer.embed(x.contiguous())
    if not isinstance(e, Tensor) or e.ndim != 2 or e.shape[0] != images01.shape[0]:
        raise ValueError(f"recognizer.embed returned {getattr(e, 'shape', type(e))} for {images01.shape[0]} faces; "
                         "expected [B, D]")
    return F.normalize(e.float(), dim=1, eps=1e-12)


def embed_images(recognizer, images01: Tensor, batch_size: int = 16) -> Tensor:
    """Normalised float32 embeddings [B, D] (on the CPU, no grad) of aligned crops [B, 3, H, W] in [0, 1]."""
    images01 = _as_channels_first_rgb(images01, "images").clamp(0, 1)
    out = [_embed(recognizer, images01[i:i + batch_size]).cpu() for i in range(0, images01.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def _as_embeddings(recognizer, x: Tensor) -> Tensor:
    """[B, D] normalised embeddings from images ([B, 3, H, W] / [3, H, W]) or embeddings ([B, D] / [D])."""
    if x.ndim in (1, 2):
        e = x.detach().float().cpu()
        e = e[None] if e.ndim == 1 else e
        if not bool(torch.isfinite(e).all()) or bool((e.norm(dim=1) == 0).any()):
            raise ValueError("embeddings must be finite and non-zero")
        return F.normalize(e, dim=1)
    return embed_images(recognizer, x.detach())


def cosine_distance(recognizer, a: Tensor, b: Tensor) -> Tensor:
    """1 − cos between the recognizer's embeddings of ``a`` and ``b`` → float32 CPU tensor [B] (no grad).

    Each of a, b: aligned crops [B, 3, H, W] / [3, H, W] in [0, 1], or embeddings [B, D] / [D]; a side with one
    entry broadcasts against the other.
    """
    ea, eb = _as_embeddings(recognizer, a), _as_embeddings(recognizer, b)
    if ea.shape[0] != eb.shape[0] and 1 not in (ea.shape[0], eb.shape[0]):
        raise ValueError(f"cosine_distance: {ea.shape[0]} vs {eb.shape[0]} entries (need equal counts or one)")
    if ea.shape[1] != eb.shape[1]:
        raise ValueError(f"cosine_distance: embedding sizes differ ({ea.shape[1]} vs {eb.shape[1]})")
    return 1.0 - (ea * eb).sum(1)


def feature_mask(size: int, device: torch.device | str = "cpu", feather: float = _FEATHER) -> Tensor:
    """Soft eyes/nose/mouth mask [size, size] in [0, 1] on the FFHQ 5-point template (`ffhq_template(size)`).

    Ellipses (d = eye distance, ≈ 126 px at 512): each eye centred 0.12·d above the eye point with radii
    0.45·d × 0.38·d (eye, lids, brow); the nose centred 0.05·d below the midpoint of the eye line and the nose
    tip, radii 0.28·d × 0.45·d (bridge to nostrils); the mouth centred between the mouth corners, radii (half
    mouth width + 0.2·d) × 0.36·d (lips and philtrum). Each is 1 within (1 − feather) of its radius, falls to 0 at
    its rim with a smoothstep, and is exactly 0 outside; the mask is their maximum.
    """

    s = int(size)
    if s < 1:
        raise ValueError(f"mask size must be positive, got {size}")
    p = ffhq_template(s).to(torch.float64)  # [5, 2] (x, y), pixel-centre coordinates
    le, re, nose, lm, rm = p
    d = float((re - le).norm())
    eye_y = float((le[1] + re[1]) / 2)
    mouth_c = (lm + rm) / 2
    half_mouth = float((rm - lm).norm()) / 2
    regions = [
        (float(le[0]), float(le[1]) - 0.12 * d, 0.45 * d, 0.38 * d),
        (float(re[0]), float(re[1]) - 0.12 * d, 0.45 * d, 0.38 * d),
        (float(nose[0]), (eye_y + float(nose[1])) / 2 + 0.05 * d, 0.28 * d, 0.45 * d),
        (float(mouth_c[0]), float(mouth_c[1]), half_mouth + 0.2 * d, 0.36 * d),
    ]
    c = torch.arange(s, dtype=torch.float64)
    y, x = torch.meshgrid(c, c, indexing="ij")
    m = torch.zeros(s, s, dtype=torch.float64)
    for cx, cy, rx, ry in regions:
        m = torch.maximum(m, soft_ellipse(x, y, cx, cy, rx, ry, feather))
    return m.to(device=device, dtype=torch.float32)


def check_guidance_settings(strength: float, fidelity: float, start: float, end: float) -> None:
    """ValueError naming the first identity-guidance setting out of range (strength, fidelity >= 0; the guided
    timesteps 0 <= end <= start <= 1, fractions of T)."""
    for name, v in (("strength", float(strength)), ("fidelity", float(fidelity))):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"identity guidance {name} must be a finite number >= 0, got {v!r}")
    if not (0.0 <= float(end) <= float(start) <= 1.0):
        raise ValueError(f"identity guidance needs 0 <= end <= start <= 1 (fractions of T; end must not be larger "
                         f"than start), got start={start!r}, end={end!r}")


# ------------------------------------------------------------------------------------------ the hook
class IdentityGuidance:
    """Identity guidance hook for `bfr_core.restore_faces(..., guidance=...)`; see the module docstring.

    Args:
        recognizer: a `FaceRecognizer` (``embed(faces [B,3,H,W] in [0,1]) → [B, D]``, differentiable).
        strength: ≥ 0; per-step correction RMS inside the mask = strength · STRENGTH_UNIT · σ_t (model space).
            0 = exactly no guidance. Default 1.
        start, end: guided timesteps t satisfy end·T ≤ t ≤ start·T (sampler strength units). Default 1.0 / 0.0 =
            every step.
        reference: shared target identity: aligned faces [R,3,H,W] / [3,H,W] in [0,1], or embeddings [R,D] / [D];
            None = per-face targets from `prepare`.
        mask: "features" (default), "none"/None, or a crop-space tensor [H,W] / [B,H,W] / [B,1,H,W] in [0,1].
        fidelity: ≥ 0, PGDiff-style pull of x0 toward the `prepare`d estimate (fraction per step at σ_t = 1);
            0 = off (default).
        alphas_cumprod: the prior's ā (for σ_t and T); default the DDPM linear schedule (1e-4 … 0.02, 1000 steps),
            which is DifFace's.
        cap: None (default) or a multiple of the Polyak step: each step's identity correction is at most ``cap``
            times the step at which the linearised distance would reach 0 (module docstring, "Overshoot").
        record: keep a per-call log in ``self.trace`` (t, faces, distance before the step, correction RMS).
        latent_prior: the `LatentPrior` whose latents the sampler runs on (module docstring, "Latent priors");
            None = a pixel prior.
        substep, max_substeps: a guided step of strength s takes min(max_substeps, ceil(s / substep)) gradient
            evaluations (module docstring, "Large strengths: sub-steps"); substep=None: always one.
    """

    def __init__(
        self,
        recognizer: FaceRecognizer,
        strength: float = 1.0,
        start: float = 1.0,
        end: float = 0.0,
        reference: Tensor | None = None,
        mask: str | Tensor | None = "features",
        fidelity: float = 0.0,
        *,
        alphas_cumprod: Tensor | None = None,
        cap: float | None = None,
        record: bool = False,
        latent_prior: LatentCodec | None = None,
        substep: float | None = SUBSTEP_STRENGTH,
        max_substeps: int = MAX_SUBSTEPS,
    ):
        if not callable(getattr(recognizer, "embed", None)):
            raise TypeError("recognizer must have an embed(faces) method (see FaceRecognizer)")
        self.recognizer = recognizer
        self.strength = float(strength)
        self.fidelity = float(fidelity)
        self.start, self.end = float(start), float(end)
        self.cap = None if cap is None else float(cap)
        self.substep = None if substep is None else float(substep)
        if self.substep is not None and not (math.isfinite(self.substep) and self.substep > 0):
            raise ValueError(f"substep must be a finite number > 0 or None, got {substep!r}")
        self.max_substeps = int(max_substeps)
        if self.max_substeps < 1:
            raise ValueError(f"max_substeps must be >= 1, got {max_substeps!r}")
        if self.cap is not None and not (math.isfinite(self.cap) and self.cap > 0):
            raise ValueError(f"cap must be a finite number > 0 or None, got {cap!r}")
        check_guidance_settings(self.strength, self.fidelity, self.start, self.end)
        if alphas_cumprod is None:
            from ..diffusion.schedules import linear_alphas_cumprod

            alphas_cumprod = linear_alphas_cumprod()
        acp = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        if acp.ndim != 1 or not bool(((acp > 0) & (acp < 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D tensor of values in (0, 1)")
        self.alphas_cumprod = acp
        self.num_train_timesteps = int(acp.shape[0])

        self._reference: Tensor | None = None
        if reference is not None:
            if not isinstance(reference, Tensor):
                raise ValueError(f"reference must be a tensor, got {type(reference).__name__}")
            e = _as_embeddings(recognizer, reference)
            if e.shape[0] == 0:
                raise ValueError("reference is empty")
            self._reference = F.normalize(e.mean(0, keepdim=True), dim=1)  # [1, D]

        if mask is None or (isinstance(mask, str) and mask.lower() == "none"):
            self._mask_mode, self._mask = "none", None
        elif isinstance(mask, str):
            if mask.lower() != "features":
                raise ValueError(f"mask must be one of {MASK_MODES} or a tensor, got {mask!r}")
            self._mask_mode, self._mask = "features", None
        elif isinstance(mask, Tensor):
            m = mask.detach()
            if m.ndim == 4 and m.shape[1] == 1:
                m = m[:, 0]
            if m.ndim == 2:
                m = m[None]
            if m.ndim != 3 or m.shape[0] == 0:
                raise ValueError(f"mask tensor must be [H, W], [B, H, W] or [B, 1, H, W], got {tuple(mask.shape)}")
            if not bool(torch.isfinite(m.float()).all()):
                raise ValueError("mask contains NaN or infinite values")
            self._mask_mode, self._mask = "tensor", m.float().clamp(0, 1).cpu()
        else:
            raise ValueError(f"mask must be a string or a tensor, got {type(mask).__name__}")
        self._mask_cache: dict[tuple, Tensor] = {}

        self._targets: Tensor | None = None  # [B, D] CPU float32, normalised
        self._anchor: Tensor | None = None  # [B, 3, H, W] CPU float32 in [0, 1]
        self.record = bool(record)
        self.trace: list[dict] = []
        if latent_prior is not None and not (callable(getattr(latent_prior, "encode", None))
                                             and callable(getattr(latent_prior, "decode", None))):
            raise TypeError("latent_prior must have encode(images) and decode(latents, grad=True) (a LatentPrior)")
        self.latent_prior = latent_prior

    # ----------------------------------------------------------------------------------- preparation
    @classmethod
    def for_crops(cls, recognizer: FaceRecognizer, images01: Tensor, **kwargs) -> "IdentityGuidance":
        """`IdentityGuidance(recognizer, **kwargs)` prepared with per-face targets/anchors from ``images01``."""
        return cls(recognizer, **kwargs).prepare(images01)

    def prepare(self, images01: Tensor | None = None, *, embeddings: Tensor | None = None,
                batch_size: int = 16) -> "IdentityGuidance":
        """Store per-face targets (and the fidelity anchor) for the crops about to be restored, in their order.

        ``images01``: the backbone estimates f(y) (or the LQ crops y) [B, 3, H, W] in [0, 1] — their embeddings
        become face i's target (unless a ``reference`` was given) and the images the fidelity anchor.
        ``embeddings``: [B, D] precomputed per-face targets instead (then no anchor unless images are given too).
        Replaces what an earlier `prepare` stored. Returns self.
        """
        if images01 is None and embeddings is None:
            raise ValueError("prepare needs images01 or embeddings")
        targets = anchor = None
        if images01 is not None:
            if not isinstance(images01, Tensor):
                raise ValueError(f"images01 must be a tensor, got {type(images01).__name__}")
            anchor = _as_channels_first_rgb(images01.detach(), "images01").float().clamp(0, 1).cpu().contiguous()
            if not bool(torch.isfinite(anchor).all()):
                raise ValueError("images01 contain NaN or infinite values")
            if embeddings is None:
                targets = embed_images(self.recognizer, anchor, batch_size)
        if embeddings is not None:
            if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
                raise ValueError(f"embeddings must be [B, D], got {getattr(embeddings, 'shape', type(embeddings))}")
            targets = _as_embeddings(self.recognizer, embeddings)
            if anchor is not None and anchor.shape[0] != targets.shape[0]:
                raise ValueError(f"prepare: {anchor.shape[0]} images but {targets.shape[0]} embeddings")
        if self._reference is not None and targets is not None and targets.shape[1] != self._reference.shape[1]:
            raise ValueError(f"per-face embeddings have size {targets.shape[1]}, "
                             f"the reference {self._reference.shape[1]}")
        self._targets, self._anchor = targets, anchor
        self._mask_cache = {k: v for k, v in self._mask_cache.items() if k[0] != "anchor"}
        return self

    @property
    def num_faces(self) -> int | None:
        """Number of faces the per-face data covers (targets, anchors, per-face masks); None = any number."""
        counts = [x.shape[0] for x in (self._targets if self._reference is None else None,
                                       self._anchor if self.fidelity > 0 else None,
                                       self._mask if self._mask is not None and self._mask.shape[0] > 1 else None)
                  if x is not None]
        return min(counts) if counts else None

    def validate(self, num_faces: int) -> None:
        """Raise ValueError unless this guidance can serve a `restore_faces` call on ``num_faces`` crops."""
        if self.strength > 0 and self._reference is None and self._targets is None:
            raise ValueError("IdentityGuidance has no target identity: pass reference=... or call prepare(images) "
                             "with the crops (or backbone estimates) before restore_faces")
        if self.fidelity > 0 and self._anchor is None:
            raise ValueError("fidelity > 0 needs prepare(images) (the backbone estimates to stay close to)")
        for name, x, per_face in (("target embeddings", self._targets, self._reference is None and self.strength > 0),
                                  ("fidelity anchors", self._anchor, self.fidelity > 0),
                                  ("masks", self._mask, self._mask is not None and self._mask.shape[0] > 1)):
            if per_face and x is not None and x.shape[0] != int(num_faces):
                raise ValueError(f"IdentityGuidance was prepared with {x.shape[0]} {name} but {num_faces} faces are "
                                 "being restored; prepare it with the same crops, in the same order")

    # ----------------------------------------------------------------------------------- per step
    def is_active(self, t: int) -> bool:
        """Whether a step at integer training timestep t lies in [end·T, start·T]."""
        T = self.num_train_timesteps
        return self.end * T <= int(t) <= self.start * T

    def sigma(self, t: int) -> float:
        return math.sqrt(1.0 - float(self.alphas_cumprod[int(t)]))

    def _mask_for(self, faces: Tensor, size: tuple[int, int], device: torch.device) -> Tensor | None:
        """[n, 1, H, W] float32 mask on ``device`` for the faces, or None (no mask)."""
        if self._mask_mode == "none":
            return None
        if self._mask_mode == "features":
            key = ("features", size, str(device))
            if key not in self._mask_cache:
                m = feature_mask(size[0], device) if size[0] == size[1] else F.interpolate(
                    feature_mask(max(size), "cpu")[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
                self._mask_cache[key] = m.to(device)[None, None]
            return self._mask_cache[key].expand(len(faces), -1, -1, -1)
        # Per-face data of every face stays on the CPU; only the chunk's rows go to the device.
        key = ("tensor", size)
        if key not in self._mask_cache:
            r = self._mask[:, None]
            if tuple(r.shape[-2:]) != size:
                r = resize_antialiased(r, size, mode="bilinear").clamp(0, 1)
                r = torch.where(r < 1e-6, torch.zeros_like(r), r)  # exact zeros stay zeros despite rounding
            self._mask_cache[key] = r
        r = self._mask_cache[key]
        if r.shape[0] == 1:
            shared = ("tensor", size, str(device))
            if shared not in self._mask_cache:
                self._mask_cache[shared] = r.to(device)
            return self._mask_cache[shared].expand(len(faces), -1, -1, -1)
        self._check_index(faces, r.shape[0], "masks")
        return r[faces.cpu()].to(device)

    @staticmethod
    def _check_index(faces: Tensor, n: int, name: str) -> None:
        if len(faces) and (int(faces.max()) >= n or int(faces.min()) < 0):
            raise ValueError(f"IdentityGuidance has {n} per-face {name} but the sampler asked for face "
                             f"{int(faces.max())}; prepare it with the same crops given to restore_faces")

    def _targets_for(self, faces: Tensor, device: torch.device) -> Tensor:
        if self._reference is not None:
            return self._reference.to(device).expand(len(faces), -1)
        if self._targets is None:
            raise ValueError("IdentityGuidance has no target identity: pass reference=... or call prepare(images) "
                             "with the crops (or backbone estimates) before restore_faces")
        self._check_index(faces, self._targets.shape[0], "target embeddings")
        return self._targets[faces.cpu()].to(device)

    def _anchor_for(self, faces: Tensor, size: tuple[int, int], device: torch.device) -> Tensor:
        if self._anchor is None:
            raise ValueError("fidelity > 0 needs prepare(images) (the backbone estimates to stay close to)")
        self._check_index(faces, self._anchor.shape[0], "fidelity anchors")
        key = ("anchor", size)
        if key not in self._mask_cache:  # kept on the CPU like the anchors; the chunk's rows go to the device
            a = self._anchor
            if self.latent_prior is not None:  # the anchor's latents (encoded at the prior's own resolution)
                s = int(self.latent_prior.sample_size)
                a = a if tuple(a.shape[-2:]) == (s, s) else resize_antialiased(a, (s, s)).clamp(0, 1)
                with torch.no_grad():
                    self._mask_cache[key] = self.latent_prior.encode(a).float().cpu()
                return self._mask_cache[key][faces.cpu()].to(device)
            if tuple(a.shape[-2:]) != size:
                a = resize_antialiased(a, size).clamp(0, 1)
            self._mask_cache[key] = a * 2 - 1
        return self._mask_cache[key][faces.cpu()].to(device)

    def encode_anchors(self, size: tuple[int, int]) -> "IdentityGuidance":
        """Make the fidelity anchors for x0 of spatial ``size`` now rather than at the first guided step (latent
        priors: one VAE encode of the prepared estimates). A sampler whose model must stay loaded while it samples
        (ComfyUI, where loading the VAE mid-sampling may unload the UNet) calls it before sampling. No-op without
        fidelity or prepared anchors. Returns self."""
        if self.fidelity > 0 and self._anchor is not None:
            self._anchor_for(torch.zeros(0, dtype=torch.long), (int(size[0]), int(size[1])), torch.device("cpu"))
        return self

    @property
    def substeps(self) -> int:
        """Recognizer evaluations per guided step: ceil(strength / substep), at most max_substeps (1 with cap)."""
        if self.substep is None or self.cap is not None or self.strength <= 0:
            return 1
        return max(1, min(self.max_substeps, math.ceil(self.strength / self.substep - 1e-9)))

    def _distance_gradient(self, x0: Tensor, target: Tensor, latent: bool, dev: torch.device) -> tuple[Tensor, Tensor]:
        """(1 − cos per face, ∂ Σ (1 − cos) / ∂ x0) at x0 (model space or latents)."""
        # ComfyUI runs nodes under torch.inference_mode(), which enable_grad() does not undo
        with torch.inference_mode(False), torch.enable_grad():
            target = target.clone()  # inference tensors cannot be saved for backward
            leaf = x0.clone().requires_grad_(True)
            # latent priors: the recognizer reads the decoded prediction, the gradient reaches the latent
            img = self.latent_prior.decode(leaf, grad=True).to(dev) if latent else (leaf + 1.0) * 0.5
            if img.shape[1] == 1:
                img = img.expand(-1, 3, -1, -1)
            emb = _embed(self.recognizer, img, grad=True)
            if emb.shape[1] != target.shape[1]:
                raise ValueError(f"recognizer embeddings have size {emb.shape[1]}, the target {target.shape[1]}")
            if not emb.requires_grad:
                raise RuntimeError("recognizer.embed returned a tensor without a graph: identity guidance needs "
                                   "an embed() that is differentiable w.r.t. its input (no torch.no_grad inside)")
            per_face = 1.0 - (emb.to(dev) * target).sum(1)
            (g,) = torch.autograd.grad(per_face.sum(), leaf)
        return per_face.detach(), torch.nan_to_num(g.float(), nan=0.0, posinf=0.0, neginf=0.0)

    def _step(self, g: Tensor, dist: Tensor, m: Tensor | None, sigma: float, strength: float) -> Tensor:
        """strength · STRENGTH_UNIT · σ_t · (m ⊙ g) / rms_m(g), Polyak-capped when ``cap`` is set (module docstring)."""
        if m is None:
            gm, dot = g, g.pow(2).flatten(1).sum(1)
            area = torch.full((g.shape[0],), float(g[0].numel()), device=g.device)
        else:
            gm, dot = g * m, (m * g.pow(2)).flatten(1).sum(1)  # dot = ⟨∇L, m ⊙ ∇L⟩ = Σ m·g²
            area = m.flatten(1).sum(1) * g.shape[1]
        rms = torch.sqrt(dot / area.clamp_min(1e-12))  # RMS of ∇L inside the (soft) mask
        scale = (strength * STRENGTH_UNIT * sigma) / rms.clamp_min(1e-30)
        if self.cap is not None:  # along −m ⊙ ∇L the linearised loss reaches 0 at scale = L / dot (Polyak)
            scale = torch.minimum(scale, self.cap * dist.clamp_min(0) / dot.clamp_min(1e-30))
        scale = torch.where(dot > 0, scale, torch.zeros_like(scale))
        return scale.view(-1, 1, 1, 1) * gm

    def __call__(self, x_t: Tensor, t: int, x0_pred: Tensor, *, faces: Tensor) -> Tensor:
        """The sampler hook: correction c [n, C, S, S] float32 on x0_pred's device (module docstring)."""
        zeros = torch.zeros_like(x0_pred, dtype=torch.float32)
        faces = torch.as_tensor(faces, dtype=torch.long).reshape(-1).cpu()
        if x0_pred.ndim != 4 or x0_pred.shape[0] != len(faces):
            raise ValueError(f"x0_pred {tuple(x0_pred.shape)} does not match {len(faces)} face indices")
        if (self.strength == 0 and self.fidelity == 0) or not self.is_active(t) or x0_pred.shape[0] == 0:
            return zeros
        latent = self.latent_prior is not None
        if not latent and x0_pred.shape[1] not in (1, 3):
            raise ValueError(f"identity guidance needs 1- or 3-channel images, got {x0_pred.shape[1]} channels "
                             "(latents? build it with latent_prior=the prior)")

        dev = recognizer_device_dtype(self.recognizer)[0] or x0_pred.device
        size = (int(x0_pred.shape[-2]), int(x0_pred.shape[-1]))
        sigma = self.sigma(t)
        x0 = x0_pred.detach().to(device=dev, dtype=torch.float32)
        m = self._mask_for(faces, size, dev)  # [n, 1, H, W] or None
        corr = torch.zeros_like(x0)
        dist = None

        if self.strength > 0:
            target = self._targets_for(faces, dev)
            k = self.substeps
            for i in range(k):  # k sub-steps of strength/k, each with the gradient where the last one ended
                point = x0 + corr
                if not latent:  # the sampler clips x0 to the data range: the recognizer sees what will be kept
                    point = point.clamp(-1.0, 1.0)
                d, g = self._distance_gradient(point, target, latent, dev)
                dist = d if dist is None else dist
                corr = corr - self._step(g, d, m, sigma, self.strength / k)

        if self.fidelity > 0:
            anchor = self._anchor_for(faces, size, dev)
            if not latent and anchor.shape[1] != x0.shape[1]:
                if x0.shape[1] == 1:  # gray prior: the anchor's BT.601 luma, as the sampler does
                    anchor = luma(anchor)
                else:
                    anchor = anchor.expand(-1, x0.shape[1], -1, -1)
            pull = x0 - anchor
            corr = corr - self.fidelity * sigma * (pull * m if m is not None else pull)

        if self.record:
            self.trace.append({"t": int(t), "faces": faces.tolist(),
                               "distance": None if dist is None else dist.float().cpu(),
                               "correction_rms": corr.pow(2).flatten(1).mean(1).sqrt().cpu(),
                               "evaluations": self.substeps if self.strength > 0 else 0})
        return corr.to(device=x0_pred.device, dtype=torch.float32)


__all__ = [
    "FaceRecognizer",
    "IdentityGuidance",
    "LatentCodec",
    "check_guidance_settings",
    "MASK_MODES",
    "STRENGTH_UNIT",
    "cosine_distance",
    "embed_images",
    "feature_mask",
    "recognizer_device_dtype",
]
