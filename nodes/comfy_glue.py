"""The few ComfyUI services the nodes use, imported lazily so the classes import without ComfyUI."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterable

import torch

from ..bfr_core.utils.precision import parse_dtype

log = logging.getLogger("bfr_nodes")

# ComfyUI's community folder names (DESIGN.md §3); each is merged, never overwritten.
MODEL_FOLDERS = {
    "facedetection": {".onnx", ".pth", ".pt", ".safetensors"},
    "facerestore_models": {".pth", ".pt", ".safetensors", ".ckpt", ".bin"},
    "insightface": {".onnx", ".pth", ".pt", ".safetensors"},
}


def register_model_folders() -> None:
    """Add our folders to `folder_paths` by merging with what users or other packs configured."""
    try:
        import folder_paths
    except ImportError:  # outside ComfyUI: nothing to register
        return
    for name, exts in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        entry = folder_paths.folder_names_and_paths.get(name)
        if entry is None:
            folder_paths.folder_names_and_paths[name] = ([default], set(exts))
            continue
        paths, known_exts = entry
        if default not in paths:
            paths.append(default)
        # An empty set means "list every file" to ComfyUI: leave it so, we filter when listing.
        if known_exts:
            known_exts.update(exts)


def list_models(folder: str, suffixes: Iterable[str], contains: str = "") -> list[str]:
    """Files in a ComfyUI model folder with one of `suffixes` (and `contains` in the name)."""
    try:
        import folder_paths

        names = folder_paths.get_filename_list(folder)
    except Exception:  # outside ComfyUI, or folder not registered
        return []
    sfx = tuple(s.lower() for s in suffixes)
    return sorted(n for n in names if n.lower().endswith(sfx) and contains in os.path.basename(n).lower())


def model_path(folder: str, name: str) -> str:
    """Absolute path of a file listed in a model folder, with a clear error if it is gone."""
    import folder_paths

    path = folder_paths.get_full_path(folder, name)
    if path is None:
        try:
            searched = ", ".join(folder_paths.folder_names_and_paths[folder][0])
        except (KeyError, IndexError, TypeError):
            searched = ""
        raise FileNotFoundError(f"{name} not found in ComfyUI/models/{folder}" + (f" (searched: {searched})" if
                                searched else "") + "; put the file there and refresh (R) the page")
    return path


def torch_device() -> torch.device:
    try:
        import comfy.model_management as mm

        return mm.get_torch_device()
    except ImportError:
        return torch.device("cpu")


def offload_device() -> torch.device:
    try:
        import comfy.model_management as mm

        return mm.unet_offload_device()
    except ImportError:
        return torch.device("cpu")


class Progress:
    """ComfyUI progress bar that also honours the user's Cancel button."""

    def __init__(self, total: int) -> None:
        self.total = max(int(total), 1)
        try:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(self.total)
        except ImportError:
            self._bar = None

    def __call__(self, n: int = 1) -> None:
        check_interrupted()
        if self._bar is not None:
            self._bar.update(n)


def check_interrupted() -> None:
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


def to_bchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] → [B, C, H, W] (contiguous: some models use .view())."""
    if image.dim() != 4:
        raise ValueError(f"expected an IMAGE batch [B, H, W, C], got shape {tuple(image.shape)}")
    return image.movedim(-1, 1).contiguous()


def to_bhwc(image: torch.Tensor) -> torch.Tensor:
    return image.movedim(1, -1).contiguous().float().cpu()


def module_size(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers())


def load_to_device(module: torch.nn.Module, extra_bytes: int = 0) -> torch.device:
    """Make room (ComfyUI unloads other models as needed) and move a module to ComfyUI's device.

    The same pattern ComfyUI's own upscale-model node uses for non-diffusion networks.
    """
    device = torch_device()
    try:
        import comfy.model_management as mm

        mm.free_memory(module_size(module) + extra_bytes, device)
    except ImportError:
        pass
    with torch.inference_mode(False):  # moved weights must stay usable by autograd (identity guidance)
        module.to(device)
    return device


def offload(module: torch.nn.Module) -> None:
    with torch.inference_mode(False):
        module.to(offload_device())
    try:
        import comfy.model_management as mm

        mm.soft_empty_cache()
    except ImportError:
        pass


def resolve_dtype(name: str) -> torch.dtype:
    """auto: the library's choice for ComfyUI's device (`preferred_dtype`: bf16 if supported, else fp16 on CUDA),
    except fp32 on the CPU, where the loaders keep full precision."""
    device = torch_device()
    if name == "auto" and device.type == "cpu":
        return torch.float32
    return parse_dtype(name, device)


@contextlib.contextmanager
def on_device(*modules: torch.nn.Module, extra_bytes: int = 0):
    """Run the body with the modules on ComfyUI's device; they go back to the offload device afterwards."""
    try:
        for module in modules:
            load_to_device(module, extra_bytes)
        yield torch_device()
    finally:
        for module in modules:
            offload(module)
