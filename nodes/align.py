"""Align faces to the FFHQ template, and paste (restored) crops back."""
from __future__ import annotations

import os

import torch

from ..bfr_core.faces.warp import BORDER_MODES
from ..bfr_core.faces.align import align_faces
from ..bfr_core.faces.parsing import load_face_parser
from ..bfr_core.faces.paste import COLOR_MATCH_MODES, paste_faces
from ..bfr_core.restoration.pipeline import PasteOptions, crop_masks
from ..bfr_core.utils.layout import merge_alpha, split_alpha
from .comfy_glue import Progress, list_models, log, model_path, on_device, search_aliases, to_bchw, to_bhwc

MASK_MODES = ("ellipse", "square", "parsing")


class BFRAlignFaces:
    DESCRIPTION = ("Cuts every detected face out as an FFHQ-aligned square crop. The crops are a normal IMAGE "
                   "batch (faces of image 0 first, then image 1, ...), so any ComfyUI node can process them "
                   "before BFR Paste Faces puts them back. With no faces, one blank placeholder crop is output "
                   "(paste ignores it) so downstream nodes keep working.")
    CATEGORY = "face restore/BFR"
    SEARCH_ALIASES = search_aliases("align faces", "crop faces", "face crop", "ffhq")
    RETURN_TYPES = ("IMAGE", "BFR_FACES")
    RETURN_NAMES = ("crops", "faces")
    OUTPUT_TOOLTIPS = ("Aligned face crops, one per face.", "Where each crop came from, for BFR Paste Faces.")
    FUNCTION = "align"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The images the detections were made on."}),
            "detections": ("BFR_DETECTIONS", {"tooltip": "From BFR Detect Faces."}),
            "crop_size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                                  "tooltip": "Side of the aligned crops; 512 matches the DifFace prior."}),
            "border": (list(BORDER_MODES), {"default": "reflect",
                                            "tooltip": "How to fill crop areas outside the image: mirror (no "
                                                       "black bleed), repeat the edge, or black."}),
        }}

    def align(self, image, detections, crop_size, border):
        images = to_bchw(image)
        if len(detections) != images.shape[0]:
            raise ValueError(f"the detections are for {len(detections)} images but the image batch has "
                             f"{images.shape[0]}; connect the same IMAGE to Detect and Align")
        rgb, _ = split_alpha(images)
        crops, faces = align_faces(rgb, detections, crop_size, border)
        if len(faces) == 0:
            log.info("BFR Align Faces: no faces to align; outputting a placeholder crop")
            crops = rgb.new_zeros(1, 3, crop_size, crop_size)
        return (to_bhwc(crops), faces)


# The last parsing model used, keyed by (path, mtime, size): video frames and re-runs do not reload it.
_PARSER_CACHE: dict[tuple, object] = {}


def _face_parser(name: str):
    path = model_path("facedetection", name)
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _PARSER_CACHE:
        _PARSER_CACHE.clear()
        _PARSER_CACHE[key] = load_face_parser(path)
    return _PARSER_CACHE[key]


def _parsing_files() -> list[str]:
    return ["none"] + list_models("facedetection", (".pth", ".pt", ".safetensors"), contains="parsing")


class BFRPasteFaces:
    DESCRIPTION = ("Puts the (restored) aligned crops back into the original images with a soft mask, "
                   "optional colour matching, and order-independent blending of overlapping faces. Also outputs "
                   "the pasted-face mask.")
    CATEGORY = "face restore/BFR"
    SEARCH_ALIASES = search_aliases("paste faces", "paste back", "uncrop faces", "face mask")
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("The images with the faces pasted back.", "Where faces were pasted (1 = restored face).")
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The original images (the ones given to BFR Align Faces)."}),
            "crops": ("IMAGE", {"tooltip": "The aligned crops to paste, in the order BFR Align Faces made them; "
                                           "they may have been resized (any square size)."}),
            "faces": ("BFR_FACES", {"tooltip": "From BFR Align Faces."}),
            "mask": (list(MASK_MODES), {"default": "ellipse",
                                        "tooltip": "Face region: an oval from the landmark template, the whole "
                                                   "crop square, or a face-parsing mask (needs a parsing model)."}),
            "feather": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 0.5, "step": 0.01,
                                  "tooltip": "Width of the soft mask edge, as a fraction of the crop size."}),
            "color_match": (list(COLOR_MATCH_MODES), {"default": "none",
                                                      "tooltip": "Match the pasted face's colours to the original: "
                                                                 "per-channel statistics, or low frequencies "
                                                                 "(keeps restored detail, fixes tone shifts)."}),
            "parsing_model": (_parsing_files(), {"default": "none",
                                                 "tooltip": "parsing_bisenet.pth or parsing_parsenet.pth in "
                                                            "ComfyUI/models/facedetection, for mask=parsing."}),
        }}

    def paste(self, image, crops, faces, mask, feather, color_match, parsing_model="none"):
        images = to_bchw(image)
        rgb, alpha = split_alpha(images)
        if len(faces) == 0:
            log.info("BFR Paste Faces: no faces; image returned unchanged")
            return (image, torch.zeros(image.shape[0], image.shape[1], image.shape[2]))
        crops_t = split_alpha(to_bchw(crops))[0]
        parser = None
        if mask == "parsing":
            if parsing_model == "none":
                raise ValueError("mask=parsing needs a parsing model: put parsing_bisenet.pth or "
                                 "parsing_parsenet.pth in ComfyUI/models/facedetection and pick it")
            parser = _face_parser(parsing_model)
            with on_device(parser.model):
                masks = crop_masks(crops_t, PasteOptions(mask, feather, color_match), parser)
        else:
            masks = crop_masks(crops_t, PasteOptions(mask, feather, color_match))
        out, coverage = paste_faces(rgb, crops_t, faces, masks, color_match, progress=Progress(len(faces)))
        return (to_bhwc(merge_alpha(out, alpha, images.shape[1])), coverage.float().cpu())
