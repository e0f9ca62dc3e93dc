"""ComfyUI nodes: a thin adapter over bfr_core (argument mapping, model folders, progress)."""
from .align import BFRAlignFaces, BFRPasteFaces
from .comfy_glue import register_model_folders
from .detect import BFRDetectFaces, BFRLoadFaceDetector
from .identity import BFRFaceSimilarity, BFRIdentityGuidance, BFRLoadFaceRecognizer
from .restore import BFRDiffusionRestore, BFRLoadDiffusionPrior, BFRLoadRestorer, BFRRestoreFaces

register_model_folders()

NODE_CLASS_MAPPINGS = {
    "BFRLoadFaceDetector": BFRLoadFaceDetector,
    "BFRDetectFaces": BFRDetectFaces,
    "BFRAlignFaces": BFRAlignFaces,
    "BFRPasteFaces": BFRPasteFaces,
    "BFRLoadDiffusionPrior": BFRLoadDiffusionPrior,
    "BFRLoadRestorer": BFRLoadRestorer,
    "BFRDiffusionRestore": BFRDiffusionRestore,
    "BFRRestoreFaces": BFRRestoreFaces,
    "BFRLoadFaceRecognizer": BFRLoadFaceRecognizer,
    "BFRIdentityGuidance": BFRIdentityGuidance,
    "BFRFaceSimilarity": BFRFaceSimilarity,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "BFRLoadFaceDetector": "BFR Load Face Detector",
    "BFRDetectFaces": "BFR Detect Faces",
    "BFRAlignFaces": "BFR Align Faces",
    "BFRPasteFaces": "BFR Paste Faces",
    "BFRLoadDiffusionPrior": "BFR Load Diffusion Prior",
    "BFRLoadRestorer": "BFR Load Restorer",
    "BFRDiffusionRestore": "BFR Diffusion Restore",
    "BFRRestoreFaces": "BFR Restore Faces (all in one)",
    "BFRLoadFaceRecognizer": "BFR Load Face Recognizer",
    "BFRIdentityGuidance": "BFR Identity Guidance",
    "BFRFaceSimilarity": "BFR Face Similarity",
}
