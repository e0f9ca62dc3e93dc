"""Draws docs/images/crop_masks.png from the pack's own templates: `python docs/make_crop_masks_figure.py`."""
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bfr_core.faces.geometry import ffhq_template  # noqa: E402
from bfr_core.identity.guidance import feature_mask  # noqa: E402
from bfr_core.identity.recognizers import arcface_box  # noqa: E402
from bfr_core.faces.masks import template_mask  # noqa: E402

S = 512
PANELS = [("paste mask (ellipse)", template_mask(S).numpy(), (0.2, 0.7, 0.3)),
          ("identity-guidance mask (features)", feature_mask(S).numpy(), (0.85, 0.3, 0.2))]


def panel(title: str, mask: np.ndarray, colour: tuple[float, float, float], arcface: bool) -> np.ndarray:
    m = mask[..., None]
    img = np.full((S, S, 3), 0.93, np.float32) * (1 - 0.6 * m) + np.array(colour, np.float32) * 0.6 * m
    img = np.ascontiguousarray((img * 255).astype(np.uint8))
    for x, y in ffhq_template(S).numpy():
        cv2.circle(img, (int(round(x)), int(round(y))), 6, (40, 40, 40), -1)
    if arcface:
        x0, y0, x1, y1 = arcface_box(S)
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), (60, 60, 200), 2)
        cv2.putText(img, "ArcFace 112 crop", (int(x0) + 6, int(y0) + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (60, 60, 200), 2)
    cv2.putText(img, title, (14, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.75, (30, 30, 30), 2)
    cv2.rectangle(img, (0, 0), (S - 1, S - 1), (120, 120, 120), 1)
    return img


if __name__ == "__main__":
    fig = np.concatenate([panel(t, m, c, i == 1) for i, (t, m, c) in enumerate(PANELS)], 1)
    cv2.imwrite(str(ROOT / "docs" / "images" / "crop_masks.png"), fig[:, :, ::-1])
