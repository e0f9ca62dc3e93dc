"""Safe checkpoint reading shared by every loader.

Only safetensors or `torch.load(weights_only=True)`: a checkpoint is never allowed to run code.
The official releases wrap their weights differently (`state_dict`, `params_ema`, `params`,
`module.` prefixes from DataParallel); `unwrap_state_dict` accepts all of them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "ema")


class CheckpointError(RuntimeError):
    """A model file is missing, unreadable or not the kind that was expected."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a .safetensors / .pth / .pt / .ckpt / .bin file without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, wrong format...
        from .files import expectation_hint

        raise CheckpointError(
            f"cannot read model file {path} ({type(exc).__name__}: {exc}). The file may be truncated "
            f"or not a PyTorch/safetensors checkpoint; download it again "
            f"(`python -m bfr_core models` checks every known file's sha256){expectation_hint(path)}."
        ) from exc


def unwrap_state_dict(obj: Mapping) -> dict[str, Tensor]:
    """Return the flat tensor dict inside the usual official wrappers, without `module.` prefixes."""
    sd = obj
    for _ in range(3):  # wrappers can nest, e.g. {'state_dict': {'params_ema': ...}}
        if not isinstance(sd, Mapping):
            break
        if any(isinstance(v, Tensor) for v in sd.values()):
            break
        for key in _WRAPPER_KEYS:
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
        else:
            break
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"expected a state dict, found {type(sd).__name__}")
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            continue
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    if not out:
        raise CheckpointError("the checkpoint holds no tensors")
    return out


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """`read_checkpoint` + `unwrap_state_dict`, with the file's name in any error."""
    try:
        return unwrap_state_dict(read_checkpoint(path))
    except CheckpointError as exc:
        if str(path) in str(exc):
            raise
        raise CheckpointError(f"{path}: {exc}") from exc


def wrong_kind_error(path: str | os.PathLike, expected: str, sd: Mapping[str, Tensor], hint: str = "") -> CheckpointError:
    """Error for a readable checkpoint of another architecture than the one asked for."""
    sample = ", ".join(list(sd)[:4])
    msg = f"{path} is not a {expected} checkpoint (its first keys: {sample})."
    if hint:
        msg += " " + hint
    return CheckpointError(msg)


def load_strict(module: torch.nn.Module, sd: Mapping[str, Tensor], path: str | os.PathLike, expected: str) -> None:
    """`load_state_dict(strict=True)` with an error that names the file and the mismatch.

    BatchNorm `num_batches_tracked` counters a file lacks (older releases) are filled in: eval never uses them.
    """
    own = module.state_dict()
    sd = dict(sd)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(value)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad_shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if bad_shape:
            k = bad_shape[0]
            parts.append(f"{len(bad_shape)} shape mismatches (e.g. {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})")
        raise CheckpointError(f"{path} does not match the {expected} architecture: " + "; ".join(parts))
    module.load_state_dict(sd, strict=True)
