"""The registry of model files the pack knows, and where to find them on disk.

Nothing here downloads implicitly: `download()` runs only from the explicit CLI command
`python -m bfr_core download NAME`, and verifies the file before it is moved into place.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..io.atomic import publish, temp_beside

ENV_MODELS_DIR = "BFR_MODELS_DIR"
ENV_COMMERCIAL_ONLY = "BFR_COMMERCIAL_ONLY"  # 1/true/yes/on: refuse known non-commercial model files
LICENCE_KINDS = ("permissive", "non-commercial")


@dataclass(frozen=True)
class ModelFile:
    name: str  # file name on disk
    folder: str  # ComfyUI models sub-folder
    kind: str  # detector | parser | prior | restorer | recognizer
    url: str
    licence: str
    sha256: str | None = None  # None: not pinned yet (see `download`)
    size: int | None = None
    description: str = ""
    # Machine-readable class of `licence`: "permissive" (commercial use allowed) or "non-commercial".
    licence_kind: str = "permissive"
    alternative: str = ""  # for non-commercial files: what to use instead where commercial use matters

    def __post_init__(self) -> None:
        if self.licence_kind not in LICENCE_KINDS:
            raise ValueError(f"{self.name}: licence_kind {self.licence_kind!r} is not one of {LICENCE_KINDS}")

    @property
    def commercial(self) -> bool:
        """Whether the file's licence allows commercial use."""
        return self.licence_kind == "permissive"


REGISTRY: dict[str, ModelFile] = {m.name: m for m in [
    ModelFile("face_detection_yunet_2023mar.onnx", "facedetection", "detector",
              "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
              "Apache-2.0 (libfacedetection.train)",
              "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4", 232589,
              "YuNet face detector run by OpenCV (fast, CPU)"),
    ModelFile("detection_Resnet50_Final.pth", "facedetection", "detector",
              "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
              "MIT (facexlib / Pytorch_Retinaface)", None, None, "RetinaFace ResNet-50 (accurate)"),
    ModelFile("detection_mobilenet0.25_Final.pth", "facedetection", "detector",
              "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
              "MIT (facexlib / Pytorch_Retinaface)", None, None, "RetinaFace mobilenet0.25 (fast)"),
    ModelFile("parsing_bisenet.pth", "facedetection", "parser",
              "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
              "MIT (facexlib)", None, None, "BiSeNet face parsing for paste-back masks"),
    ModelFile("parsing_parsenet.pth", "facedetection", "parser",
              "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
              "MIT (facexlib)", None, None, "ParseNet face parsing for paste-back masks"),
    ModelFile("recognition_arcface_ir_se50.pth", "facerestore_models", "recognizer",
              "https://github.com/xinntao/facexlib/releases/download/v0.1.0/recognition_arcface_ir_se50.pth",
              "MIT (facexlib)", None, None, "ArcFace IR-SE50 for identity guidance and similarity"),
    ModelFile("iddpm_ffhq512_ema500000.pth", "facerestore_models", "prior",
              "https://github.com/zsyOAOA/DifFace/releases/download/V1.0/iddpm_ffhq512_ema500000.pth",
              "S-Lab License 1.0 (non-commercial)", None, None, "DifFace face diffusion prior (iDDPM, 512)",
              "non-commercial", "no diffusion prior (the restoration backbone alone), or a diffusers UNet folder whose licence "
              "allows commercial use (e.g. google/ddpm-ema-celebahq-256: Apache-2.0 per its model card; it was "
              "trained on CelebA-HQ, check that dataset's terms)"),
    ModelFile("swinir_restoration512_L1.pth", "facerestore_models", "restorer",
              "https://github.com/zsyOAOA/DifFace/releases/download/V1.0/swinir_restoration512_L1.pth",
              "S-Lab License 1.0 (non-commercial)", None, None, "DifFace SwinIR restoration backbone",
              "non-commercial", "no backbone (restorer none: the aligned crop itself), or a spandrel restorer whose licence "
              "allows commercial use"),
]}


# Files the pack uses but does not distribute (bring your own): known only for their licence, never downloaded.
_INSIGHTFACE_ALT = "recognition_arcface_ir_se50.pth (facexlib, MIT) as the recognizer"
LICENCE_ONLY: dict[str, ModelFile] = {m.name: m for m in [
    ModelFile("glintr100.onnx", "insightface", "recognizer", "", "insightface antelopev2: non-commercial research only",
              description="ArcFace R100 (insightface antelopev2)", licence_kind="non-commercial",
              alternative=_INSIGHTFACE_ALT),
    ModelFile("w600k_r50.onnx", "insightface", "recognizer", "", "insightface buffalo_l: non-commercial research only",
              description="ArcFace R50 (insightface buffalo_l)", licence_kind="non-commercial",
              alternative=_INSIGHTFACE_ALT),
]}


def expectation_hint(path: str | os.PathLike) -> str:
    """For a known file name: where it belongs, its expected sha256 (when pinned), and how to re-fetch it."""
    entry = REGISTRY.get(Path(path).name)
    if entry is None:
        return ""
    sha = f"expected sha256 {entry.sha256}" if entry.sha256 else "sha256 not pinned in this release"
    return (f" ({entry.name}: {sha}; it belongs in <ComfyUI>/models/{entry.folder}/ or {entry.folder}/ of your models folder; "
            f"re-fetch with `python -m bfr_core download {entry.name}`)")


def commercial_only_from_env() -> bool:
    """`$BFR_COMMERCIAL_ONLY` as a switch: 1/true/yes/on → True; unset, empty, 0/false/no/off → False."""
    raw = os.environ.get(ENV_COMMERCIAL_ONLY, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"${ENV_COMMERCIAL_ONLY}={raw!r}: use 1 (commercial use only) or 0")


def registry_entry(path: str | os.PathLike) -> ModelFile | None:
    """The entry (`REGISTRY` or `LICENCE_ONLY`) a file is known as: by file name, else by stem (a .safetensors copy
    of a known .pth)."""
    p = Path(path)
    known = {**REGISTRY, **LICENCE_ONLY}
    entry = known.get(p.name)
    if entry is None:
        entry = next((m for m in known.values() if Path(m.name).stem == p.stem and p.stem), None)
    return entry


_WARNED_UNKNOWN: set[str] = set()  # warn once per file and process (the CLI and the loader both check)


class LicenceError(ValueError):
    """A model file's licence does not allow commercial use and commercial-only mode is on."""


def check_licence(path: str | os.PathLike, commercial_only: bool | None = None) -> ModelFile | None:
    """Refuse a known non-commercial model file in commercial-only mode; warn for a file the registry does not know.

    `commercial_only=None` reads `$BFR_COMMERCIAL_ONLY` (how the ComfyUI nodes get the switch). Files are known
    by name (or by stem: a converted copy keeps its licence); a renamed file is not recognised. Returns the
    registry entry (or None). Every loader calls this with the path it is given.
    """
    if commercial_only is None:
        commercial_only = commercial_only_from_env()
    entry = registry_entry(path)
    if not commercial_only:
        return entry
    if entry is None:
        key = os.path.abspath(path)
        if key in _WARNED_UNKNOWN:
            return None
        _WARNED_UNKNOWN.add(key)
        warnings.warn(f"commercial-only mode: {Path(path).name} is not in the registry of known model files, so its "
                      f"licence is unknown; check it yourself before commercial use ({path})", stacklevel=2)
        return None
    if not entry.commercial:
        copy = "" if Path(path).name == entry.name else f" (a copy of {entry.name})"
        raise LicenceError(f"commercial-only mode: {Path(path).name}{copy} is licensed {entry.licence}, which does not "
                           f"allow commercial use. Use instead: {entry.alternative or 'a file licensed for it'}. "
                           f"(For non-commercial work, turn commercial-only mode off: unset ${ENV_COMMERCIAL_ONLY}, or run "
                           f"without the commercial-only switch.)")
    return entry


def comfy_models_dir(start: Path | None = None) -> Path | None:
    """`ComfyUI/models` when this package sits in `ComfyUI/custom_nodes/<pack>`, else None."""
    here = Path(os.path.abspath(start or __file__))
    # The path as imported first: a pack symlinked into custom_nodes resolves to somewhere else.
    for path in (here, here.resolve()):
        for parent in path.parents:
            if parent.name == "custom_nodes" and (parent.parent / "models").is_dir():
                return parent.parent / "models"
    return None


def search_dirs(models_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for model files, in order: --models-dir, $BFR_MODELS_DIR, ComfyUI/models."""
    dirs: list[Path] = []
    for d in (models_dir, os.environ.get(ENV_MODELS_DIR), comfy_models_dir()):
        if d:
            dirs.append(Path(d))
    return dirs


def find_model(name: str, models_dir: str | os.PathLike | None = None) -> Path | None:
    """Locate a model file by name (or return an existing path as is)."""
    if os.path.sep in name or "/" in name or Path(name).is_file():
        p = Path(name)
        return p if p.exists() else None
    folder = REGISTRY[name].folder if name in REGISTRY else None
    for d in search_dirs(models_dir):
        for cand in ([d / folder / name] if folder else []) + [d / name]:
            if cand.exists():
                return cand
    return None


def resolve_model(name: str, models_dir: str | os.PathLike | None = None) -> Path:
    """Like `find_model`, but a missing file raises an error that says where to put it."""
    path = find_model(name, models_dir)
    if path is not None:
        return path
    from .checkpoint import CheckpointError

    where = ", ".join(str(d) for d in search_dirs(models_dir)) or "(no models folder configured)"
    entry = REGISTRY.get(name)
    hint = (f" Put it in <models>/{entry.folder}/ (searched: {where}) or fetch it with "
            f"`python -m bfr_core download {name}`.") if entry else f" Searched: {where}."
    raise CheckpointError(f"model file not found: {name}.{hint}")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_status(entry: ModelFile, models_dir: str | os.PathLike | None = None) -> tuple[str, Path | None]:
    """('found' | 'missing' | 'corrupt' | 'unverified', path)."""
    path = find_model(entry.name, models_dir)
    if path is None:
        return "missing", None
    if entry.size is not None and path.stat().st_size != entry.size:
        return "corrupt", path
    if entry.sha256 is None:
        return "unverified", path
    return ("found" if sha256_of(path) == entry.sha256 else "corrupt"), path


def download(name: str, dest_root: str | os.PathLike, expected_sha256: str | None = None,
             allow_unpinned: bool = False) -> Path:
    """Download one registry file into `dest_root/<folder>/<name>`, verifying its sha256.

    Files whose checksum is not pinned in the registry need `expected_sha256`, or an explicit
    `allow_unpinned=True` (the computed hash is then printed for the user to check).
    """
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    if entry.sha256 and expected_sha256 and expected_sha256.lower() != entry.sha256:
        raise ValueError(f"--sha256 {expected_sha256} differs from the sha256 pinned for {name} ({entry.sha256})")
    want = entry.sha256 or (expected_sha256.lower() if expected_sha256 else None)
    if want is None and not allow_unpinned:
        raise ValueError(f"{name} has no pinned sha256 in this release; pass --sha256 HASH (from the model's "
                         f"publisher) or --allow-unpinned to accept whatever the URL serves (its sha256 is printed)")
    dest = Path(dest_root) / entry.folder / entry.name
    fd, tmp = temp_beside(dest)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=60) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        got = sha256_of(tmp)
        if want is not None and got != want:
            raise ValueError(f"checksum mismatch for {name}: expected {want}, got {got}; the download is "
                             f"incomplete or the file changed upstream. Nothing was written.")
        publish(tmp, dest)  # atomic: a half-downloaded file never takes the real name
    finally:
        tmp.unlink(missing_ok=True)
    return dest
