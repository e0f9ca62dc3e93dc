"""facexlib's face-parsing networks (BiSeNet `parsing_bisenet.pth`, ParseNet `parsing_parsenet.pth`).

The networks are facexlib's own classes, imported only when a file is loaded (facexlib is an optional
dependency); this file holds their key-based detectors and strict builders for the registry. Both predict the
19 CelebAMask-HQ classes; the pre/post-processing lives in `bfr_core.faces.parsing.FaceParser`.
"""
from __future__ import annotations

import os
from typing import Mapping

from torch import Tensor, nn

__all__ = ["is_bisenet_state_dict", "is_parsenet_state_dict", "load_bisenet", "load_parsenet"]

NUM_CLASSES = 19


def is_bisenet_state_dict(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("cp.resnet.") for k in sd)


def is_parsenet_state_dict(sd: Mapping[str, Tensor]) -> bool:
    return "out_mask_conv.conv2d.weight" in sd and any(k.startswith("encoder.") for k in sd)


def _facexlib_missing(exc: ImportError, path) -> Exception:
    from ..models.checkpoint import CheckpointError

    return CheckpointError(f"{path}: loading a face-parsing model needs the 'facexlib' package "
                           f"(`pip install facexlib`) ({exc})")


def load_bisenet(sd: Mapping[str, Tensor], path: str | os.PathLike = "<state dict>") -> nn.Module:
    from ..models.checkpoint import load_strict

    try:
        from facexlib.parsing.bisenet import BiSeNet
    except ImportError as exc:
        raise _facexlib_missing(exc, path) from exc
    model = BiSeNet(num_class=NUM_CLASSES)
    load_strict(model, sd, path, "facexlib bisenet")
    return model


def load_parsenet(sd: Mapping[str, Tensor], path: str | os.PathLike = "<state dict>") -> nn.Module:
    from ..models.checkpoint import load_strict

    try:
        from facexlib.parsing.parsenet import ParseNet
    except ImportError as exc:
        raise _facexlib_missing(exc, path) from exc
    model = ParseNet(in_size=512, out_size=512, parsing_ch=NUM_CLASSES)
    load_strict(model, sd, path, "facexlib parsenet")
    return model
