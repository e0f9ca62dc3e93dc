"""Colour fixes for a prior's output against the image it started from (AuthFace's options, our own code).

A latent prior re-generates the face from a partly noised latent; its colours drift (VAE round trip, prompt, CFG).
Both fixes keep the restored detail and take the colours of the reference (the backbone's estimate):

* ``"wavelet"``: a stationary wavelet-style split into detail and a low-pass residual (`wavelet_lowpass`: 5 levels
  of a 3×3 binomial blur with dilation 1, 2, 4, 8, 16, replicate padding); result = restored − its low-pass +
  the reference's low-pass. Changes only the smooth colour/tone (structures wider than ~60 px at level 5).
* ``"adain"``: per image and channel, the restored image's mean and standard deviation replaced by the
  reference's (global statistics).
* ``"none"``: the restored image unchanged.

Both work on [B, C, H, W] float tensors in [0, 1] of the same shape and return them clamped to [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["COLOR_FIX_MODES", "adain_color_fix", "apply_color_fix", "check_color_fix", "wavelet_color_fix",
           "wavelet_lowpass"]

COLOR_FIX_MODES = ("wavelet", "adain", "none")
WAVELET_LEVELS = 5


def check_color_fix(mode: str) -> str:
    """``mode`` lower-cased, or ValueError naming the choices."""
    m = str(mode).lower()
    if m not in COLOR_FIX_MODES:
        raise ValueError(f"color_fix must be one of {COLOR_FIX_MODES}, got {mode!r}")
    return m


def wavelet_lowpass(x: Tensor, levels: int = WAVELET_LEVELS) -> Tensor:
    """The low-frequency residual after ``levels`` dilated 3×3 binomial blurs (à trous), same shape as x."""
    k1 = x.new_tensor([1.0, 2.0, 1.0])
    kernel = (k1[:, None] * k1[None, :] / 16.0).expand(x.shape[1], 1, 3, 3).contiguous()
    for i in range(levels):
        d = 2 ** i
        pad = min(d, x.shape[-1] - 1, x.shape[-2] - 1)
        if pad < 1:
            break
        x = F.conv2d(F.pad(x, (pad,) * 4, mode="replicate"), kernel, dilation=pad, groups=x.shape[1])
    return x


def wavelet_color_fix(restored: Tensor, reference: Tensor) -> Tensor:
    return (restored - wavelet_lowpass(restored) + wavelet_lowpass(reference)).clamp(0, 1)


def adain_color_fix(restored: Tensor, reference: Tensor) -> Tensor:
    mu_r, sd_r = restored.mean((2, 3), keepdim=True), restored.std((2, 3), keepdim=True)
    mu_o, sd_o = reference.mean((2, 3), keepdim=True), reference.std((2, 3), keepdim=True)
    return ((restored - mu_r) * (sd_o / sd_r.clamp_min(1e-6)) + mu_o).clamp(0, 1)


def apply_color_fix(restored: Tensor, reference: Tensor, mode: str) -> Tensor:
    """The colour fix ``mode`` (module docstring) of ``restored`` toward ``reference`` ([B, C, H, W], same shape)."""
    mode = check_color_fix(mode)
    if restored.shape != reference.shape:
        raise ValueError(f"color fix: restored {tuple(restored.shape)} and reference {tuple(reference.shape)} differ")
    if mode == "none":
        return restored
    with torch.no_grad():
        return (wavelet_color_fix if mode == "wavelet" else adain_color_fix)(restored.float(), reference.float())
