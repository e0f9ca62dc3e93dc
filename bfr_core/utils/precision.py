"""Precision and compile-mode names the CLI and the nodes accept (torch-free until a name is turned into a dtype),
and the fastest correct precision of a device (``auto``)."""
from __future__ import annotations

# name → torch attribute
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
AUTO = "auto"
# "off" and the torch.compile modes the library passes through (`bfr_core.utils.acceleration`)
COMPILE_MODES = ("off", "default", "max-autotune", "reduce-overhead")


def parse_dtype(name: str, device=None):
    """'fp32' | 'fp16' | 'bf16' → torch dtype; 'auto' → `preferred_dtype(device)`; an error naming the choices."""
    if str(name) == AUTO:
        return preferred_dtype(device)
    if str(name) not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)} or {AUTO}")
    import torch

    return getattr(torch, PRECISIONS[str(name)])


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), i.e. when oneDNN's bf16
    convolutions and matmuls beat float32. Without those instructions bf16 is emulated and slower than fp32."""
    import torch

    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        found = caps()
        return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
    try:  # older torch: oneDNN's own check (AVX512-BF16 or newer)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def preferred_dtype(device=None):
    """The fastest precision that keeps restorations correct on ``device`` (default: CUDA when available, else CPU):
    CUDA: bf16 where supported (Ampere and newer), else fp16; CPU: bf16 with native bf16 instructions, else fp32;
    anything else (MPS, XPU, …): fp32."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dev.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32
