"""Safe checkpoint reading shared by every loader.

Only safetensors or `torch.load(weights_only=True)`: a checkpoint is never allowed to run code.
The official releases wrap their weights differently (`state_dict`, `params_ema`, `params`,
`module.` prefixes from DataParallel); `unwrap_state_dict` accepts all of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from .errors import CheckpointError

_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "ema")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a .safetensors / .pth / .pt / .ckpt / .bin file without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    if path.suffix.lower() == ".onnx":
        from .files import expectation_hint

        raise CheckpointError(
            f"{path} is an ONNX model (a face detector such as YuNet, or an insightface recognizer), not a PyTorch "
            f"checkpoint: give it where a detector or recognizer is expected{expectation_hint(path)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, wrong format...
        from .files import expectation_hint

        # torch's weights_only refusal is pages long and tells users to disable the safety check: keep one line.
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise CheckpointError(
            f"cannot read model file {path} ({type(exc).__name__}: {first}). The file may be truncated, hold "
            f"more than tensors (refused: checkpoints are never allowed to run code), "
            f"or not a PyTorch/safetensors checkpoint; download it again "
            f"(`python -m bfr_core models` checks every known file's sha256){expectation_hint(path)}."
        ) from exc


@dataclass(frozen=True)
class CheckpointLayout:
    """How a file wrapped its tensors, so an adapted model can be written back the same way.

    ``wrappers``: the nested dict keys around the tensors (DifFace's ``('state_dict',)``, basicsr's
    ``('params_ema',)``, ``()`` for a flat dict); ``prefix``: the prefix every tensor key had (DataParallel's
    ``'module.'``, else ``''``); ``format``: ``'torch'`` (pickle via torch.save) or ``'safetensors'``.
    """

    wrappers: tuple[str, ...] = ()
    prefix: str = ""
    format: str = "torch"


def _unwrap(obj: Mapping) -> tuple[dict[str, Tensor], tuple[str, ...], str]:
    sd = obj
    wrappers: list[str] = []
    for _ in range(3):  # wrappers can nest, e.g. {'state_dict': {'params_ema': ...}}
        if not isinstance(sd, Mapping):
            break
        if any(isinstance(v, Tensor) for v in sd.values()):
            break
        for key in _WRAPPER_KEYS:
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                wrappers.append(key)
                break
        else:
            break
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"expected a state dict, found {type(sd).__name__}")
    out: dict[str, Tensor] = {}
    prefixes: set[str] = set()
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            continue
        stripped = key
        while stripped.startswith("module."):
            stripped = stripped[len("module."):]
        prefixes.add(key[: len(key) - len(stripped)])
        out[stripped] = value
    if not out:
        raise CheckpointError("the checkpoint holds no tensors")
    prefix = prefixes.pop() if len(prefixes) == 1 else ""  # mixed prefixes: written back without any
    return out, tuple(wrappers), prefix


def unwrap_state_dict(obj: Mapping) -> dict[str, Tensor]:
    """Return the flat tensor dict inside the usual official wrappers, without `module.` prefixes."""
    return _unwrap(obj)[0]


def _with_path(path, exc: CheckpointError) -> CheckpointError:
    if str(path) in str(exc):
        return exc
    return CheckpointError(f"{path}: {exc}")


def load_state_dict_and_layout(path: str | os.PathLike) -> tuple[dict[str, Tensor], CheckpointLayout]:
    """`load_state_dict` plus the file's `CheckpointLayout` (wrapper keys, `module.` prefix, format)."""
    obj = read_checkpoint(path)
    try:
        sd, wrappers, prefix = _unwrap(obj)
    except CheckpointError as exc:
        raise _with_path(path, exc) from exc
    fmt = "safetensors" if Path(path).suffix == ".safetensors" else "torch"
    return sd, CheckpointLayout(wrappers, prefix, fmt)


def write_state_dict(sd: Mapping[str, Tensor], path: str | os.PathLike, layout: CheckpointLayout | None = None) -> Path:
    """Write ``sd`` (prefix-free keys) atomically in ``layout`` (default: a flat safetensors/torch file by suffix).

    A safetensors file holds a flat dict: wrappers and prefixes of a torch-layout are dropped there (every loader,
    spandrel's included, strips them anyway). The file appears whole or not at all.
    """
    from ..io.atomic import publish, temp_beside

    path = Path(path)
    layout = layout or CheckpointLayout(format="safetensors" if path.suffix == ".safetensors" else "torch")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    fd, tmp = temp_beside(path)
    try:
        os.close(fd)
        if layout.format == "safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp))
        else:
            obj: dict = {layout.prefix + k: v for k, v in tensors.items()}
            for key in reversed(layout.wrappers):
                obj = {key: obj}
            torch.save(obj, str(tmp))
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """`read_checkpoint` + `unwrap_state_dict`, with the file's name in any error."""
    return load_state_dict_and_layout(path)[0]


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


@dataclass
class CheckpointOrigin:
    """Where a module's weights came from, enough to write them back in that file's layout.

    ``key_map``: module state-dict key → file key (prefix-free), for every module entry found in the file (spandrel
    renames some, e.g. DifFace SwinIR's ``conv_first.1.*`` is spandrel's ``conv_first.*``); ``file_keys``: the
    file's keys in order; ``kept``: file tensors the module does not hold (written back unchanged);
    ``not_in_file``: module entries the file did not have (e.g. buffers the architecture recomputes).
    """

    path: str
    layout: CheckpointLayout
    key_map: dict[str, str]
    file_keys: tuple[str, ...]
    kept: dict[str, Tensor]
    not_in_file: tuple[str, ...]
    file_dtypes: dict[str, torch.dtype] = field(default_factory=dict)

    def file_state_dict(self, module: torch.nn.Module) -> dict[str, Tensor]:
        """The module's current weights under the file's keys, in the file's order and dtypes (an fp16 file is
        written back as fp16 even when the network was widened to fp32 to run or train)."""
        own = module.state_dict()
        by_file = {fk: own[mk].to(self.file_dtypes.get(fk, own[mk].dtype)) for mk, fk in self.key_map.items()}
        return {fk: (by_file[fk] if fk in by_file else self.kept[fk]) for fk in self.file_keys}


def checkpoint_origin(module: torch.nn.Module, sd: Mapping[str, Tensor], layout: CheckpointLayout,
                      path: str | os.PathLike) -> CheckpointOrigin:
    """Match a freshly loaded module's state dict to the file's (prefix-free) ``sd`` it was built from.

    Same name first; entries a loader renamed are paired in order among the leftovers with the same last name
    component, shape and *values* (in the file's dtype) (the module was just loaded from ``sd``), so a pairing is verified, not
    guessed. Call it before the module's dtype or device changes.
    """
    own = module.state_dict()
    key_map: dict[str, str] = {}
    used: set[str] = set()

    def same(a: Tensor, b: Tensor) -> bool:
        # Loaders may widen a half-precision file (fp16 → fp32 is exact): compare in the file's dtype.
        if a.shape != b.shape or a.is_floating_point() != b.is_floating_point():
            return False
        return torch.equal(a.detach().to(device=b.device, dtype=b.dtype), b)

    leftovers = []
    for mk, value in own.items():
        if mk in sd and same(value, sd[mk]):
            key_map[mk] = mk
            used.add(mk)
        else:
            leftovers.append(mk)
    free = [fk for fk in sd if fk not in used]
    not_in_file = []
    for mk in leftovers:
        tail = mk.rsplit(".", 1)[-1]
        for fk in free:
            if fk.rsplit(".", 1)[-1] == tail and same(own[mk], sd[fk]):
                key_map[mk] = fk
                free.remove(fk)
                break
        else:
            not_in_file.append(mk)
    mapped = set(key_map.values())
    kept = {fk: sd[fk] for fk in sd if fk not in mapped}
    return CheckpointOrigin(str(path), layout, key_map, tuple(sd), kept, tuple(not_in_file),
                            {k: v.dtype for k, v in sd.items()})
