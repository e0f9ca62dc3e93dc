"""Video nodes: face tracks with steady landmarks across the frames of an IMAGE batch, and per-track blending of
restored crops."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..bfr_core.faces.smoothing import SmoothingOptions
from ..bfr_core.faces.tracking import FaceTracker, TrackOptions
from ..bfr_core.restoration.temporal import TrackMemory
from ..bfr_core.utils.layout import split_alpha
from .comfy_glue import Progress, check_interrupted, log, to_bchw, to_bhwc
from .detect import draw_detections
from .schema import Detections, Faces, checked, node_schema

NO_SMOOTHING = "none"
# append-only: saved workflows store the choice by name; kalman_rts came after "none"
SMOOTHING_CHOICES = ("one_euro", "kalman", NO_SMOOTHING, "kalman_rts")


def track_colour(track: int) -> tuple[int, int, int]:
    """A distinct, stable colour per track id (golden-angle hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((track * 0.618034) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_tracks(image: np.ndarray, dets) -> np.ndarray:
    """The detection preview (boxes, landmarks, index:score) plus each face's track id under its box, in the
    track's colour (RGB float [H, W, 3] in, a copy out)."""
    import cv2

    canvas = np.ascontiguousarray((draw_detections(image, dets) * 255).round().astype(np.uint8))
    thick = max(1, round(max(canvas.shape[:2]) / 600))
    for i, track in enumerate(dets.track_ids.tolist()):
        x1, y1, x2, y2 = [int(round(float(v))) for v in dets.boxes[i]]
        colour = track_colour(track)
        cv2.rectangle(canvas, (x1 + thick, y1 + thick), (x2 - thick, y2 - thick), colour, thick)
        cv2.putText(canvas, f"id {track}", (x1, min(canvas.shape[0] - 2, y2 + 12 * thick)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45 * thick, colour, max(1, thick))
    return canvas.astype(np.float32) / 255


def smoothing_options(smoothing: str, min_cutoff: float, beta: float, d_cutoff: float, fps: float,
                      process_noise: float, measurement_noise: float, lookahead: int = 15) -> SmoothingOptions | None:
    if smoothing == NO_SMOOTHING:
        return None
    return SmoothingOptions(min_cutoff, beta, d_cutoff, fps, smoothing, process_noise, measurement_noise, lookahead)


class BFRTrackFaces(io.ComfyNode):
    SEARCH = ("track faces", "video", "face tracking", "stabilize", "flicker", "temporal")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRTrackFaces", "BFR Track Faces (video)",
            "Links the faces of an IMAGE batch of video frames into tracks (the same person keeps one id, also after "
            "leaving the picture for a while) and smooths each track's landmarks, so the aligned crops of a still "
            "face stay still. Connect between BFR Detect Faces and BFR Align Faces; with BFR Align Faces' 'faces' "
            "connected to BFR Diffusion Restore, each person gets the same noise in every frame.",
            inputs=[
                io.Image.Input("image", tooltip="The frames the detections were made on, in order (any count)."),
                Detections.Input("detections", tooltip="From BFR Detect Faces, on the same frames."),
                io.Combo.Input("smoothing", options=list(SMOOTHING_CHOICES), default="kalman_rts",
                               tooltip="Landmark filter: kalman_rts (default: constant-velocity Kalman plus a "
                                       "backward pass over the next 'lookahead' frames of the batch, no lag, "
                                       "steadiest), one_euro (steady when still, trails when moving), kalman "
                                       "(causal: no lag on steady pans, trails speed changes) or none."),
                io.Float.Input("fps", default=30.0, min=1.0, max=240.0, step=0.01,
                               tooltip="Frame rate of the batch (Get Video Components gives it): the filters' "
                                       "time scale."),
                io.Float.Input("min_cutoff", default=0.5, min=0.01, max=30.0, step=0.01,
                               tooltip="one_euro: cutoff in Hz for a still face. Lower = steadier, more lag on "
                                       "slow motion."),
                io.Float.Input("beta", default=4.0, min=0.0, max=100.0, step=0.1,
                               tooltip="one_euro: how fast the cutoff rises with motion (per face size per "
                                       "second). Higher = less lag on fast motion, less smoothing."),
                io.Float.Input("d_cutoff", default=1.0, min=0.01, max=30.0, step=0.01,
                               tooltip="one_euro: cutoff in Hz of the speed estimate."),
                io.Float.Input("process_noise", default=0.5, min=0.001, max=100.0, step=0.001,
                               tooltip="kalman: acceleration noise in face sizes/s². Higher follows changes of "
                                       "speed sooner and smooths less."),
                io.Float.Input("measurement_noise", default=0.01, min=0.0001, max=1.0, step=0.0001,
                               tooltip="kalman: the detector's landmark noise in face sizes."),
                io.Int.Input("max_gap", default=30, min=0, max=10000,
                             tooltip="Frames a face may be missing and keep its id when it comes back."),
                io.Int.Input("lookahead", default=15, min=0, max=10000, optional=True,
                             tooltip="kalman_rts: later frames each frame's landmarks are smoothed with (the batch "
                                     "holds them all; 0 = the causal kalman)."),
            ],
            outputs=[
                Detections.Output(display_name="detections", tooltip="The same faces with track ids and smoothed "
                                  "landmarks, for BFR Align Faces."),
                io.Image.Output(display_name="preview", tooltip="The frames with boxes, landmarks and track ids drawn."),
                io.Int.Output(display_name="track_count", tooltip="Number of tracks (people) over the batch."),
            ],
            search=cls.SEARCH)

    @classmethod
    def validate_inputs(cls, smoothing: str, min_cutoff: float, beta: float, d_cutoff: float, fps: float,
                        process_noise: float, measurement_noise: float, lookahead: int = 15) -> bool | str:
        # ComfyUI passes None for an input fed by a link (fps from Get Video Components): check the rest with the
        # default frame rate; execute checks the linked value.
        fps = 30.0 if fps is None else fps
        return checked(lambda: smoothing_options(smoothing, min_cutoff, beta, d_cutoff, fps, process_noise,
                                                 measurement_noise, lookahead),
                       smoothing, min_cutoff, beta, d_cutoff, process_noise, measurement_noise, lookahead)

    @classmethod
    def execute(cls, image, detections, smoothing, fps, min_cutoff, beta, d_cutoff, process_noise,
                measurement_noise, max_gap, lookahead=15) -> io.NodeOutput:
        if len(detections) != image.shape[0]:
            raise ValueError(f"the detections are for {len(detections)} frames but the image batch has "
                             f"{image.shape[0]}; connect the same IMAGE to Detect and Track")
        tracker = FaceTracker(TrackOptions(max_gap=max_gap),
                              smoothing_options(smoothing, min_cutoff, beta, d_cutoff, fps, process_noise,
                                                measurement_noise, lookahead))
        progress = Progress(len(detections))
        tracked, previews = [], []

        def preview(ready) -> None:  # one frame at a time: the preview never holds a second copy
            for dets in ready:
                b = len(tracked)
                tracked.append(dets)
                rgb = split_alpha(to_bchw(image[b:b + 1]))[0][0].movedim(0, -1).cpu().numpy()
                previews.append(torch.from_numpy(draw_tracks(rgb, dets)))
                progress(1)

        for dets in detections:
            preview(tracker.push(dets))
        preview(tracker.flush())
        count = tracker.next_id
        log.info("BFR Track Faces: %d track(s) over %d frame(s)", count, len(tracked))
        return io.NodeOutput(tracked, torch.stack(previews), count)


class BFRBlendFaceTracks(io.ComfyNode):
    SEARCH = ("temporal blend", "video", "flicker", "deflicker", "smooth crops")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRBlendFaceTracks", "BFR Blend Face Tracks (video)",
            "Removes flicker from restored video faces: each crop becomes a moving average of its track's restored "
            "crops in aligned space (the faces must come from tracked detections: BFR Track Faces). Connect between "
            "BFR Diffusion Restore and BFR Paste Faces.",
            inputs=[
                io.Image.Input("crops", tooltip="Restored aligned crops, in the order BFR Align Faces made them."),
                Faces.Input("faces", tooltip="From BFR Align Faces (of tracked detections)."),
                io.Float.Input("blend", default=0.3, min=0.0, max=0.95, step=0.01,
                               tooltip="Weight of the track's previous frames. 0 = off; higher = steadier, but fast "
                                       "expressions trail."),
                io.Int.Input("max_gap", default=30, min=0, max=10000,
                             tooltip="A track missing for more frames than this starts afresh."),
            ],
            outputs=[io.Image.Output(display_name="crops", tooltip="The blended crops, same order and size.")],
            search=cls.SEARCH)

    @classmethod
    def validate_inputs(cls, blend: float) -> bool | str:
        return checked(lambda: TrackMemory(blend=blend), blend)

    @classmethod
    def execute(cls, crops, faces, blend, max_gap) -> io.NodeOutput:
        if len(faces) == 0:
            return io.NodeOutput(crops)  # the placeholder crop of a batch without faces
        if len(faces) != crops.shape[0]:
            raise ValueError(f"'faces' describes {len(faces)} faces but {crops.shape[0]} crops were given; connect "
                             f"the BFR_FACES that came with these crops")
        check_interrupted()
        memory = TrackMemory(blend=blend, max_gap=max_gap)
        return io.NodeOutput(to_bhwc(memory.restored(to_bchw(crops), faces.track_id, faces.image_index)))
