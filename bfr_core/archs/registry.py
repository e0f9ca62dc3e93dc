"""One registry of the network families the pack loads, in the spirit of spandrel's.

Each family lives in its own file under `bfr_core.archs` with a key-based detector (`detect(state_dict) -> bool`
on prefix-free key names and shapes) and a strict builder (`build(state_dict, path, **options)`, loading through
`models.checkpoint.load_strict`, so a mismatch names the file and the keys). This module lists them in detection
order and offers:

* `identify(sd, kind=None)`: the first family whose detector accepts ``sd`` (None if none does);
* `load_architecture(path_or_sd, kind, ...)`: read the file (safely, keeping its `CheckpointLayout`), pick the
  family of the requested kind, build it, and on failure raise an error that names the file, the expected kind,
  where such files go, and — when the registry recognises the file as another kind — what it actually is
  (`WrongKindError`, e.g. "…/detection_Resnet50_Final.pth is a RetinaFace ResNet-50 face detector, not a
  diffusion prior").

Every loader goes through it: `diffusion.loading.load_prior` (prior), `restoration.backbones.load_restorer`
(backbone), `faces.detection.retinaface.load_retinaface` (detector), `identity.recognizers.load_recognizer`
(recognizer, .pth side), `faces.parsing.load_face_parser` (parser). Files that are not state dicts (YuNet and
insightface ONNX graphs, diffusers folders' config.json) are dispatched by their loaders before the registry.

Spandrel-backed backbones are one entry (``spandrel``) whose detector asks spandrel's own registry, in spandrel's
detection order; it is available only when spandrel is installed, and comes last so that the pack's own families
are always recognised first.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import Tensor

from ..models.checkpoint import CheckpointError, CheckpointLayout, load_state_dict_and_layout, wrong_kind_error

KINDS = ("prior", "backbone", "detector", "recognizer", "parser", "perceptual")
KIND_NOUNS = {
    "prior": "diffusion prior",
    "backbone": "restoration backbone",
    "detector": "face detector",
    "recognizer": "face recognizer",
    "parser": "face-parsing model",
    "perceptual": "perceptual-loss network",
}
# Where each kind goes under ComfyUI/models (the CLI's --models-dir has the same sub-folders).
KIND_FOLDERS = {
    "prior": "models/facerestore_models",
    "backbone": "models/facerestore_models",
    "detector": "models/facedetection",
    "recognizer": "models/insightface or models/facerestore_models",
    "parser": "models/facedetection",
    "perceptual": "models/facerestore_models (or anywhere: it is named by path)",
}


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Architecture:
    """A network family: how to recognise its checkpoints and how to build it from one.

    ``build(sd, path, **options)`` returns the strictly loaded network (an ``nn.Module``; for the ``spandrel`` entry
    spandrel's ``ModelDescriptor``, whose ``.model`` is the module) and ignores options meant for other families.
    ``supported=False`` marks families recognised only to be refused with a reason (their ``build`` raises).
    ``describe(sd)`` gives a finer name for entries that stand for many networks (spandrel).
    """

    id: str
    name: str
    kind: str
    detect: Callable[[Mapping[str, Tensor]], bool]
    build: Callable[..., Any]
    supported: bool = True
    available: Callable[[], bool] = field(default=_always, compare=False)
    describe: Callable[[Mapping[str, Tensor]], str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; one of {KINDS}")

    def title(self, sd: Mapping[str, Tensor] | None = None) -> str:
        """The human name, refined by ``describe`` when a state dict is given."""
        if sd is not None and self.describe is not None:
            try:
                return self.describe(sd)
            except Exception:  # a description is a nicety; never mask the real error with it
                pass
        return self.name

    def matches(self, sd: Mapping[str, Tensor]) -> bool:
        try:
            return bool(self.available() and self.detect(sd))
        except Exception:  # a detector looking at a foreign state dict must not crash the search
            return False


class WrongKindError(CheckpointError):
    """A readable checkpoint the registry recognised as another kind than the one asked for."""

    def __init__(self, message: str, detected: Architecture, expected_kind: str):
        super().__init__(message)
        self.detected = detected
        self.expected_kind = expected_kind


@dataclass
class Loaded:
    """What `load_architecture` returns: the family, the built network, and where its weights came from."""

    arch: Architecture
    module: Any
    state_dict: dict[str, Tensor]
    layout: CheckpointLayout | None  # None when built from an in-memory state dict
    source: str


# ------------------------------------------------------------------------------------------ the families
def _iddpm_build(sd, path, *, config=None, sample_size=None, device="cpu", dtype=None, **_):
    import torch

    from .iddpm_unet import IDDPMUNetConfig, load_iddpm_unet

    if config is not None and not isinstance(config, IDDPMUNetConfig):
        raise CheckpointError(f"{path}: config= must be an IDDPMUNetConfig for a DifFace-layout file")
    return load_iddpm_unet(sd, path, config=config, sample_size=sample_size, device=device,
                           dtype=dtype or torch.float32)


def _iddpm_detect(sd) -> bool:
    from .iddpm_unet import is_iddpm_state_dict

    return is_iddpm_state_dict(sd)


def _diffusers_detect(sd) -> bool:
    return "conv_in.weight" in sd and "time_embedding.linear_1.weight" in sd


def _diffusers_build(sd, path, *, unet_config: Mapping | None = None, **_):
    if not isinstance(unet_config, Mapping):
        name = Path(str(path)).name
        raise CheckpointError(
            f"{path} holds diffusers UNet weights without their config.json: pass the folder "
            f"holding config.json and {name} instead of the file."
        )
    from diffusers import UNet2DModel

    from ..models.checkpoint import load_strict

    unet = UNet2DModel.from_config(dict(unet_config))
    load_strict(unet, sd, path, "diffusers UNet2DModel (as described by its config.json)")
    return unet


def _retinaface(variant: str):
    def detect(sd) -> bool:
        from .retinaface import detect_variant

        return detect_variant(sd) == variant

    def build(sd, path, **_):
        from .retinaface import load_retinaface_network

        return load_retinaface_network(sd, path)

    return detect, build


def _lazy(module: str, name: str) -> Callable:
    def call(*args, **kwargs):
        fn = getattr(importlib.import_module(module, __package__), name)
        return fn(*args, **kwargs)

    call.__name__ = name
    return call


def _ignoring_options(fn: Callable) -> Callable:
    def build(sd, path, **_):
        return fn(sd, path)

    build.__name__ = getattr(fn, "__name__", "build")
    return build


def _swinir_build(sd, path, **_):
    from .swinir import load_swinir

    return load_swinir(sd, path)


# spandrel: one entry for every architecture spandrel knows
def _spandrel():
    try:
        return importlib.import_module("spandrel")
    except ImportError:
        return None


def _spandrel_available() -> bool:
    return _spandrel() is not None


def spandrel_architecture(sd: Mapping[str, Tensor]):
    """spandrel's ``ArchSupport`` that detects ``sd`` (spandrel's detection order), or None."""
    spandrel = _spandrel()
    if spandrel is None:
        return None
    for support in spandrel.MAIN_REGISTRY.architectures("detection"):
        try:
            if support.detect(sd):
                return support
        except Exception:
            continue
    return None


def _spandrel_detect(sd) -> bool:
    return spandrel_architecture(sd) is not None


def _spandrel_describe(sd) -> str:
    support = spandrel_architecture(sd)
    return f"{support.architecture.name} (spandrel)" if support is not None else "spandrel"


def _spandrel_build(sd, path, **_):
    spandrel = _spandrel()
    if spandrel is None:
        raise CheckpointError(f"{path}: the 'spandrel' package is not installed")
    try:
        return spandrel.ModelLoader().load_from_state_dict(dict(sd))
    except spandrel.UnsupportedModelError:
        raise CheckpointError(f"{path}: spandrel recognises no architecture in it") from None
    except Exception as exc:  # detected an architecture but the keys/shapes did not fit it
        raise CheckpointError(f"{path}: spandrel could not build a model from it ({type(exc).__name__}: {exc})") from exc


_ir = ".iresnet"
_fp = ".face_parsing"

ARCHITECTURES: list[Architecture] = [
    # priors
    Architecture("iddpm_unet", "DifFace iDDPM UNet", "prior", _iddpm_detect, _iddpm_build),
    Architecture("diffusers_unet2d", "diffusers UNet2DModel", "prior", _diffusers_detect, _diffusers_build),
    # detectors (YuNet is an ONNX graph run by OpenCV: not a state dict)
    Architecture("retinaface_resnet50", "RetinaFace ResNet-50", "detector", *_retinaface("resnet50")),
    Architecture("retinaface_mobilenet0.25", "RetinaFace MobileNet-0.25", "detector", *_retinaface("mobilenet0.25")),
    # recognizers (insightface ONNX graphs are converted by identity.onnx_convert)
    Architecture("arcface_iresnet", "ArcFace IResNet (arcface_torch)", "recognizer",
                 _lazy(_ir, "is_iresnet_state_dict"), _ignoring_options(_lazy(_ir, "load_iresnet"))),
    Architecture("facexlib_irse", "ArcFace IR-SE (facexlib)", "recognizer",
                 _lazy(_ir, "is_irse_state_dict"), _ignoring_options(_lazy(_ir, "load_irse"))),
    Architecture("basicsr_resnet_arcface", "GFPGAN/basicsr ResNetArcFace", "recognizer",
                 _lazy(_ir, "is_resnet_arcface_state_dict"), _ignoring_options(_lazy(_ir, "refuse_resnet_arcface")),
                 supported=False),
    # face parsing (facexlib's own classes, imported when built)
    Architecture("facexlib_bisenet", "facexlib BiSeNet", "parser",
                 _lazy(_fp, "is_bisenet_state_dict"), _ignoring_options(_lazy(_fp, "load_bisenet"))),
    Architecture("facexlib_parsenet", "facexlib ParseNet", "parser",
                 _lazy(_fp, "is_parsenet_state_dict"), _ignoring_options(_lazy(_fp, "load_parsenet"))),
    # perceptual-loss features for fine-tuning (training/perceptual.py)
    Architecture("vgg", "VGG (torchvision)", "perceptual", _lazy(".vgg", "is_vgg_state_dict"),
                 _ignoring_options(_lazy(".vgg", "load_vgg_features"))),
    # restoration backbones: the own SwinIR port, then everything spandrel knows
    Architecture("swinir", "SwinIR", "backbone", _lazy(".swinir", "is_swinir_state_dict"), _swinir_build),
    Architecture("spandrel", "spandrel image model", "backbone", _spandrel_detect, _spandrel_build,
                 available=_spandrel_available, describe=_spandrel_describe),
]


def get(arch_id: str) -> Architecture:
    for arch in ARCHITECTURES:
        if arch.id == arch_id:
            return arch
    raise KeyError(f"unknown architecture {arch_id!r}; known: {', '.join(a.id for a in ARCHITECTURES)}")


def architectures(kind: str | None = None) -> list[Architecture]:
    """The registered families (of one kind), in detection order."""
    return [a for a in ARCHITECTURES if kind is None or a.kind == kind]


def identify(sd: Mapping[str, Tensor], kind: str | None = None) -> Architecture | None:
    """The first family (of ``kind``) whose detector accepts the prefix-free state dict ``sd``, or None."""
    for arch in ARCHITECTURES:
        if (kind is None or arch.kind == kind) and arch.matches(sd):
            return arch
    return None


# ------------------------------------------------------------------------------------------ loading
def _article(name: str) -> str:
    return ("an " if name[:1].upper() in "AEIOU" else "a ") + name


def wrong_kind(name: str | os.PathLike, kind: str, sd: Mapping[str, Tensor], expected: str | None = None,
               hint: str = "") -> CheckpointError:
    """The error for a checkpoint that holds no family of ``kind``: names the file, the expected kind and, when the
    registry recognises the file as another kind, what it is and where that kind goes."""
    other = identify(sd)
    if other is None or other.kind == kind:
        return wrong_kind_error(name, expected or KIND_NOUNS[kind], sd, hint)
    from ..models.files import expectation_hint

    wanted = KIND_NOUNS[kind] + (f" (expected a {expected})" if expected else "")
    msg = (f"{name} is {_article(other.title(sd))} {KIND_NOUNS[other.kind]}, not a {wanted}; "
           f"{KIND_NOUNS[other.kind]}s go in {KIND_FOLDERS[other.kind]}{expectation_hint(name)}.")
    if hint:
        msg += " " + hint
    return WrongKindError(msg, other, kind)


def load_architecture(
    source: str | os.PathLike | Mapping[str, Tensor],
    kind: str,
    *,
    ids: Sequence[str] | None = None,
    name: str | os.PathLike | None = None,
    expected: str | None = None,
    hint: str = "",
    build_hint: str | None = None,
    **options,
) -> Loaded:
    """Read ``source`` (a checkpoint path, or a prefix-free state dict named ``name`` in errors) and build the family
    of ``kind`` it holds.

    ``ids`` restricts (and orders) the families tried, e.g. ``("swinir",)``; ``options`` go to the family's
    ``build`` (e.g. ``config=``, ``device=``, ``dtype=`` for the iDDPM prior). Errors are `CheckpointError`s naming
    the file: unreadable/truncated (from the reader), `WrongKindError` when the file is recognised as another kind,
    else "is not a <expected> checkpoint (its first keys: …)"; ``hint`` (where such files go) is appended to the
    kind errors and (unless ``build_hint`` replaces it there) to the build errors.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    if isinstance(source, Mapping):
        sd, layout = dict(source), None
        label = str(name) if name is not None else "<state dict>"
    else:
        sd, layout = load_state_dict_and_layout(source)
        label = str(name) if name is not None else str(source)
    pool = [a for a in ARCHITECTURES if a.kind == kind]
    if ids is not None:
        pool = [get(i) for i in ids]
    arch = next((a for a in pool if a.matches(sd)), None)
    if arch is None:
        raise wrong_kind(label, kind, sd, expected, hint)
    try:
        module = arch.build(sd, label, **options)
    except CheckpointError as exc:
        extra = hint if build_hint is None else build_hint
        if extra and extra not in str(exc):
            raise CheckpointError(f"{exc} {extra}") from exc
        raise
    return Loaded(arch, module, sd, layout, label)


__all__ = ["ARCHITECTURES", "Architecture", "KINDS", "KIND_FOLDERS", "KIND_NOUNS", "Loaded", "WrongKindError",
           "architectures", "get", "identify", "load_architecture", "spandrel_architecture", "wrong_kind"]
