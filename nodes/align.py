"""Align faces to the FFHQ template, and paste (restored) crops back."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..bfr_core.faces.warp import BORDER_MODES
from ..bfr_core.faces.align import align_faces
from ..bfr_core.faces.parsing import load_face_parser
from ..bfr_core.faces.paste import COLOR_MATCH_MODES, paste_faces
from ..bfr_core.restoration.pipeline import PasteOptions, crop_masks
from ..bfr_core.restoration.temporal import COLOR_SMOOTHING, TrackMemory
from ..bfr_core.utils.layout import merge_alpha, split_alpha
from .comfy_glue import Progress, list_models, log, model_path, to_bchw, to_bhwc
from .memory import activation_bytes, manage, models_loaded
from .schema import Detections, Faces, node_schema

MASK_MODES = ("ellipse", "square", "parsing")
COLOR_REFERENCES = ("per_face", "per_track")
PARSING_MODEL_NEEDED = ("mask=parsing needs a parsing model: put parsing_bisenet.pth or parsing_parsenet.pth in "
                        "ComfyUI/models/facedetection, refresh (R) and pick it in parsing_model")


class BFRAlignFaces(io.ComfyNode):
    SEARCH = ("align faces", "crop faces", "face crop", "ffhq")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRAlignFaces", "BFR Align Faces",
            "Cuts every detected face out as an FFHQ-aligned square crop. The crops are a normal IMAGE batch (faces "
            "of image 0 first, then image 1, ...), so any ComfyUI node can process them before BFR Paste Faces puts "
            "them back. With no faces, one blank placeholder crop is output (paste ignores it) so downstream nodes "
            "keep working.",
            inputs=[
                io.Image.Input("image", tooltip="The images the detections were made on."),
                Detections.Input("detections", tooltip="From BFR Detect Faces."),
                io.Int.Input("crop_size", default=512, min=64, max=2048, step=8,
                             tooltip="Side of the aligned crops; 512 matches the DifFace prior."),
                io.Combo.Input("border", options=list(BORDER_MODES), default="reflect",
                               tooltip="How to fill crop areas outside the image: mirror (no black bleed), repeat "
                                       "the edge, or black."),
            ],
            outputs=[io.Image.Output(display_name="crops", tooltip="Aligned face crops, one per face."),
                     Faces.Output(display_name="faces", tooltip="Where each crop came from, for BFR Paste Faces.")],
            search=cls.SEARCH)

    @classmethod
    def execute(cls, image, detections, crop_size, border) -> io.NodeOutput:
        images = to_bchw(image)
        if len(detections) != images.shape[0]:
            raise ValueError(f"the detections are for {len(detections)} images but the image batch has "
                             f"{images.shape[0]}; connect the same IMAGE to Detect and Align")
        rgb, _ = split_alpha(images)
        crops, faces = align_faces(rgb, detections, crop_size, border)
        if len(faces) == 0:
            log.info("BFR Align Faces: no faces to align; outputting a placeholder crop")
            crops = rgb.new_zeros(1, 3, crop_size, crop_size)
        return io.NodeOutput(to_bhwc(crops), faces)


def _parsing_files() -> list[str]:
    return ["none"] + list_models("facedetection", (".pth", ".pt", ".safetensors"), contains="parsing")


class BFRPasteFaces(io.ComfyNode):
    SEARCH = ("paste faces", "paste back", "uncrop faces", "face mask")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRPasteFaces", "BFR Paste Faces",
            "Puts the (restored) aligned crops back into the original images with a soft mask, optional colour "
            "matching, and order-independent blending of overlapping faces. Also outputs the pasted-face mask.",
            inputs=[
                io.Image.Input("image", tooltip="The original images (the ones given to BFR Align Faces)."),
                io.Image.Input("crops", tooltip="The aligned crops to paste, in the order BFR Align Faces made them; "
                                                "they may have been resized (any square size)."),
                Faces.Input("faces", tooltip="From BFR Align Faces."),
                io.Combo.Input("mask", options=list(MASK_MODES), default="ellipse",
                               tooltip="Face region: an oval from the landmark template, the whole crop square, or a "
                                       "face-parsing mask (needs a parsing model)."),
                io.Float.Input("feather", default=0.1, min=0.0, max=0.5, step=0.01,
                               tooltip="Width of the soft mask edge, as a fraction of the crop size."),
                io.Combo.Input("color_match", options=list(COLOR_MATCH_MODES), default="none",
                               tooltip="Match the pasted face's colours to the original: per-channel statistics, or "
                                       "low frequencies (keeps restored detail, fixes tone shifts)."),
                io.Combo.Input("parsing_model", options=_parsing_files(), default="none",
                               tooltip="parsing_bisenet.pth or parsing_parsenet.pth in ComfyUI/models/facedetection, "
                                       "for mask=parsing."),
                io.Combo.Input("color_reference", options=list(COLOR_REFERENCES), default="per_face", optional=True,
                               tooltip="What color_match matches a face to. per_face: its own original. per_track "
                                       "(video frames tracked by BFR Track Faces): a moving average of the person's "
                                       "originals over the frames, so the colour correction does not flicker."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The images with the faces pasted back."),
                     io.Mask.Output(display_name="mask", tooltip="Where faces were pasted (1 = restored face).")],
            search=cls.SEARCH)

    @classmethod
    def validate_inputs(cls, mask: str, parsing_model: str) -> bool | str:
        """mask=parsing without a parsing model is refused before the run. Declaring these inputs turns off
        ComfyUI's own list check for them, so it is done here."""
        if mask is None or parsing_model is None:  # fed by a link: checked when the node runs
            return True
        if mask not in MASK_MODES:
            return f"mask must be one of {MASK_MODES}, got {mask!r}"
        if mask == "parsing" and parsing_model == "none":
            return PARSING_MODEL_NEEDED
        return True

    @classmethod
    def execute(cls, image, crops, faces, mask, feather, color_match, parsing_model="none",
                color_reference="per_face") -> io.NodeOutput:
        images = to_bchw(image)
        rgb, alpha = split_alpha(images)
        if len(faces) == 0:
            log.info("BFR Paste Faces: no faces; image returned unchanged")
            return io.NodeOutput(image, torch.zeros(image.shape[0], image.shape[1], image.shape[2]))
        crops_t = split_alpha(to_bchw(crops))[0]
        reference = None
        if color_reference == "per_track" and color_match != "none":
            if not faces.tracked:
                raise ValueError("color_reference=per_track needs tracked faces: put BFR Track Faces between BFR "
                                 "Detect Faces and BFR Align Faces (or use per_face)")
            reference = TrackMemory(color=COLOR_SMOOTHING).color_reference_of(faces.track_id, faces.image_index)
        parser = None
        if mask == "parsing":
            if parsing_model == "none":
                raise ValueError(PARSING_MODEL_NEEDED)
            # Loaded per run (the widget holds a file name, not a loaded model); ComfyUI manages it while it runs.
            parser = manage(load_face_parser(model_path("facedetection", parsing_model)))
            with models_loaded(parser, memory_required=activation_bytes(parser, min(8, len(faces)), 512, 512)):
                masks = crop_masks(crops_t, PasteOptions(mask, feather, color_match), parser)
        else:
            masks = crop_masks(crops_t, PasteOptions(mask, feather, color_match))
        out, coverage = paste_faces(rgb, crops_t, faces, masks, color_match, progress=Progress(len(faces)),
                                    color_reference=reference)
        return io.NodeOutput(to_bhwc(merge_alpha(out, alpha, images.shape[1])), coverage.float().cpu())
