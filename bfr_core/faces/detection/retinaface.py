"""RetinaFace face detector (ResNet-50 and MobileNet-0.25), loading facexlib's released weights.

The network's parameter names are those of `detection_Resnet50_Final.pth` and
`detection_mobilenet0.25_Final.pth` (after the `module.` prefix is stripped), so the files load
strictly without conversion. The variant is read from the state dict's keys.

Model input convention (as trained): BGR, 0..255, minus the per-channel mean (104, 117, 123).
`RetinaFaceDetector.detect` takes RGB [0, 1] batches and does that conversion itself.
"""
from __future__ import annotations

import os
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ...models.checkpoint import load_state_dict, load_strict, wrong_kind_error
from ...models.holder import ModelHolder
from ..types import FaceDetections

Variant = Literal["resnet50", "mobilenet0.25"]

# Anchor layout shared by both variants: one level per stride, two square anchors per cell.
_STEPS = (8, 16, 32)
_ANCHOR_SIZES = ((16.0, 32.0), (64.0, 128.0), (256.0, 512.0))
_VARIANCE = (0.1, 0.2)  # centre offset, log-size scale
_BGR_MEAN = (104.0, 117.0, 123.0)

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


# ----------------------------------------------------------------------------------------------
# anchors and decoding (in pixels; identical to decoding normalised coordinates and rescaling)


def prior_boxes(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """Anchors [P, 4] as (cx, cy, w, h) in pixels, in the network's output order."""
    out = []
    for step, sizes in zip(_STEPS, _ANCHOR_SIZES):
        rows, cols = -(-height // step), -(-width // step)  # ceil: each stride-2 layer rounds up
        cy = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) * step
        cx = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) * step
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([gx, gy], dim=-1)[:, :, None, :].expand(rows, cols, len(sizes), 2)
        wh = torch.tensor(sizes, dtype=torch.float32, device=device)[None, None, :, None]
        wh = wh.expand(rows, cols, len(sizes), 2)
        out.append(torch.cat([centres, wh], dim=-1).reshape(-1, 4))
    return torch.cat(out, dim=0)


def decode(loc: Tensor, landmarks: Tensor, priors: Tensor) -> tuple[Tensor, Tensor]:
    """Offsets [B, P, 4] / [B, P, 10] + priors [P, 4] -> boxes [B, P, 4] x1y1x2y2, points [B, P, 5, 2]."""
    centre, size = priors[:, :2], priors[:, 2:]
    box_c = centre + loc[..., :2] * _VARIANCE[0] * size
    box_wh = size * torch.exp(loc[..., 2:] * _VARIANCE[1])
    boxes = torch.cat([box_c - box_wh / 2, box_c + box_wh / 2], dim=-1)
    pts = landmarks.reshape(*landmarks.shape[:-1], 5, 2)
    points = centre[:, None, :] + pts * _VARIANCE[0] * size[:, None, :]
    return boxes, points


# ----------------------------------------------------------------------------------------------
# detector


def detect_variant(sd: Mapping[str, Tensor]) -> Variant | None:
    """Which RetinaFace a (prefix-free) state dict holds, or None if it is not a RetinaFace."""
    if _HEAD_MARKER not in sd:
        return None
    for variant, marker in _VARIANT_MARKERS.items():
        if marker in sd:
            return variant
    return None


class RetinaFaceDetector(ModelHolder):
    """A loaded RetinaFace plus pre/post-processing. `model` is the plain nn.Module (eval, no grad)."""

    def __init__(self, model: RetinaFace) -> None:
        self.model = model.eval().requires_grad_(False)
        self._priors: dict[tuple[int, int, str], Tensor] = {}

    @property
    def variant(self) -> Variant:
        return self.model.variant

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], name: str = "<state dict>") -> "RetinaFaceDetector":
        """Build from a prefix-free state dict; `name` (usually the file path) appears in errors."""
        variant = detect_variant(sd)
        if variant is None:
            raise wrong_kind_error(
                name, "RetinaFace", sd,
                hint="Expected facexlib's detection_Resnet50_Final.pth or detection_mobilenet0.25_Final.pth.",
            )
        model = RetinaFace(variant)
        load_strict(model, sd, name, f"RetinaFace {variant}")
        return cls(model)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "RetinaFaceDetector":
        self.model.to(device=device, dtype=dtype)
        return self

    def _priors_for(self, height: int, width: int, device: torch.device) -> Tensor:
        key = (height, width, str(device))
        priors = self._priors.get(key)
        if priors is None:
            if len(self._priors) >= 16:  # many distinct sizes (e.g. a folder of photos): start over
                self._priors.clear()
            priors = self._priors[key] = prior_boxes(height, width, device)
        return priors

    def forward_raw(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Network outputs (float32) for RGB [0, 1] images [B, 3, H, W], without decoding."""
        mean = torch.tensor(_BGR_MEAN, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        x = images.to(device=self.device, dtype=torch.float32).flip(1) * 255.0 - mean
        loc, conf, landmarks = self.model(x.to(self.dtype))
        return loc.float(), conf.float(), landmarks.float()

    def detect(
        self,
        images: Tensor,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_size: int | None = None,
    ) -> list[FaceDetections]:
        """Detect faces in RGB [0, 1] images [B, 3, H, W] (any device; one batched forward).

        Returns one FaceDetections per image, on CPU in float32, in that image's pixel coordinates,
        sorted by score (highest first). Keeps anchors with score > score_threshold, then NMS at
        IoU nms_threshold per image.
        max_size: if given and the longer side exceeds it, the batch is downscaled (antialiased
        bilinear) so the longer side is max_size before detection, and results are scaled back.
        Saves time and memory on huge photos at the cost of missing the smallest faces; None
        (default) detects at full resolution, like facexlib with use_origin_size=True.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        with torch.inference_mode():
            x = images.to(device=self.device, dtype=torch.float32)
            sx = sy = 1.0
            if max_size is not None and max(height, width) > max_size:
                factor = max_size / max(height, width)
                size = (max(1, round(height * factor)), max(1, round(width * factor)))
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
                sy, sx = height / size[0], width / size[1]
            loc, conf, pts = self.forward_raw(x)
            boxes, points = decode(loc, pts, self._priors_for(x.shape[-2], x.shape[-1], x.device))
            scale = torch.tensor([sx, sy], device=boxes.device)
            boxes, points = boxes * scale.repeat(2), points * scale
            scores = conf[..., 1]

            # threshold over the whole batch, then one NMS call with the image index as category
            img_idx, anchor_idx = torch.nonzero(scores > score_threshold, as_tuple=True)
            sel_boxes = boxes[img_idx, anchor_idx]
            sel_scores = scores[img_idx, anchor_idx]
            keep = torchvision.ops.batched_nms(sel_boxes, sel_scores, img_idx, nms_threshold)  # score-sorted
            keep_img = img_idx[keep].cpu()
            found = (sel_boxes[keep].cpu(), points[img_idx[keep], anchor_idx[keep]].cpu(), sel_scores[keep].cpu())
        # clone outside inference mode so callers may use the results in autograd code
        out_boxes, out_points, out_scores = (t.clone() for t in found)
        results = []
        for b in range(images.shape[0]):
            sel = keep_img == b
            results.append(FaceDetections(out_boxes[sel], out_points[sel], out_scores[sel]))
        return results

    __call__ = detect


def load_retinaface(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> RetinaFaceDetector:
    """Load facexlib's `detection_Resnet50_Final.pth` / `detection_mobilenet0.25_Final.pth` (or a
    .safetensors with the same keys). Raises CheckpointError naming the file on any problem."""
    sd = load_state_dict(path)
    return RetinaFaceDetector.from_state_dict(sd, name=str(path)).to(device, dtype)


__all__ = [
    "RetinaFace",
    "RetinaFaceDetector",
    "decode",
    "detect_variant",
    "load_retinaface",
    "prior_boxes",
]
