"""ArcFace face recognizers for identity guidance and identity metrics.

`load_recognizer(path)` reads, without running any pickled code:

* insightface arcface_torch `backbone.pth` (iresnet18/34/50/100/200; the variant is read from the
  number of units per stage in the keys) → `IResNet`;
* facexlib `recognition_arcface_ir_se50.pth` (TreB1eN IR-SE50 layout: `input_layer`, `body`,
  `output_layer`; IR without SE and 100/152-unit variants too) → `IRSEBackbone`. It takes 112×112
  RGB in [-1, 1] like the others (TreB1eN's test transform is ToTensor + Normalize(0.5, 0.5) on RGB
  images; 512·7·7 FC input fixes the size). Not to be confused with GFPGAN/basicsr's
  `arcface_resnet18.pth` (`ResNetArcFace`, 128×128 grayscale), which is refused with that explanation;
* insightface ONNX recognizers of the iresnet family (`glintr100.onnx` of antelopev2 = iresnet100,
  `w600k_r50.onnx` of buffalo_l = iresnet50), converted into `IResNet` (see `onnx_convert`; `onnx`
  is needed only for these).

Contract: `Recognizer.model` maps [B, 3, 112, 112] RGB in [-1, 1] to the raw embedding [B, 512];
`Recognizer.embed(faces)` takes aligned FFHQ-template crops [B, 3, S, S] RGB in [0, 1] (any S),
cuts the ArcFace region out of them with a differentiable similarity warp (FFHQ template →
standard ArcFace 112 template; at 512 px this is the box x∈[64.8, 448.2], y∈[61.1, 444.6]) and
returns L2-normalised float32 embeddings on the faces' device, differentiable w.r.t. the faces.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..archs.iresnet import INPUT_SIZE, stage_counts
from ..archs.registry import load_architecture
from ..faces.geometry import (alignment_scale, estimate_similarity, ffhq_template, homogeneous, invert_affine,
                              transform_points)
from ..faces.warp import shrink_antialiased, warp_affine
from ..models.checkpoint import CheckpointError, load_state_dict
from ..models.files import check_licence
from ..models.holder import ModelHolder

# insightface's 5-point template for 112×112 ArcFace crops (`arcface_dst` of face_align.norm_crop):
# left eye, right eye, nose, left mouth corner, right mouth corner (image-left first).
ARCFACE_TEMPLATE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=torch.float64,
)

# The layouts users have, from the pack's own default to what other packs (InstantID, PuLID, ReActor, ...) use.
DEFAULT_RECOGNIZER = "recognition_arcface_ir_se50.pth"  # facexlib, MIT: usable commercially
DEFAULT_RECOGNIZER_FOLDER = "facerestore_models"

FOLDER_HINT = (
    "ArcFace recognizers go in ComfyUI/models/facerestore_models (facexlib's "
    "recognition_arcface_ir_se50.pth, MIT, the default) or in ComfyUI/models/insightface, in any of the "
    "layouts packs use: insightface/<pack>/<file> or insightface/models/<pack>/<file> (insightface's "
    "antelopev2/glintr100.onnx or buffalo_l/w600k_r50.onnx, non-commercial, need the onnx package), or an "
    "arcface_torch iresnet backbone.pth."
)


def recognizer_spellings(name: str) -> list[str]:
    """Relative paths under models/insightface where the same file may sit, `name` first.

    insightface itself (and the packs built on it) keep `models/insightface/models/<pack>/<file>`; other packs and
    older versions of this one use `models/insightface/<pack>/<file>`. Either spelling finds the file in either place.
    """
    name = name.replace("\\", "/").lstrip("/")
    other = name[len("models/"):] if name.startswith("models/") else "models/" + name
    return [name, other]


def join_hint(message: str, hint: str) -> str:
    """`message` and `hint` as two sentences (a message without a final full stop gets one)."""
    message = message.rstrip()
    if hint in message:
        return message
    if message and message[-1] not in ".!?":
        message += "."
    return f"{message} {hint}"


def arcface_affine(crop_size: int) -> Tensor:
    """[2, 3] float64 similarity mapping pixels of an aligned FFHQ crop of `crop_size` to the ArcFace 112 crop."""
    return estimate_similarity(ffhq_template(crop_size), ARCFACE_TEMPLATE_112)


def arcface_box(crop_size: int = 512) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1): the part of an aligned FFHQ crop that the ArcFace 112 crop covers (pixel edges)."""
    corners = torch.tensor([[-0.5, -0.5], [INPUT_SIZE - 0.5, -0.5], [-0.5, INPUT_SIZE - 0.5],
                            [INPUT_SIZE - 0.5, INPUT_SIZE - 0.5]], dtype=torch.float64)
    pts = transform_points(invert_affine(arcface_affine(crop_size)), corners)
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def arcface_crop(faces: Tensor, antialias: bool = True) -> Tensor:
    """The ArcFace 112×112 crops [B, C, 112, 112] of aligned FFHQ crops [B, C, S, S]; differentiable.

    antialias=False: bilinear sampling exactly like `cv2.warpAffine(face, arcface_affine(S), (112, 112))`
    (what insightface's `norm_crop` does on a photo). antialias=True (default): the crop is first
    shrunk to the ArcFace scale with an antialiasing filter, so a 512 face (4.6:1) does not alias and
    the gradient reaches every input pixel instead of a sparse grid.
    """
    if faces.dim() != 4 or faces.shape[-1] != faces.shape[-2]:
        raise ValueError(f"expected square aligned faces [B, C, S, S], got {tuple(faces.shape)}")
    size = faces.shape[-1]
    m = arcface_affine(size).to(faces.device)
    src = faces
    if antialias:
        s = float(alignment_scale(m))
        if s < 1.0:
            src, old_to_new = shrink_antialiased(faces, s)
            m = (homogeneous(m) @ torch.linalg.inv(homogeneous(old_to_new.to(m.device))))[:2]
    n = faces.shape[0]
    return warp_affine(src, m[None].expand(n, -1, -1).float(), (INPUT_SIZE, INPUT_SIZE), border="replicate",
                       mode="bilinear")


class Recognizer(ModelHolder):
    """An ArcFace network with the crop and normalisation around it.

    Attributes: `model` (nn.Module, eval mode, parameters frozen: [B, 3, 112, 112] RGB in [-1, 1] →
    raw [B, 512]), `arch` (e.g. 'iresnet100', 'ir_se50'), `source` ('arcface_torch' | 'facexlib' |
    'onnx'), `path`, `detail` (how the file was read, e.g. an ONNX graph's input normalisation).
    """

    input_size = INPUT_SIZE

    def __init__(self, model: nn.Module, arch: str, source: str, path: str | os.PathLike | None = None,
                 detail: str = ""):
        self.model = model.eval().requires_grad_(False)
        self.arch = arch
        self.source = source
        self.path = None if path is None else str(path)
        self.detail = detail

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Recognizer":
        """Move the network (in place) and return self."""
        self.model.to(device=device, dtype=dtype)
        return self

    def crop(self, faces: Tensor, antialias: bool = True) -> Tensor:
        """The 112×112 ArcFace crops (RGB, [0, 1]) that `embed` feeds the network."""
        return arcface_crop(faces, antialias)

    def embed(self, faces: Tensor, antialias: bool = True) -> Tensor:
        """L2-normalised embeddings [B, 512] (float32, on the faces' device) of aligned FFHQ crops.

        faces: [B, 3, S, S] (or [3, S, S]) RGB in [0, 1] on any device and float dtype; gradients
        flow back to them. The crop is computed in float32, the network runs in its own dtype.
        """
        if faces.dim() == 3:
            return self.embed(faces[None], antialias)[0]
        if faces.dim() != 4 or faces.shape[1] != 3:
            raise ValueError(f"expected RGB faces [B, 3, S, S], got {tuple(faces.shape)}")
        if not faces.is_floating_point():
            raise TypeError(f"expected float faces in [0, 1], got {faces.dtype}")
        out_device = faces.device
        x = faces.to(device=self.device, dtype=torch.float32)
        crops = arcface_crop(x, antialias)
        emb = self.model((crops * 2 - 1).to(self.dtype)).float()
        return F.normalize(emb, dim=1, eps=1e-12).to(out_device)

    __call__ = embed

    def __repr__(self) -> str:
        return f"Recognizer({self.arch}, {self.source}, device={self.device}, dtype={self.dtype}, path={self.path!r})"


_stage_counts = stage_counts  # kept for callers of the old private name

_SOURCES = {"arcface_iresnet": "arcface_torch", "facexlib_irse": "facexlib"}


def _from_state_dict(sd: dict[str, Tensor], path: str | os.PathLike) -> tuple[nn.Module, str, str]:
    """(network, arch, source) of a recognizer state dict, through the architecture registry."""
    loaded = load_architecture(sd, "recognizer", name=path, hint=FOLDER_HINT,
                               expected="ArcFace recognition (arcface_torch iresnet or facexlib IR-SE)")
    net = loaded.module
    return net, net.arch, _SOURCES[loaded.arch.id]


def load_recognizer(path: str | os.PathLike, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Recognizer:
    """Load an ArcFace recognizer (.pth / .pt / .safetensors / .onnx) onto `device` in `dtype`."""
    path = Path(path)
    check_licence(path)  # $BFR_COMMERCIAL_ONLY
    try:
        if path.suffix.lower() == ".onnx":
            if not path.is_file():
                raise CheckpointError(f"model file not found: {path}")
            from .onnx_convert import iresnet_from_onnx

            model, arch, detail = iresnet_from_onnx(path)
            source = "onnx"
        else:
            model, arch, source = _from_state_dict(load_state_dict(path), path)
            detail = "input RGB in [-1, 1]"
    except CheckpointError as exc:
        msg = str(exc)
        if FOLDER_HINT in msg:
            raise
        raise CheckpointError(join_hint(msg, FOLDER_HINT)) from exc
    return Recognizer(model, arch, source, path, detail).to(device, dtype)
