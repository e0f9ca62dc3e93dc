"""Face detectors (YuNet via OpenCV, RetinaFace in torch) behind one `detect()` interface, and face selection."""
from ...lazy import lazy_exports

_EXPORTS = {
    "DETECTOR_ALIASES": ".options",
    "DetectOptions": ".options",
    "SELECT_MODES": ".options",
    "SORT_MODES": ".options",
    "check_selection": ".options",
    "parse_indices": ".options",
    "FaceDetector": ".loading",
    "load_detector": ".loading",
    "select_faces": ".select",
    "detect_faces": ".batch",
    "FaceDetections": "..types",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
