"""An optional perceptual term for fine-tuning: L1 between VGG features of output and target.

Only from weights the user has (torchvision's ``vgg16-397923af.pth`` or ``vgg19-dcbb9e9d.pth``, or a safetensors
copy); nothing is ever downloaded. DT-BFR weights LPIPS(VGG) by 0.1 next to L1; this is the plain VGG-feature
distance (basicsr's PerceptualLoss style: mean absolute difference per layer, layers averaged), without LPIPS's
learned per-channel weights.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from ..archs.registry import load_architecture

__all__ = ["PerceptualLoss", "load_perceptual"]


class PerceptualLoss(torch.nn.Module):
    """``loss(output, target)``: images [B, 3, H, W] in [0, 1] → scalar; the network is frozen (gradients reach the
    output only)."""

    def __init__(self, features: torch.nn.Module):
        super().__init__()
        self.features = features.eval()
        for p in self.features.parameters():
            p.requires_grad_(False)

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            ref = self.features(target)
        got = self.features(output)
        return torch.stack([(a.float() - b.float()).abs().mean() for a, b in zip(got, ref)]).mean()


def load_perceptual(path: str | os.PathLike, device: str | torch.device = "cpu") -> PerceptualLoss:
    """The perceptual loss of a VGG weights file (torchvision layout); a clear CheckpointError otherwise."""
    loaded = load_architecture(path, "perceptual", expected="torchvision VGG16/VGG19 file (vgg16-397923af.pth)",
                               hint="the perceptual term needs torchvision's VGG16/VGG19 ImageNet weights; leave it "
                                    "out to train with L1 alone")
    return PerceptualLoss(loaded.module.to(device))
