"""Face detector loader and face detection nodes."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..bfr_core.faces.detection import SELECT_MODES, SORT_MODES, load_detector
from ..bfr_core.faces.detection.batch import DetectOptions, detect_faces
from ..bfr_core.utils.layout import split_alpha
from .comfy_glue import Progress, list_models, log, model_path, to_bchw
from .memory import activation_bytes, manage, models_loaded
from .schema import Detections, Detector, checked, node_schema

DETECTOR_SUFFIXES = (".onnx", ".pth", ".pt", ".safetensors")


def _detector_files() -> list[str]:
    files = [f for f in list_models("facedetection", DETECTOR_SUFFIXES)
             if "yunet" in f.lower() or "detection" in f.lower() or f.lower().endswith(".onnx")]
    return files or ["face_detection_yunet_2023mar.onnx"]


class BFRLoadFaceDetector(io.ComfyNode):
    SEARCH = ("face detection", "detector", "yunet", "retinaface")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRLoadFaceDetector", "BFR Load Face Detector",
            "Loads a face detector from ComfyUI/models/facedetection: YuNet (face_detection_yunet_2023mar.onnx, "
            "fast, CPU) or RetinaFace (detection_Resnet50_Final.pth, detection_mobilenet0.25_Final.pth, the files "
            "facexlib-based packs already use).",
            inputs=[io.Combo.Input("model_name", options=_detector_files(),
                                   tooltip="Detector file in ComfyUI/models/facedetection. Get YuNet with "
                                           "`python -m bfr_core download face_detection_yunet_2023mar.onnx`.")],
            outputs=[Detector.Output(display_name="detector", tooltip="The face detector, for BFR Detect Faces, "
                                     "BFR Restore Faces or BFR Identity Guidance.")],
            search=cls.SEARCH)

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        """A missing file is named with its folder at queue time, instead of ComfyUI's bare "Value not in list"."""
        return checked(lambda: model_path("facedetection", model_name), model_name)

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        return io.NodeOutput(manage(load_detector(model_path("facedetection", model_name))))


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
    """detect_faces with a torch detector (RetinaFace) on ComfyUI's device, through its memory manager.

    Images stay on the CPU: the detector moves one chunk at a time to its device (video batches).
    """
    chunk = 4
    need = activation_bytes(detector, min(chunk, images.shape[0]), images.shape[-2], images.shape[-1])
    with models_loaded(detector, memory_required=need):  # YuNet runs in OpenCV: nothing to load
        return detect_faces(detector, images, opts, chunk=chunk, progress=Progress(images.shape[0]))


class BFRDetectFaces(io.ComfyNode):
    SEARCH = ("face detection", "detect faces", "find faces")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRDetectFaces", "BFR Detect Faces",
            "Finds faces in every image of the batch and chooses which to keep. Outputs the detections for BFR "
            "Align Faces and a preview with boxes, 5 landmarks and the face index used by 'indices'.",
            inputs=[
                io.Image.Input("image", tooltip="Images (any batch size, e.g. video frames)."),
                Detector.Input("detector", tooltip="From BFR Load Face Detector."),
                io.Float.Input("score_threshold", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="Minimum detection confidence. Lower finds more side, small and blurry faces "
                                       "(and more false ones)."),
                io.Int.Input("min_face_size", default=0, min=0, max=4096,
                             tooltip="Ignore faces smaller than this many pixels (shorter box side)."),
                io.Combo.Input("select", options=list(SELECT_MODES), default="all",
                               tooltip="all faces, the largest one, the one closest to the centre, or those listed "
                                       "in 'indices'."),
                io.String.Input("indices", default="", tooltip="With select=indices: positions in the sorted order, "
                                                               "e.g. '0,2' (negative counts from the end)."),
                io.Combo.Input("sort_by", options=list(SORT_MODES), default="area",
                               tooltip="Order of faces (and of the aligned crops): largest first, left to right, top "
                                       "to bottom, or highest score first."),
                io.Int.Input("max_faces", default=0, min=0, max=1000,
                             tooltip="Keep at most this many faces per image after sorting (0 = no limit)."),
            ],
            outputs=[
                Detections.Output(display_name="detections", tooltip="Faces per image, for BFR Align Faces."),
                io.Image.Output(display_name="preview", tooltip="The image with detections drawn."),
                io.Int.Output(display_name="face_count", tooltip="Number of faces kept over the whole batch."),
            ],
            search=cls.SEARCH)

    @classmethod
    def validate_inputs(cls, select: str, indices: str) -> bool | str:
        """A bad selection is refused before the run (an out-of-range index is only known per image). Declaring
        `select` here turns off ComfyUI's own list check for it, so DetectOptions checks it."""
        return checked(lambda: DetectOptions(select=select, indices=indices), select, indices)

    @classmethod
    def execute(cls, image, detector, score_threshold, min_face_size, select, indices, sort_by,
                max_faces) -> io.NodeOutput:
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
        return io.NodeOutput(dets, preview, total)
