"""Face detector loader and face detection nodes."""
from __future__ import annotations

import numpy as np
import torch

from ..bfr_core.faces.detection import SELECT_MODES, SORT_MODES, load_detector
from ..bfr_core.faces.detection.batch import DetectOptions, detect_faces
from ..bfr_core.utils.layout import split_alpha
from .comfy_glue import Progress, list_models, log, model_path, on_device, search_aliases, to_bchw

DETECTOR_SUFFIXES = (".onnx", ".pth", ".pt", ".safetensors")


def _detector_files() -> list[str]:
    files = [f for f in list_models("facedetection", DETECTOR_SUFFIXES)
             if "yunet" in f.lower() or "detection" in f.lower() or f.lower().endswith(".onnx")]
    return files or ["face_detection_yunet_2023mar.onnx"]


class BFRLoadFaceDetector:
    DESCRIPTION = ("Loads a face detector from ComfyUI/models/facedetection: YuNet "
                   "(face_detection_yunet_2023mar.onnx, fast, CPU) or RetinaFace (detection_Resnet50_Final.pth, "
                   "detection_mobilenet0.25_Final.pth, the files facexlib-based packs already use).")
    CATEGORY = "face restore/BFR"
    SEARCH_ALIASES = search_aliases("face detection", "detector", "yunet", "retinaface")
    RETURN_TYPES = ("BFR_DETECTOR",)
    RETURN_NAMES = ("detector",)
    OUTPUT_TOOLTIPS = ("The face detector, for BFR Detect Faces, BFR Restore Faces or BFR Identity Guidance.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (_detector_files(), {"tooltip": "Detector file in ComfyUI/models/facedetection. "
                                                          "Get YuNet with `python -m bfr_core download "
                                                          "face_detection_yunet_2023mar.onnx`."}),
        }}

    def load(self, model_name):
        return (load_detector(model_path("facedetection", model_name)),)


def draw_detections(image: np.ndarray, dets) -> np.ndarray:
    """Boxes, landmarks and scores drawn on an RGB float image [H, W, 3] (returns a copy)."""
    import cv2

    canvas = np.ascontiguousarray((image * 255).round().clip(0, 255).astype(np.uint8))
    thick = max(1, round(max(canvas.shape[:2]) / 600))
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255)]
    for i in range(len(dets)):
        x1, y1, x2, y2 = [int(round(float(v))) for v in dets.boxes[i]]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (255, 255, 0), thick)
        for j, (x, y) in enumerate(dets.landmarks[i].tolist()):
            cv2.circle(canvas, (int(round(x)), int(round(y))), thick + 1, colours[j], -1)
        cv2.putText(canvas, f"{i}:{float(dets.scores[i]):.2f}", (x1, max(0, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, (255, 255, 0), max(1, thick // 2))
    return canvas.astype(np.float32) / 255


def run_detection(detector, images: torch.Tensor, opts: DetectOptions) -> list:
    """detect_faces with a torch detector (RetinaFace) on ComfyUI's device, offloaded afterwards.

    Images stay on the CPU: the detector moves one chunk at a time to its device (video batches).
    """
    module = detector if isinstance(detector, torch.nn.Module) else getattr(detector, "model", None)
    modules = [module] if isinstance(module, torch.nn.Module) else []  # YuNet runs in OpenCV
    with on_device(*modules):
        return detect_faces(detector, images, opts, chunk=4, progress=Progress(images.shape[0]))


class BFRDetectFaces:
    DESCRIPTION = ("Finds faces in every image of the batch and chooses which to keep. Outputs the detections "
                   "for BFR Align Faces and a preview with boxes, 5 landmarks and the face index used by "
                   "'indices'.")
    CATEGORY = "face restore/BFR"
    SEARCH_ALIASES = search_aliases("face detection", "detect faces", "find faces")
    RETURN_TYPES = ("BFR_DETECTIONS", "IMAGE", "INT")
    RETURN_NAMES = ("detections", "preview", "face_count")
    OUTPUT_TOOLTIPS = ("Faces per image, for BFR Align Faces.", "The image with detections drawn.",
                       "Number of faces kept over the whole batch.")
    FUNCTION = "detect"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Images (any batch size, e.g. video frames)."}),
            "detector": ("BFR_DETECTOR", {"tooltip": "From BFR Load Face Detector."}),
            "score_threshold": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Minimum detection confidence. Lower finds more side, "
                                                     "small and blurry faces (and more false ones)."}),
            "min_face_size": ("INT", {"default": 0, "min": 0, "max": 4096,
                                      "tooltip": "Ignore faces smaller than this many pixels (shorter box side)."}),
            "select": (list(SELECT_MODES), {"default": "all",
                                            "tooltip": "all faces, the largest one, the one closest to the "
                                                       "centre, or those listed in 'indices'."}),
            "indices": ("STRING", {"default": "", "tooltip": "With select=indices: positions in the sorted "
                                                              "order, e.g. '0,2' (negative counts from the end)."}),
            "sort_by": (list(SORT_MODES), {"default": "area",
                                           "tooltip": "Order of faces (and of the aligned crops): largest first, "
                                                      "left to right, top to bottom, or highest score first."}),
            "max_faces": ("INT", {"default": 0, "min": 0, "max": 1000,
                                  "tooltip": "Keep at most this many faces per image after sorting (0 = no limit)."}),
        }}

    def detect(self, image, detector, score_threshold, min_face_size, select, indices, sort_by, max_faces):
        images = to_bchw(image)
        opts = DetectOptions(score_threshold, float(min_face_size), sort_by, select, indices, max_faces)
        dets = run_detection(detector, images, opts)
        total = sum(len(d) for d in dets)
        if total == 0:
            # Not "no faces found": faces may have been found and dropped by the selection (the library then
            # warns with the reason, e.g. an index out of range).
            log.info("BFR Detect Faces: no face kept in %d image(s) (none detected, or none passed the threshold, "
                     "minimum size and selection)", images.shape[0])
        rgb = split_alpha(images)[0].movedim(1, -1).cpu().numpy()
        preview = torch.from_numpy(np.stack([draw_detections(rgb[b], dets[b]) for b in range(len(dets))]))
        return (dets, preview, total)
