"""Training helpers for restoration backbones loaded by `bfr_core.restoration.backbones.load_restorer`.

`load_restorer` returns a frozen module in eval mode (inference). Whether to fine-tune is the caller's choice:

    f = load_restorer("swinir_restoration512_L1.pth")
    trainable(f)                                  # parameters require grad, train mode
    opt = torch.optim.Adam(f.parameters(), 1e-5)
    ...                                           # f(y) is differentiable (no inference mode inside)
    freeze(f)                                     # back to eval + frozen
    save_backbone(f, "swinir_adapted.pth")        # same wrapper/prefix/keys as the file it came from

The wrappers' resize/clamp stay in the graph (clamp passes no gradient where the output saturates).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from ..models.checkpoint import CheckpointError, CheckpointLayout, write_state_dict

Layout = Literal["original", "safetensors"]


def _network(backbone: torch.nn.Module) -> torch.nn.Module:
    if not isinstance(backbone, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module backbone (from load_restorer), got {type(backbone).__name__}")
    return getattr(backbone, "model", backbone)


def trainable(backbone: torch.nn.Module, train: bool = True) -> torch.nn.Module:
    """Unfreeze every parameter of ``backbone`` and put it in train mode (``train=False``: eval mode, e.g. to
    fine-tune without dropout/BatchNorm updates). Returns ``backbone``.

    Raises ValueError for a backbone without parameters (the identity restorer, 'none') and TypeError for one
    whose parameters are not floating point (e.g. quantised), which gradients cannot reach.
    """
    net = _network(backbone)
    params = list(backbone.parameters())
    if not params:
        name = getattr(backbone, "architecture", type(backbone).__name__)
        raise ValueError(f"the {name} backbone has no parameters to train (restorer 'none' is the identity); load a "
                         f"backbone file with load_restorer to fine-tune it")
    bad = [p.dtype for p in params if not (p.is_floating_point() or p.is_complex())]
    if bad:
        raise TypeError(f"backbone parameters of dtype {bad[0]} cannot be differentiated; load it in float32/bfloat16")
    for p in params:
        p.requires_grad_(True)
    backbone.train(train)
    net.train(train)
    return backbone


def freeze(backbone: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, gradients off: the state `load_restorer` returns. Returns ``backbone``."""
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


def save_backbone(backbone: torch.nn.Module, path: str | os.PathLike, layout: Layout = "original") -> Path:
    """Write ``backbone``'s current weights to ``path`` (atomically) so `load_restorer`, spandrel's ``ModelLoader``
    and other packs can load them.

    ``layout="original"``: the layout of the file the backbone was loaded from — the same wrapper keys (DifFace's
    ``{'state_dict': …}``, basicsr's ``{'params_ema': …}``), the same ``module.`` prefix and the same tensor keys
    (names spandrel changed while loading are mapped back), as a torch pickle; a backbone loaded from a
    .safetensors file is written as safetensors. ``layout="safetensors"``: a flat safetensors file with the same
    (prefix-free) keys. Backbones not loaded from a file (no recorded origin) are saved with their own
    ``state_dict`` keys, as safetensors only.
    """
    if layout not in ("original", "safetensors"):
        raise ValueError(f"layout must be 'original' or 'safetensors', got {layout!r}")
    net = _network(backbone)
    origin = getattr(backbone, "origin", None)
    if origin is None:
        if not list(net.state_dict()):
            raise ValueError("this backbone has no weights to save (restorer 'none' is the identity)")
        if layout == "original":
            raise ValueError("this backbone was not loaded from a file (no recorded layout): use layout='safetensors'")
        return write_state_dict(net.state_dict(), path, CheckpointLayout(format="safetensors"))
    params = {name for name, _ in net.named_parameters()}
    lost = [k for k in origin.not_in_file if k in params]
    if lost:
        raise CheckpointError(
            f"cannot write {path} in the layout of {origin.path}: {len(lost)} parameters of the loaded network have "
            f"no counterpart in that file (e.g. {lost[:3]}); the loader transformed them")
    sd = origin.file_state_dict(net)
    out_layout = origin.layout if layout == "original" else CheckpointLayout(format="safetensors")
    return write_state_dict(sd, path, out_layout)
