"""ComfyUI nodes: a thin adapter over bfr_core (argument mapping, model folders, progress)."""
from .align import BFRAlignFaces, BFRPasteFaces
from .comfy_glue import register_model_folders
from .detect import BFRDetectFaces, BFRLoadFaceDetector

register_model_folders()

NODE_CLASS_MAPPINGS = {
    "BFRLoadFaceDetector": BFRLoadFaceDetector,
    "BFRDetectFaces": BFRDetectFaces,
    "BFRAlignFaces": BFRAlignFaces,
    "BFRPasteFaces": BFRPasteFaces,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "BFRLoadFaceDetector": "BFR Load Face Detector",
    "BFRDetectFaces": "BFR Detect Faces",
    "BFRAlignFaces": "BFR Align Faces",
    "BFRPasteFaces": "BFR Paste Faces",
}
