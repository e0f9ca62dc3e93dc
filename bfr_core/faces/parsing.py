"""Face-parsing masks from facexlib's BiSeNet / ParseNet checkpoints (optional, nicer edges)."""
from __future__ import annotations

import os

import torch
from torch import Tensor

from .masks import feather_mask

# Parsing classes that belong to the face (CelebAMask-HQ order used by both facexlib models):
# 1 skin, 2-3 brows, 4-5 eyes, 6 glasses, 7-9 ears/earring, 10 nose, 11 mouth, 12-13 lips.
# Not face: 0 background, 14 neck, 15 necklace, 16 cloth, 17 hair, 18 hat.
FACE_CLASSES = tuple(range(1, 14))
_PARSER_KINDS = {"facexlib_bisenet": "bisenet", "facexlib_parsenet": "parsenet"}


class FaceParser:
    """A facexlib parsing network plus its own input normalisation."""

    def __init__(self, model: torch.nn.Module, kind: str) -> None:
        self.model = model.eval()
        self.kind = kind

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def labels(self, crops: Tensor, batch_size: int = 8) -> Tensor:
        """crops [N, 3, H, W] RGB in [0, 1] → class map [N, H, W] (long) on the crops' device.

        Runs ``batch_size`` crops at a time on the model's device, so memory does not grow with N.
        """
        if crops.ndim != 4 or crops.shape[1] != 3:
            raise ValueError(f"face parsing needs RGB crops [N, 3, H, W], got {tuple(crops.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return torch.cat([self._labels(crops[i:i + batch_size]) for i in range(0, crops.shape[0], batch_size)])

    def _labels(self, crops: Tensor) -> Tensor:
        import torch.nn.functional as F

        h, w = crops.shape[-2:]
        dtype = next(self.model.parameters()).dtype
        x = F.interpolate(crops.to(self.device, torch.float32), size=(512, 512), mode="bilinear",
                          align_corners=False, antialias=True).to(dtype)
        if self.kind == "bisenet":
            mean = torch.tensor([0.485, 0.456, 0.406], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            logits = self.model(((x - mean) / std).contiguous())[0]
        else:
            logits = self.model((x * 2 - 1).contiguous())[0]
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        return logits.argmax(1).to(crops.device)

    def mask(self, crops: Tensor, feather: float = 0.04) -> Tensor:
        """Soft face mask [N, H, W] in [0, 1]; `feather` is the edge width as a fraction of the crop."""
        labels = self.labels(crops)
        hard = torch.zeros_like(labels, dtype=torch.float32)
        for c in FACE_CLASSES:
            hard[labels == c] = 1.0
        size = crops.shape[-1]
        return feather_mask(hard[:, None], erode=feather * size * 0.5, sigma=feather * size * 0.5)[:, 0]


def load_face_parser(path: str | os.PathLike, device: torch.device | str = "cpu") -> FaceParser:
    """Load `parsing_bisenet.pth` or `parsing_parsenet.pth` (facexlib layout) without any download."""
    from ..archs.registry import load_architecture
    from ..models.files import check_licence

    check_licence(path)  # $BFR_COMMERCIAL_ONLY

    loaded = load_architecture(path, "parser", expected="facexlib face-parsing (parsing_bisenet.pth / parsing_parsenet.pth)",
                               hint="Put parsing_bisenet.pth in ComfyUI/models/facedetection.")
    return FaceParser(loaded.module.to(device), _PARSER_KINDS[loaded.arch.id])
