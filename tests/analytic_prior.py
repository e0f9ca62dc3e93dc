"""An exact, weight-free diffusion prior for honest quality tests (DESIGN.md §6).

For an empirical data distribution p(x0) = 1/K Σ_k δ(x0 − x_k) and the forward process
x_t = sqrt(ā_t)·x0 + sqrt(1 − ā_t)·ε, the posterior mean is a softmax-weighted mean of the K images,

    E[x0 | x_t] = Σ_k w_k x_k,   w_k ∝ exp(−‖x_t − sqrt(ā_t)·x_k‖² / (2(1 − ā_t))),

and the optimal ε-predictor (what a perfectly trained UNet converges to) is

    ε*(x_t, t) = (x_t − sqrt(ā_t)·E[x0 | x_t]) / sqrt(1 − ā_t).

Plugging ε* in where the UNet goes makes a restoration test exact: DifFace started from a degraded copy of
x_k must end on x_k when the schedule, the transition x_N = sqrt(ā_N)·x0 + sqrt(1−ā_N)·ε and the sampler are
right; a wrong one lands elsewhere or leaves noise behind.

Importable by tests and benches: ``from analytic_prior import AnalyticPrior, load_face_set`` with ``tests/``
on ``sys.path`` (pytest's default rootdir/`prepend` import mode puts it there; benches insert it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000


def linear_alphas_cumprod(num_steps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """ā_t of the DDPM/DifFace linear schedule (float64, computed like guided-diffusion: numpy float64)."""
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    return torch.from_numpy(np.cumprod(1.0 - betas))


class AnalyticDenoiser(torch.nn.Module):
    """ε*(x_t, t) of the empirical distribution of ``images`` ([K,C,S,S] in [-1, 1]) under ``alphas_cumprod``.

    ``learned_variance=True`` appends C garbage channels (like DifFace's 6-channel UNet) that a correct
    DDIM/DPM-Solver must ignore. Computes in float64, returns the input's dtype.
    """

    def __init__(self, images: Tensor, alphas_cumprod: Tensor, learned_variance: bool = False):
        super().__init__()
        if images.ndim != 4:
            raise ValueError("images must be [K, C, S, S]")
        self.register_buffer("images", images.to(torch.float64), persistent=False)
        self.register_buffer("flat", images.to(torch.float64).flatten(1), persistent=False)
        self.register_buffer("sq_norms", (images.to(torch.float64).flatten(1) ** 2).sum(1), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float64), persistent=False)
        self.learned_variance = learned_variance

    def posterior_weights(self, x_t: Tensor, t: Tensor) -> Tensor:
        """w_k(x_t) as [B, K] (float64)."""
        abar = self.alphas_cumprod.to(x_t.device)[t.long()]  # [B]
        a, s2 = abar.sqrt()[:, None], (1.0 - abar)[:, None]
        x = x_t.to(torch.float64).flatten(1)
        # −‖x − a·x_k‖²/(2 s²) up to a k-independent term: (a<x, x_k> − a²‖x_k‖²/2) / s²
        logits = (a * (x @ self.flat.T) - 0.5 * a * a * self.sq_norms[None]) / s2
        return torch.softmax(logits, dim=1)

    def posterior_mean(self, x_t: Tensor, t: Tensor) -> Tensor:
        w = self.posterior_weights(x_t, t)
        return (w @ self.flat).view(x_t.shape)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        abar = self.alphas_cumprod.to(x_t.device)[t.long()].view(-1, 1, 1, 1)
        x0 = self.posterior_mean(x_t, t)
        eps = (x_t.to(torch.float64) - abar.sqrt() * x0) / (1.0 - abar).sqrt()
        if self.learned_variance:  # extra channels a sampler must not read
            eps = torch.cat([eps, torch.full_like(eps, 123.0)], dim=1)
        return eps.to(x_t.dtype)


class AnalyticPrior:
    """The `DenoiserPrior` interface around `AnalyticDenoiser` (images given in [0, 1])."""

    def __init__(
        self,
        images01: Tensor,
        alphas_cumprod: Tensor | None = None,
        learned_variance: bool = False,
        model_alphas_cumprod: Tensor | None = None,
    ):
        """``model_alphas_cumprod`` lets a test give the *denoiser* a different schedule than the one the
        prior reports to the sampler (a deliberately wrong schedule)."""
        acp = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.to(torch.float64)
        self.images01 = images01.to(torch.float32)
        self.alphas_cumprod = acp
        self.model = AnalyticDenoiser(
            images01 * 2 - 1, acp if model_alphas_cumprod is None else model_alphas_cumprod, learned_variance
        )
        self.sample_size = int(images01.shape[-1])
        self.in_channels = int(images01.shape[1])
        self.learned_variance = learned_variance


# ----------------------------------------------------------------------------------------- latent space
class _Dist:
    def __init__(self, mean: Tensor):
        self.mean = mean

    def mode(self) -> Tensor:
        return self.mean


class ToyVAE(torch.nn.Module):
    """Exactly invertible 'VAE' with AutoencoderKL's interface (``encode(x).latent_dist.mean``, ``decode(z).sample``,
    ``config``): [B, 3, S, S] in [−1, 1] → PixelUnshuffle(2) → a fixed orthogonal 1×1 conv → [B, 12, S/2, S/2];
    decode = the exact inverse (or the identity with ``identity``). With `AnalyticDenoiser` over the encoded faces
    it makes an exact prior in latent space. Differentiable (latent identity guidance backpropagates through it)."""

    def __init__(self, identity: bool = False, seed: int = 0):
        super().__init__()
        from types import SimpleNamespace

        self.identity = identity
        q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        self.register_buffer("q", q.float())
        self.config = SimpleNamespace(block_out_channels=(8,) if identity else (8, 16), scaling_factor=1.0)

    def encode(self, x: Tensor):
        from types import SimpleNamespace

        if self.identity:
            return SimpleNamespace(latent_dist=_Dist(x))
        z = torch.einsum("oc,bchw->bohw", self.q, F.pixel_unshuffle(x, 2))
        return SimpleNamespace(latent_dist=_Dist(z))

    def decode(self, z: Tensor):
        from types import SimpleNamespace

        if self.identity:
            return SimpleNamespace(sample=z)
        return SimpleNamespace(sample=F.pixel_shuffle(torch.einsum("oc,bohw->bchw", self.q, z), 2))


# ----------------------------------------------------------------------------------------- data helpers
def read_rgb01(path: str | Path, size: int | None = None) -> Tensor:
    """[3,H,W] float32 RGB in [0,1] from an image file, optionally INTER_AREA-resized to size×size."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    if size is not None and bgr.shape[:2] != (size, size):
        bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
    rgb = bgr[:, :, ::-1].astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def load_face_set(paths: Sequence[str | Path], size: int = 64, flips: bool = True) -> Tensor:
    """K faces [K,3,size,size] in [0,1]: the images, plus their mirror images when ``flips``."""
    faces = torch.stack([read_rgb01(p, size) for p in sorted(paths)])
    if flips:
        faces = torch.cat([faces, faces.flip(-1)])
    return faces


def contrast_variants(faces01: Tensor, factors: Sequence[float]) -> Tensor:
    """Distractors: each face with its deviation from its own mean scaled by each factor (clamped to [0,1]),
    concatenated in factor order. Faces that differ from the truth only in contrast make a restoration test
    sensitive to a wrong signal scale in the transition (x_N = sqrt(ā)·x0 + …): too much signal lands on the
    high-contrast copy, too little on the low-contrast one."""
    mean = faces01.mean(dim=(1, 2, 3), keepdim=True)
    return torch.cat([(mean + f * (faces01 - mean)).clamp(0, 1) for f in factors])


def degrade(img01: Tensor, seed: int = 0, blur_sigma: float = 1.5, down: int = 4, noise: float = 0.05, jpeg: int = 40) -> Tensor:
    """Blind-face-restoration style degradation of [3,H,W] in [0,1]: Gaussian blur → ×1/down bicubic →
    Gaussian noise → JPEG → bicubic back up. Returns [3,H,W] in [0,1]. Deterministic for a seed."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = img01.shape[-2:]
    x = (img01.permute(1, 2, 0).numpy()[:, :, ::-1] * 255.0).astype(np.float32)  # BGR 0..255
    x = cv2.GaussianBlur(x, (0, 0), blur_sigma)
    x = cv2.resize(x, (w // down, h // down), interpolation=cv2.INTER_CUBIC)
    x = x + rng.normal(0.0, noise * 255.0, x.shape).astype(np.float32)
    x = np.clip(x, 0, 255).round().astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", x, [int(cv2.IMWRITE_JPEG_QUALITY), jpeg])
    assert ok
    x = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    x = cv2.resize(x, (w, h), interpolation=cv2.INTER_CUBIC)
    rgb = x[:, :, ::-1].astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).clamp(0, 1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB per image of [...,C,H,W] tensors in [0,1] (inf-safe: MSE floored at 1e-12)."""
    mse = ((a.double() - b.double()) ** 2).flatten(-3).mean(-1).clamp_min(1e-12)
    return 10.0 * torch.log10(1.0 / mse)


def nearest_index(x01: Tensor, faces01: Tensor) -> Tensor:
    """Index of the nearest face (L2) for each image of x01 [B,C,H,W]."""
    d = torch.cdist(x01.flatten(1).double(), faces01.flatten(1).double())
    return d.argmin(1)


def downsize(x01: Tensor, size: int) -> Tensor:
    return F.interpolate(x01, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


__all__ = [
    "AnalyticDenoiser",
    "AnalyticPrior",
    "ToyVAE",
    "contrast_variants",
    "degrade",
    "downsize",
    "linear_alphas_cumprod",
    "load_face_set",
    "nearest_index",
    "psnr",
    "read_rgb01",
]
