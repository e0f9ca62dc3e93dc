"""Restoration backbones f for DifFace (its SwinIR, GFPGAN v1.4, RestoreFormer++, …) loaded with spandrel, or
SwinIR with the project's own port (`bfr_core.archs.swinir`) when spandrel is not installed.

`load_restorer(path)` returns a ``torch.nn.Module`` mapping RGB [0, 1] ``[B,3,H,W]`` → ``[B,3,H,W]`` in [0, 1]:

* ``path`` None / ``"none"`` → `IdentityRestorer` (DifFace with f = identity).
* anything else is read by `bfr_core.models.checkpoint.load_state_dict` (safetensors or ``torch.load(weights_only=True)``,
  wrappers such as ``{'state_dict': …}`` / ``params_ema`` and DataParallel ``module.`` prefixes removed — DifFace's
  ``swinir_restoration512_L1.pth`` is ``{'state_dict': {'module.…'}}``), then handed to
  ``spandrel.ModelLoader().load_from_state_dict``, which detects the architecture from the keys (DifFace's SwinIR
  with its 8× pixel-unshuffle input, ``conv_first.1.*``, is spandrel's SwinIR with ``start_unshuffle=8``, scale 1).
  spandrel never unpickles anything itself here.
* both paths go through the architecture registry (`bfr_core.archs.registry`): the ``spandrel`` entry delegates
  detection to spandrel, the ``swinir`` entry is the own port; a file the registry recognises as another kind
  (a RetinaFace detector, an iDDPM prior, …) is refused with what it is (`WrongKindError`).
* without spandrel (the CLI's optional dependency) a SwinIR-like state dict (DifFace's backbone and the other
  SwinIR releases) is built by `bfr_core.archs.swinir.load_swinir` (configuration read from the keys/shapes,
  strict loading) and wrapped in `NativeRestorer`, which behaves like `SpandrelRestorer` (same size policy:
  ≥ 16 px and a multiple of unshuffle², so the same outputs); any other architecture needs spandrel.

The wrapper (`SpandrelRestorer`) makes inputs ``.contiguous()`` (ComfyUI's ``movedim`` views crash ``view()``-using
nets), casts to the model's device/dtype, meets the architecture's size requirements by *resizing* (antialiased
bicubic; e.g. GFPGAN needs ≥ 512 — zero/reflect padding a small face would put it in a corner) and resizes the
output back to the input's H×W when the model upscales or the input was resized. Output: float, clamped to
[0, 1], on the input's device and dtype.

Errors: unreadable/missing file → `CheckpointError` (from bfr_core.models); readable but not an
architecture spandrel knows as an image-to-image RGB model → `CheckpointError` naming the file and what was
expected; spandrel not installed and the file is not SwinIR → `CheckpointError` naming the file and saying
that its architecture needs spandrel (ComfyUI ships it; it is optional for the CLI).
"""
from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

from ..archs.registry import load_architecture
from ..archs.swinir import is_swinir_state_dict, load_swinir  # noqa: F401  (kept importable from here)
from ..models.checkpoint import CheckpointError, CheckpointOrigin, checkpoint_origin
from ..models.files import check_licence
from ..utils.precision import parse_dtype
from ..utils.tensors import resize_antialiased

EXPECTED_KIND = ("face-restoration backbone spandrel can load (DifFace SwinIR swinir_restoration512_L1.pth, "
                 "GFPGAN v1.4, RestoreFormer++, …)")


def _import_spandrel():
    try:
        import spandrel
    except ImportError as exc:
        raise ImportError(
            "loading a restoration backbone needs the 'spandrel' package: ComfyUI installs it; for the CLI run "
            "`pip install spandrel` (use restorer 'none' to run DifFace without a backbone)."
        ) from exc
    return spandrel


class IdentityRestorer(torch.nn.Module):
    """f(y) = y (clamped to [0, 1])."""

    architecture = "identity"
    scale = 1

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(0, 1)


def _valid_size(h: int, w: int, req) -> tuple[int, int]:
    """Smallest (h, w) ≥ the input meeting spandrel's SizeRequirements (minimum, multiple_of, square)."""
    pad_w, pad_h = req.get_padding(w, h)
    return h + pad_h, w + pad_w



class _SizeRequirements:
    """The part of spandrel's ``SizeRequirements`` used here: minimum side, sides a multiple of ``multiple_of``."""

    def __init__(self, minimum: int = 0, multiple_of: int = 1):
        self.multiple_of = max(1, int(multiple_of))
        self.minimum = -(-int(minimum) // self.multiple_of) * self.multiple_of

    def get_padding(self, width: int, height: int) -> tuple[int, int]:
        def up(v: int) -> int:
            return -(-max(self.minimum, v) // self.multiple_of) * self.multiple_of

        return up(width) - width, up(height) - height


class _ResizingRestorer(torch.nn.Module):
    """RGB [0,1] → RGB [0,1] of the input's size around a model with size requirements (see module doc).

    Differentiable: the network runs in the caller's grad mode (no inference mode of its own), so a training loop
    can back-propagate through it (`bfr_core.training.trainable`); loaded backbones are frozen and in eval mode
    until then. ``origin`` (a `CheckpointOrigin`, set by `load_restorer`) records the file layout for
    `bfr_core.training.save_backbone`.
    """

    model: torch.nn.Module
    architecture: str
    size_requirements: object
    origin: CheckpointOrigin | None = None

    def _run(self, inp: Tensor) -> Tensor:  # inp meets the size requirements; returns [0, 1]
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.architecture} restorer expects [B, 3, H, W] RGB, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        p = next(self.model.parameters())
        inp = x.to(device=p.device, dtype=torch.float32).clamp(0, 1)
        th, tw = _valid_size(h, w, self.size_requirements)
        inp = resize_antialiased(inp, (th, tw)).clamp(0, 1).to(p.dtype).contiguous()
        out = resize_antialiased(self._run(inp).float(), (h, w))
        return out.clamp(0, 1).to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)


class SpandrelRestorer(_ResizingRestorer):
    """A spandrel ``ImageModelDescriptor`` as an RGB [0,1] → RGB [0,1] module of the input's size.

    Runs the descriptor's network the way spandrel's ``descriptor(image)`` does (its call function, output clamped
    to [0, 1]; the input already meets the size requirements, so spandrel would not pad) but without spandrel's
    ``torch.inference_mode`` and without forcing eval mode, so gradients can flow.
    """

    def __init__(self, descriptor, path: str | os.PathLike | None = None):
        super().__init__()
        self.descriptor = descriptor
        self.model = descriptor.model  # registered so .to()/.parameters() reach the weights
        self.path = None if path is None else str(path)
        self.architecture = descriptor.architecture.id
        self.scale = int(descriptor.scale)
        self.size_requirements = descriptor.size_requirements
        # spandrel keeps each architecture's call (GFPGAN and RestoreFormer return tuples) in a private attribute;
        # without it (another spandrel version) the first element of a tuple output is the image, as there.
        self._call_fn = getattr(descriptor, "_call_fn", None) or _first_output

    def _run(self, inp: Tensor) -> Tensor:
        if inp.dtype in (torch.float16, torch.bfloat16):
            # Some spandrel networks make float32 tensors of their own on the way (SwinIR's shift masks at sizes
            # other than its training size) and then fail on a float32 @ bf16 matmul; autocast at the weights'
            # precision casts those, and leaves the rest as it was (weights and activations already in it).
            with torch.autocast(inp.device.type, dtype=inp.dtype):
                return self._call_fn(self.model, inp).clamp(0, 1)
        return self._call_fn(self.model, inp).clamp(0, 1)


def _first_output(model: torch.nn.Module, image: Tensor) -> Tensor:
    out = model(image)
    return out[0] if isinstance(out, (tuple, list)) else out


class NativeRestorer(_ResizingRestorer):
    """The project's own SwinIR (used without spandrel) with `SpandrelRestorer`'s behaviour."""

    def __init__(self, model: torch.nn.Module, path: str | os.PathLike | None = None):
        super().__init__()
        self.model = model
        self.path = None if path is None else str(path)
        self.architecture = "SwinIR"
        self.scale = int(model.scale)
        unshuffle = int(model.cfg.unshuffle)
        self.size_requirements = _SizeRequirements(minimum=16, multiple_of=unshuffle**2)  # as spandrel's SwinIR

    def _run(self, inp: Tensor) -> Tensor:
        return self.model(inp).clamp(0, 1)


def _freeze(module: torch.nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


def _load_without_spandrel(path: str | os.PathLike, device: str | torch.device, dtype: torch.dtype,
                           import_error: ImportError) -> torch.nn.Module:
    try:
        loaded = load_architecture(
            path, "backbone", ids=("swinir",), expected="SwinIR",
            hint="Without the 'spandrel' package only SwinIR backbones (DifFace's swinir_restoration512_L1.pth) "
                 "load. This architecture needs spandrel: ComfyUI installs it; for the CLI run `pip install spandrel` "
                 "(or use restorer 'none').")
    except CheckpointError as exc:
        if "is not a SwinIR checkpoint" in str(exc):  # keep "spandrel is missing" as the cause
            raise exc from import_error
        raise
    model = loaded.module
    if model.cfg.in_chans != 3:
        raise CheckpointError(f"{path} is a {model.cfg.in_chans}-channel SwinIR; expected an RGB {EXPECTED_KIND}")
    origin = checkpoint_origin(model, loaded.state_dict, loaded.layout, path)
    if dtype == torch.float16:  # as spandrel: SwinIR is not run in fp16
        warnings.warn(f"SwinIR does not support {dtype}; running it in float32", stacklevel=3)
        dtype = torch.float32
    model.to(device=torch.device(device), dtype=dtype)
    _freeze(model)
    restorer = NativeRestorer(model, path)
    restorer.origin = origin
    return restorer.eval()


def load_restorer(path: str | os.PathLike | None, device: str | torch.device = "cpu",
                  dtype: torch.dtype | str = torch.float32) -> torch.nn.Module:
    """Backbone f for DifFace: identity for None/"none", otherwise the spandrel model in ``path`` (without spandrel:
    the own SwinIR port for SwinIR files; see module doc). Both go through `bfr_core.archs.registry`.

    ``dtype`` the model does not support (spandrel's ``supports_half``/``supports_bfloat16``; DifFace's SwinIR has
    no fp16) falls back to float32 with a warning. The module is in eval mode with gradients off (inference); for
    fine-tuning see `bfr_core.training.trainable`, and `bfr_core.training.save_backbone` to write it back.
    ``dtype`` may be a name ("fp32", "bf16", "fp16", "auto" = `bfr_core.utils.precision.preferred_dtype`).
    """
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype, device)
    if path is None or (isinstance(path, str) and path.strip().lower() in ("", "none")):
        return IdentityRestorer()
    check_licence(path)  # $BFR_COMMERCIAL_ONLY
    try:
        spandrel = _import_spandrel()
    except ImportError as exc:
        return _load_without_spandrel(path, device, dtype, exc)
    loaded = load_architecture(path, "backbone", ids=("spandrel",), expected=EXPECTED_KIND,
                               hint="CodeFormer needs the spandrel_extra_arches package (ComfyUI installs it).",
                               build_hint=f"Expected a {EXPECTED_KIND}.")
    descriptor = loaded.module
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise CheckpointError(
            f"{path} is a {descriptor.architecture.name} model ({type(descriptor).__name__}), not an image-to-image "
            f"restorer; expected a {EXPECTED_KIND}"
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise CheckpointError(
            f"{path} is a {descriptor.architecture.name} model with {descriptor.input_channels} input / "
            f"{descriptor.output_channels} output channels; expected an RGB {EXPECTED_KIND}"
        )
    origin = checkpoint_origin(descriptor.model, loaded.state_dict, loaded.layout, path)
    if (dtype == torch.float16 and not descriptor.supports_half) or (
        dtype == torch.bfloat16 and not descriptor.supports_bfloat16
    ):
        warnings.warn(f"{descriptor.architecture.name} does not support {dtype}; running it in float32", stacklevel=2)
        dtype = torch.float32
    descriptor.to(torch.device(device), dtype)
    _freeze(descriptor.model)
    restorer = SpandrelRestorer(descriptor, path)
    restorer.origin = origin
    return restorer.eval()


__all__ = ["EXPECTED_KIND", "IdentityRestorer", "NativeRestorer", "SpandrelRestorer", "load_restorer"]
