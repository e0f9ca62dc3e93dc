"""RetinaFace face detector (ResNet-50 and MobileNet-0.25), loading facexlib's released weights.

The network's parameter names are those of `detection_Resnet50_Final.pth` and
`detection_mobilenet0.25_Final.pth` (after the `module.` prefix is stripped), so the files load
strictly without conversion. The variant is read from the state dict's keys.

Model input convention (as trained): BGR, 0..255, minus the per-channel mean (104, 117, 123).
`RetinaFaceDetector.detect` takes RGB [0, 1] batches and does that conversion itself.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from ...archs.retinaface import RetinaFace, Variant, detect_variant
from ...models.holder import ModelHolder
from ..types import FaceDetections

# Anchor layout shared by both variants: one level per stride, two square anchors per cell.
_STEPS = (8, 16, 32)
_ANCHOR_SIZES = ((16.0, 32.0), (64.0, 128.0), (256.0, 512.0))
_VARIANCE = (0.1, 0.2)  # centre offset, log-size scale
_BGR_MEAN = (104.0, 117.0, 123.0)


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


RETINAFACE_HINT = ("Expected facexlib's detection_Resnet50_Final.pth or detection_mobilenet0.25_Final.pth "
                   "(in ComfyUI/models/facedetection).")


def _load_network(source, name: str | None = None) -> RetinaFace:
    """The RetinaFace in a file or prefix-free state dict, through the architecture registry."""
    from ...archs.registry import load_architecture

    return load_architecture(source, "detector", name=name, expected="RetinaFace", hint=RETINAFACE_HINT).module


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
        return cls(_load_network(sd, name))

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
    return RetinaFaceDetector(_load_network(path)).to(device, dtype)


__all__ = [
    "RETINAFACE_HINT",
    "RetinaFace",
    "RetinaFaceDetector",
    "decode",
    "detect_variant",
    "load_retinaface",
    "prior_boxes",
]
