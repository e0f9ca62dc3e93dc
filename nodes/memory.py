"""The pack's networks in ComfyUI's memory manager (prior, backbone, recognizer, detector, parser).

Each loader node gives what it loads a `comfy.model_patcher.ModelPatcher` over its networks (`manage`); the nodes
that run them call `comfy.model_management.load_models_gpu` with those patchers and an activation-memory estimate
(`models_loaded`). The networks then stay on the device between runs — a second run neither reloads nor moves them —
and ComfyUI offloads them like its own models when another model needs the room. Nothing is cached here: the
patcher lives as long as the loaded object, which ComfyUI's node cache holds.

Objects made elsewhere (another pack's module, a test's network) have no patcher: they are moved to the device for
the call and back afterwards, as ComfyUI's own upscale-model node does.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .comfy_glue import on_device, torch_device

PATCHER_ATTR = "comfy_patcher"

# Peak activation memory of one forward pass per input pixel at fp32 (weights excluded), measured by
# bench/bench_activation_memory.py on the real-shape networks: exactly linear in batch × H × W at every size and
# batch measured (64-256 px, batch 1-2). Keys are class names found among a network's modules.
ACTIVATION_BYTES_PER_PIXEL = {
    "IDDPMUNet": 1536,  # DifFace's UNet: 384 floats per pixel (full-resolution skips and their concatenations)
    "SwinIR": 600,  # DifFace's SwinIR (8x pixel-unshuffle in, 180-channel tokens at 1/8 resolution, 8x out)
    "IResNet": 768,  # ArcFace iresnet50 at 112 px
    "RetinaFace": 208,  # ResNet-50 RetinaFace
    "BiSeNet": 284,  # facexlib's parsing BiSeNet
}
UNKNOWN_BYTES_PER_PIXEL = 1536  # a network not measured: budget like the largest measured one
# Identity guidance back-propagates through the recognizer: the forward's activations are kept for backward and
# the gradients of each are made (about three forwards).
BACKWARD_FACTOR = 3
ARCFACE_SIZE = 112


class ManagedNetworks(torch.nn.Module):
    """What a patcher manages: the networks of one loaded object. ModelPatcher writes bookkeeping attributes
    (`device`, `model_lowvram`, ...) on its model; some networks (diffusers models) have a read-only `device`."""

    def __init__(self, networks: list[torch.nn.Module]) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleList(networks)


def networks_of(obj: object) -> list[torch.nn.Module]:
    """The networks with weights inside a loaded object: itself if a module, else its `model` and `vae`."""
    found = [obj] if isinstance(obj, torch.nn.Module) else [getattr(obj, "model", None), getattr(obj, "vae", None)]
    return [m for m in found if isinstance(m, torch.nn.Module) and next(m.parameters(), None) is not None]


def manage(obj):
    """Give a freshly loaded object a ModelPatcher over its networks (none outside ComfyUI or without networks,
    e.g. YuNet, which runs in OpenCV). Returns the object."""
    nets = networks_of(obj)
    if not nets:
        return obj
    try:
        import comfy.model_management as mm
        import comfy.model_patcher
    except ImportError:
        return obj
    patcher = comfy.model_patcher.ModelPatcher(ManagedNetworks(nets), load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    setattr(obj, PATCHER_ATTR, patcher)
    return obj


def patcher_of(obj: object):
    return getattr(obj, PATCHER_ATTR, None)


def bytes_per_pixel(network: torch.nn.Module) -> int:
    names = {type(m).__name__ for m in network.modules()}
    known = [v for k, v in ACTIVATION_BYTES_PER_PIXEL.items() if k in names]
    return max(known) if known else UNKNOWN_BYTES_PER_PIXEL


def activation_bytes(obj: object, batch: int, height: int, width: int, dtype: torch.dtype | None = None) -> int:
    """Peak activation memory of one call of obj's networks on `batch` images of height × width."""
    nets = networks_of(obj)
    if not nets:
        return 0
    if dtype is None:
        dtype = next(nets[0].parameters()).dtype
    scale = torch.finfo(dtype).bits / 32 if dtype.is_floating_point else 1.0
    return int(max(bytes_per_pixel(n) for n in nets) * batch * height * width * scale)


def restore_memory(restorer) -> int:
    """A FaceRestorer's peak activation memory per chunk: the backbone, the prior's denoiser and the guided
    recognizer run one after another on batch_size faces, so the largest of them."""
    side, batch = restorer.crop_size, restorer.batch_size
    parts = [activation_bytes(restorer.backbone, batch, side, side)]
    if restorer.prior is not None:
        size = int(restorer.prior.sample_size)
        parts.append(activation_bytes(restorer.prior, batch, size, size, restorer.dtype))
    if restorer.identity is not None:
        parts.append(BACKWARD_FACTOR * activation_bytes(restorer.identity.recognizer, batch, ARCFACE_SIZE,
                                                        ARCFACE_SIZE))
    return max(parts)


@contextlib.contextmanager
def models_loaded(*objs: object, memory_required: int = 0) -> Iterator[torch.device]:
    """Run the body with the objects' networks on ComfyUI's device: managed ones through load_models_gpu (they
    stay there afterwards), others moved by hand and back. `memory_required`: activation bytes of the body."""
    objs = tuple(o for o in objs if o is not None)
    patchers = [p for p in map(patcher_of, objs) if p is not None]
    unmanaged = [n for o in objs if patcher_of(o) is None for n in networks_of(o)]
    if patchers:
        import comfy.model_management as mm

        # Outside inference mode: weights moved here must stay usable by autograd (identity guidance back-propagates
        # through the recognizer; a copy made under ComfyUI's inference mode could not be saved for backward).
        # Full load: the networks are plain torch modules, which ComfyUI's partial (low-VRAM) loading would leave
        # on the CPU.
        with torch.inference_mode(False):
            mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)
            for p in patchers:
                p.model.to(p.load_device)  # modules with buffers but no weights of their own
    with on_device(*unmanaged, extra_bytes=memory_required if not patchers else 0):
        yield torch_device()
