"""Detection options, torch-free so the command line starts fast: detector short names, face selection modes and
`DetectOptions` (checked when made, each bad value named)."""
from __future__ import annotations

from dataclasses import dataclass

# Short names the CLI and nodes accept, mapped to the registry's file names.
DETECTOR_ALIASES = {
    "yunet": "face_detection_yunet_2023mar.onnx",
    "retinaface_resnet50": "detection_Resnet50_Final.pth",
    "retinaface_mobilenet": "detection_mobilenet0.25_Final.pth",
}
SELECT_MODES = ("all", "largest", "center", "indices")
SORT_MODES = ("area", "left_to_right", "top_to_bottom", "score")


def parse_indices(text: str) -> list[int]:
    """'0, 2,5' → [0, 2, 5]; empty → []. Raises ValueError naming the bad item."""
    out = []
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise ValueError(f"face index list must be integers separated by commas, got {item!r} in {text!r}") from None
    return out


def check_selection(score_threshold: float, min_size: float, sort_by: str, select: str, indices: str | list[int],
                    max_faces: int) -> None:
    """ValueError naming the first selection option that is out of range."""
    t = float(score_threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"score threshold must be in [0, 1], got {score_threshold!r}")
    if not float(min_size) >= 0:
        raise ValueError(f"min face size must be >= 0 px, got {min_size!r}")
    if int(max_faces) < 0:
        raise ValueError(f"max faces must be >= 0 (0 = no limit), got {max_faces!r}")
    if sort_by not in SORT_MODES:
        raise ValueError(f"sort_by must be one of {SORT_MODES}, got {sort_by!r}")
    if select not in SELECT_MODES:
        raise ValueError(f"select must be one of {SELECT_MODES}, got {select!r}")
    if select == "indices" and isinstance(indices, str):
        parse_indices(indices)


@dataclass
class DetectOptions:
    """Which faces to detect and keep (see `select_faces`)."""

    score_threshold: float = 0.6
    min_size: float = 0.0
    sort_by: str = "area"
    select: str = "all"
    indices: str = ""
    max_faces: int = 0

    def __post_init__(self) -> None:
        # Checked when set, with the option's name: a bad value must not surface as an OpenCV assertion.
        check_selection(self.score_threshold, self.min_size, self.sort_by, self.select, self.indices, self.max_faces)
