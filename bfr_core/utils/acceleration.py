"""Making a loaded network run fast on its device without changing what it computes (beyond float rounding).

* ``channels_last`` memory format: oneDNN's CPU convolutions run NHWC natively (fp32 and bf16); an NCHW network
  pays layout reorders around every convolution. On CUDA it is left to the caller (cuDNN picks per kernel).
* ``torch.compile`` (`compiled`): optional, off by default — on a CPU compiling DifFace's UNet takes minutes and
  wins little over oneDNN's kernels; on a GPU it fuses the GroupNorm/SiLU/add chains between the convolutions.
  One compiled wrapper per (network, mode) is kept for the network's lifetime, so every restorer and node call
  reuses it (and inductor's on-disk cache makes the next process compile faster). ``"reduce-overhead"`` also
  records CUDA graphs (the sampler's per-step launches replayed as one graph).
* a compiled network that fails to compile or to run falls back to the eager network once, with a warning, and
  stays eager: a missing C++ compiler or Triton never stops a restore.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .precision import COMPILE_MODES

__all__ = ["COMPILE_MODES", "CompiledModel", "check_compile_mode", "compiled", "to_channels_last",
           "wants_channels_last"]

_CACHE_ATTR = "_bfr_compiled"  # per-module {mode: CompiledModel}, kept on the module: it lives as long as the weights


def check_compile_mode(mode: Any) -> str:
    """``False``/None/"off" → "off", ``True`` → "default", a mode name → itself; ValueError naming the choices."""
    if mode is None or mode is False:
        return "off"
    if mode is True:
        return "default"
    if str(mode) not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; expected one of {', '.join(COMPILE_MODES)} (or True/False)")
    return str(mode)


def wants_channels_last(device: torch.device | str | None, setting: bool | None = None) -> bool:
    """``setting`` when given, else True on the CPU (oneDNN's NHWC kernels) and False elsewhere."""
    if setting is not None:
        return bool(setting)
    return device is not None and torch.device(device).type == "cpu"


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module`` with its 4-D weights stored channels_last, in place (a no-op when they already are). Outputs of
    the project's networks stay NCHW-contiguous; values change only by float reassociation."""
    if any(p.ndim == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in module.parameters()):
        nn.Module.to(module, memory_format=torch.channels_last)  # diffusers' own .to() warns on dtype args
    return module


class CompiledModel(nn.Module):
    """``module`` run through ``torch.compile(mode=...)``; on the first failure the eager ``module`` takes over.

    Calls and attributes otherwise behave like ``module``'s (``dtype``, ``device``, ``config`` … are forwarded), so
    it can stand where the network stood (e.g. a prior's ``model``). With CUDA graphs (``reduce-overhead``) each
    call starts a new graph step and its output is copied out of the graph's memory pool, which the next replay
    overwrites.
    """

    def __init__(self, module: nn.Module, mode: str = "default"):
        super().__init__()
        self.module = module
        self.mode = check_compile_mode(mode)
        self.failed: str | None = None
        # not registered as a submodule: it wraps the same weights (state_dict and .to() see them once)
        object.__setattr__(self, "_compiled", torch.compile(module, mode=None if self.mode == "default" else self.mode))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is not None:
            return self.module(*args, **kwargs)
        graphs = self.mode == "reduce-overhead" and any(isinstance(a, Tensor) and a.is_cuda for a in args)
        try:
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = self._compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever the compiler raised, the eager network decides
            out = self.module(*args, **kwargs)  # an error of the network itself is raised from here
            self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            warnings.warn(f"torch.compile (mode {self.mode}) failed for {type(self.module).__name__} "
                          f"({self.failed}); running it eagerly", RuntimeWarning, stacklevel=2)
            return out
        return out.clone() if graphs and isinstance(out, Tensor) else out


def compiled(module: nn.Module, mode: Any = "default") -> nn.Module:
    """``module`` itself for mode "off", else its `CompiledModel` for ``mode`` (made once per module and mode)."""
    mode = check_compile_mode(mode)
    if mode == "off" or isinstance(module, CompiledModel):
        return module
    per_mode = module.__dict__.setdefault(_CACHE_ATTR, {})
    if mode not in per_mode:
        per_mode[mode] = CompiledModel(module, mode)
    return per_mode[mode]
