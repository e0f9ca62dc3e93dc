"""Face geometry, from a photo to aligned crops and back: types, detection and selection, the FFHQ template and
similarity transforms, warps, alignment, paste-back, masks and face parsing."""
from .align import align_faces
from .detection import DETECTOR_ALIASES, FaceDetector, load_detector, parse_indices, select_faces
from .geometry import align_matrices, estimate_similarity, ffhq_template
from .masks import template_mask
from .paste import COLOR_MATCH_MODES, match_colors, paste_faces
from .types import AlignedFaces, FaceDetections
from .warp import warp_affine, warp_faces

__all__ = ["COLOR_MATCH_MODES", "DETECTOR_ALIASES", "AlignedFaces", "FaceDetections", "FaceDetector", "align_faces",
           "align_matrices", "estimate_similarity", "ffhq_template", "load_detector", "match_colors", "parse_indices",
           "paste_faces", "select_faces", "template_mask", "warp_affine", "warp_faces"]
