"""VGG feature extractors (torchvision's ``vgg16-397923af.pth`` / ``vgg19-dcbb9e9d.pth`` layout) for a perceptual
loss: only the ``features.*`` convolutions are built (the classifier's tensors in the file are not needed).

The layer list is read from the file: ``features.{i}.weight`` are the 3×3 convolutions (each followed by a ReLU);
a gap of three indices between two convolutions holds a max-pool. `VGGFeatures` returns the activations after
the last ReLU before each pool (relu1_2, relu2_2, relu3_3, relu4_3, … for VGG16), the layers perceptual losses
(LPIPS, basicsr's PerceptualLoss) compare.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import Tensor, nn

from ..models.checkpoint import load_strict
from ..models.errors import CheckpointError

__all__ = ["VGGFeatures", "is_vgg_state_dict", "load_vgg_features"]

# ImageNet statistics torchvision's VGG weights were trained with (RGB in [0, 1] in).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_indices(sd: Mapping[str, Tensor]) -> list[int]:
    return sorted(int(k.split(".")[1]) for k in sd if k.startswith("features.") and k.endswith(".weight"))


def is_vgg_state_dict(sd: Mapping[str, Tensor]) -> bool:
    first = sd.get("features.0.weight")
    return (first is not None and tuple(first.shape) == (64, 3, 3, 3)
            and all(k.startswith(("features.", "classifier.")) for k in sd) and len(_conv_indices(sd)) >= 8)


class VGGFeatures(nn.Module):
    """``features`` as torchvision numbers them (conv, ReLU, …, pool); ``forward`` → the pre-pool activations."""

    def __init__(self, conv_channels: list[tuple[int, int]], conv_indices: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        self.taps: list[int] = []  # indices (into layers) whose outputs are returned
        for n, ((cin, cout), i) in enumerate(zip(conv_channels, conv_indices)):
            while len(layers) < i:  # the gap before this conv: a pool after the previous ReLU
                self.taps.append(len(layers) - 1)
                layers.append(nn.MaxPool2d(2, 2))
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=False)]
        self.taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x01: Tensor) -> list[Tensor]:
        x = (x01 - self.mean.to(x01.dtype)) / self.std.to(x01.dtype)
        out, taps = [], set(self.taps)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                out.append(x)
        return out


def load_vgg_features(sd: Mapping[str, Tensor], path: str | os.PathLike) -> VGGFeatures:
    """The strictly loaded `VGGFeatures` of a torchvision-layout VGG state dict (prefix-free keys)."""
    idx = _conv_indices(sd)
    channels = [(int(sd[f"features.{i}.weight"].shape[1]), int(sd[f"features.{i}.weight"].shape[0])) for i in idx]
    for (a, b), (i, j) in zip(zip(idx, idx[1:]), zip(channels, channels[1:])):
        if b - a not in (2, 3) or i[1] != j[0]:  # a conv+ReLU (2) or conv+ReLU+pool (3) between two convs
            raise CheckpointError(f"{path} does not have torchvision's VGG layout (features.{a} → features.{b})")
    net = VGGFeatures(channels, idx)
    load_strict(net, {k: v for k, v in sd.items() if k.startswith("features.")}, path, "VGG (torchvision) features")
    return net.eval()
