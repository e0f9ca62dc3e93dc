"""RetinaFace network (ResNet-50 and MobileNet-0.25) in the key layout of facexlib's released weights.

The parameter names are those of `detection_Resnet50_Final.pth` and `detection_mobilenet0.25_Final.pth` (after the
`module.` prefix is stripped), so the files load strictly without conversion; `detect_variant` reads the variant
from the keys. Anchors, decoding and the detector wrapper live in `bfr_core.faces.detection.retinaface`.
"""
from __future__ import annotations

import os
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ..models.checkpoint import load_strict

Variant = Literal["resnet50", "mobilenet0.25"]


# Keys that only one variant's state dict has.
_VARIANT_MARKERS: dict[Variant, str] = {
    "resnet50": "body.layer4.0.conv1.weight",
    "mobilenet0.25": "body.stage3.0.0.weight",
}
_HEAD_MARKER = "ClassHead.0.conv1x1.weight"


# ----------------------------------------------------------------------------------------------
# building blocks (Sequential indices fix the key names: 0 = conv, 1 = batch norm)


def _conv_norm(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, slope: float | None = 0.0
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm, followed by LeakyReLU(slope) unless slope is None."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if slope is not None:
        layers.append(nn.LeakyReLU(slope, inplace=True))
    return nn.Sequential(*layers)


def _depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 depthwise + 1x1 pointwise, each with BatchNorm and LeakyReLU(0.1), flat in one Sequential."""
    dw = _conv_norm(cin, cin, 3, stride, groups=cin, slope=0.1)
    pw = _conv_norm(cin, cout, 1, 1, slope=0.1)
    return nn.Sequential(*dw, *pw)


class _MobileNetBody(nn.Module):
    """MobileNetV1 x0.25 trunk; returns the stride 8, 16 and 32 feature maps (64, 128, 256 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_norm(3, 8, 3, 2, slope=0.1),
            _depthwise_separable(8, 16, 1),
            _depthwise_separable(16, 32, 2),
            _depthwise_separable(32, 32, 1),
            _depthwise_separable(32, 64, 2),
            _depthwise_separable(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            _depthwise_separable(64, 128, 2), *[_depthwise_separable(128, 128, 1) for _ in range(5)]
        )
        self.stage3 = nn.Sequential(_depthwise_separable(128, 256, 2), _depthwise_separable(256, 256, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        return [c3, c4, c5]


class _ResNet50Body(nn.Module):
    """torchvision's ResNet-50 trunk without pooling/fc; returns layer2..layer4 (512, 1024, 2048 ch)."""

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


class _FPN(nn.Module):
    """Top-down feature pyramid: 1x1 laterals, nearest upsampling, 3x3 merge convs."""

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int, slope: float) -> None:
        super().__init__()
        self.output1 = _conv_norm(in_channels[0], out_channels, 1, slope=slope)
        self.output2 = _conv_norm(in_channels[1], out_channels, 1, slope=slope)
        self.output3 = _conv_norm(in_channels[2], out_channels, 1, slope=slope)
        self.merge1 = _conv_norm(out_channels, out_channels, 3, slope=slope)
        self.merge2 = _conv_norm(out_channels, out_channels, 3, slope=slope)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        p3, p4, p5 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class _SSH(nn.Module):
    """Context module: concatenated 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches, then ReLU."""

    def __init__(self, channels: int, slope: float) -> None:
        super().__init__()
        half, quarter = channels // 2, channels // 4
        self.conv3X3 = _conv_norm(channels, half, 3, slope=None)
        self.conv5X5_1 = _conv_norm(channels, quarter, 3, slope=slope)
        self.conv5X5_2 = _conv_norm(quarter, quarter, 3, slope=None)
        self.conv7X7_2 = _conv_norm(quarter, quarter, 3, slope=slope)
        self.conv7x7_3 = _conv_norm(quarter, quarter, 3, slope=None)  # lower-case x as in the weights

    def forward(self, x: Tensor) -> Tensor:
        mid = self.conv5X5_1(x)
        b7 = self.conv7x7_3(self.conv7X7_2(mid))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(mid), b7], dim=1))


class _Head(nn.Module):
    """1x1 conv predicting `values` numbers per anchor; output [B, H*W*anchors, values]."""

    def __init__(self, channels: int, values: int, anchors: int = 2) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, anchors * values, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """The RetinaFace network. Input: BGR - mean, [B, 3, H, W]. Output (loc, conf, landmarks):
    loc [B, P, 4] box offsets, conf [B, P, 2] float32 softmax (index 1 = face), landmarks [B, P, 10]
    point offsets, P = all anchors of the three levels in (level, row, column, anchor) order."""

    def __init__(self, variant: Variant = "resnet50") -> None:
        super().__init__()
        if variant == "resnet50":
            self.body: nn.Module = _ResNet50Body()
            in_ch, ch = (512, 1024, 2048), 256
        elif variant == "mobilenet0.25":
            self.body = _MobileNetBody()
            in_ch, ch = (64, 128, 256), 64
        else:
            raise ValueError(f"unknown RetinaFace variant {variant!r}")
        self.variant: Variant = variant
        slope = 0.1 if ch <= 64 else 0.0  # the small model uses leaky activations in FPN/SSH
        self.fpn = _FPN(in_ch, ch, slope)
        self.ssh1, self.ssh2, self.ssh3 = _SSH(ch, slope), _SSH(ch, slope), _SSH(ch, slope)
        self.ClassHead = nn.ModuleList(_Head(ch, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(ch, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(ch, 10) for _ in range(3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p3, p4, p5 = self.fpn(self.body(x))
        feats = [self.ssh1(p3), self.ssh2(p4), self.ssh3(p5)]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        logits = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        landmarks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, F.softmax(logits, dim=-1, dtype=torch.float32), landmarks


# ---------------------------------------------------------------------------------------------- detection


def detect_variant(sd: Mapping[str, Tensor]) -> Variant | None:
    """Which RetinaFace a (prefix-free) state dict holds, or None if it is not a RetinaFace."""
    if _HEAD_MARKER not in sd:
        return None
    for variant, marker in _VARIANT_MARKERS.items():
        if marker in sd:
            return variant
    return None


def load_retinaface_network(sd: Mapping[str, Tensor], path: str | os.PathLike = "<state dict>") -> RetinaFace:
    """The RetinaFace described by a prefix-free state dict, strictly loaded (CheckpointError names the file)."""
    variant = detect_variant(sd)
    if variant is None:
        raise ValueError("not a RetinaFace state dict")
    model = RetinaFace(variant)
    load_strict(model, sd, path, f"RetinaFace {variant}")
    return model


__all__ = ["RetinaFace", "Variant", "detect_variant", "load_retinaface_network"]
