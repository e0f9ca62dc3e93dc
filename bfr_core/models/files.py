"""The registry of model files the pack knows, and where to find them on disk.

Nothing here downloads implicitly: `download()` runs only from the explicit CLI command
`python -m bfr_core download NAME`, and verifies the file before it is moved into place.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..io.atomic import publish, temp_beside

ENV_MODELS_DIR = "BFR_MODELS_DIR"


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
              "S-Lab License 1.0 (non-commercial)", None, None, "DifFace face diffusion prior (iDDPM, 512)"),
    ModelFile("swinir_restoration512_L1.pth", "facerestore_models", "restorer",
              "https://github.com/zsyOAOA/DifFace/releases/download/V1.0/swinir_restoration512_L1.pth",
              "S-Lab License 1.0 (non-commercial)", None, None, "DifFace SwinIR restoration backbone"),
]}


def expectation_hint(path: str | os.PathLike) -> str:
    """For a known file name: where it belongs, its expected sha256 (when pinned), and how to re-fetch it."""
    entry = REGISTRY.get(Path(path).name)
    if entry is None:
        return ""
    sha = f"expected sha256 {entry.sha256}" if entry.sha256 else "sha256 not pinned in this release"
    return (f" ({entry.name}: {sha}; it belongs in <ComfyUI>/models/{entry.folder}/ or <--models-dir>/{entry.folder}/; "
            f"re-fetch with `python -m bfr_core download {entry.name}`)")


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
