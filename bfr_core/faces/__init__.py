"""Face geometry, from a photo to aligned crops and back: types, detection and selection, the FFHQ template and
similarity transforms, warps, alignment, paste-back, masks and face parsing; face tracks and landmark smoothing
across video frames."""
from ..lazy import lazy_exports

_EXPORTS = {
    "align_faces": ".align",
    "DETECTOR_ALIASES": ".detection",
    "FaceDetector": ".detection",
    "load_detector": ".detection",
    "parse_indices": ".detection",
    "select_faces": ".detection",
    "align_matrices": ".geometry",
    "estimate_similarity": ".geometry",
    "ffhq_template": ".geometry",
    "template_mask": ".masks",
    "KalmanFilter": ".smoothing",
    "OneEuroFilter": ".smoothing",
    "SmoothingOptions": ".smoothing",
    "FaceTracker": ".tracking",
    "TrackOptions": ".tracking",
    "track_faces": ".tracking",
    "COLOR_MATCH_MODES": ".paste",
    "match_colors": ".paste",
    "paste_faces": ".paste",
    "AlignedFaces": ".types",
    "FaceDetections": ".types",
    "warp_affine": ".warp",
    "warp_faces": ".warp",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

