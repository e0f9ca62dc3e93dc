"""The video nodes (nodes/track.py) run as ComfyUI runs them: BFR Track Faces between Detect and Align, per-track
seeds in BFR Diffusion Restore, BFR Blend Face Tracks between Restore and Paste."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_node, validate_node
from test_tracking import _frame

pytestmark = pytest.mark.usefixtures("comfy_inference_mode")


def _frames_and_detections(n: int):
    """n frames [n, H, W, 3] (ComfyUI layout) with two faces walking right; the detector lists them in alternating
    orders (as real detectors do when sizes are close), with 1 px landmark noise."""
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(n, 240, 520, 3, generator=g) * 0.2 + 0.4
    dets = []
    for t in range(n):
        a, b = (100 + 2 * t, 110), (380 + 2 * t, 120)
        d = _frame(a, b) if t % 2 == 0 else _frame(b, a)
        dets.append(type(d)(d.boxes, d.landmarks + torch.randn(2, 5, 2, generator=g), d.scores))
    return frames, dets


def test_track_node_gives_stable_ids_smooth_landmarks_and_a_preview(comfy_pack):
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    frames, dets = _frames_and_detections(40)  # a batch longer than any chunk
    tracked, preview, count = run_node(nodes["BFRTrackFaces"], frames, dets, "one_euro", 24.0, 0.5, 4.0, 1.0, 0.5,
                                       0.01, 30)
    assert count == 2 and len(tracked) == 40 and preview.shape == frames.shape
    for d in tracked:
        left = int(torch.argmin(d.boxes[:, 0]))
        assert d.track_ids[left] == 0 and d.track_ids[1 - left] == 1
    shake = lambda ds: torch.stack([  # noqa: E731  frame-to-frame change of the left face's landmarks, minus motion
        (ds[t].landmarks[int(torch.argmin(ds[t].boxes[:, 0]))] - ds[t - 1].landmarks[int(torch.argmin(
            ds[t - 1].boxes[:, 0]))] - torch.tensor([2.0, 0])).norm(dim=-1).mean() for t in range(10, 40)]).mean()
    assert shake(tracked) * 2 < shake(dets)
    # The ids are drawn in each track's colour, under its box.
    from bfr_pack_under_test.nodes.track import track_colour

    for track, x in ((0, 100), (1, 380)):
        below = (preview[0, 165:185, x - 50:x + 10] * 255).round().numpy().reshape(-1, 3)
        assert (np.abs(below - np.array(track_colour(track))).sum(1) < 30).any(), track
    none, _, _ = run_node(nodes["BFRTrackFaces"], frames[:3], dets[:3], "none", 24.0, 0.5, 4.0, 1.0, 0.5, 0.01, 30)
    assert torch.equal(none[1].landmarks, dets[1].landmarks) and none[1].track_ids.tolist() == [1, 0]
    with pytest.raises(ValueError, match="same IMAGE"):
        run_node(nodes["BFRTrackFaces"], frames[:2], dets, "kalman", 24.0, 0.5, 4.0, 1.0, 0.5, 0.01, 30)


def test_track_node_refuses_bad_settings_at_queue_time(comfy_pack):
    node = comfy_pack.NODE_CLASS_MAPPINGS["BFRTrackFaces"]
    ok = dict(smoothing="kalman", min_cutoff=0.5, beta=4.0, d_cutoff=1.0, fps=30.0, process_noise=0.5,
              measurement_noise=0.01)
    assert validate_node(node, **ok) is True
    assert "method" in validate_node(node, **{**ok, "smoothing": "median"})
    assert "fps" in validate_node(node, **{**ok, "fps": 0.0})
    assert validate_node(node, **{**ok, "fps": None}) is True  # fps fed by a link: ComfyUI validates with None


def test_track_node_look_ahead_smoothing(comfy_pack):
    """kalman_rts (appended after "none"; lookahead appended as the last input): every frame comes out once, in
    order, with the library's fixed-lag smoothed landmarks; steadier than one_euro."""
    from bfr_pack_under_test.bfr_core.faces.smoothing import SmoothingOptions
    from bfr_pack_under_test.bfr_core.faces.tracking import track_faces
    from bfr_pack_under_test.nodes.track import SMOOTHING_CHOICES

    assert SMOOTHING_CHOICES == ("one_euro", "kalman", "none", "kalman_rts")  # append-only
    node = comfy_pack.NODE_CLASS_MAPPINGS["BFRTrackFaces"]
    frames, dets = _frames_and_detections(40)
    args = (frames, dets, "kalman_rts", 24.0, 0.5, 4.0, 1.0, 0.5, 0.01, 30)
    tracked, preview, count = run_node(node, *args, 8)
    assert count == 2 and len(tracked) == 40 and preview.shape == frames.shape
    want = track_faces(dets, smoothing=SmoothingOptions(fps=24.0, method="kalman_rts", lookahead=8))
    assert all(torch.equal(a.landmarks, b.landmarks) and torch.equal(a.track_ids, b.track_ids)
               for a, b in zip(tracked, want))
    euro, _, _ = run_node(node, frames, dets, "one_euro", 24.0, 0.5, 4.0, 1.0, 0.5, 0.01, 30)
    default, _, _ = run_node(node, *args)  # a workflow saved before lookahead existed: the default, 15
    assert len(default) == 40
    shake = lambda ds: torch.stack([  # noqa: E731  second difference of the left face's landmarks
        ds[t].landmarks[int(torch.argmin(ds[t].boxes[:, 0]))] for t in range(40)]).diff(n=2, dim=0).norm(dim=-1).mean()
    assert shake(tracked) * 2 < shake(euro)
    assert "lookahead" in validate_node(node, smoothing="kalman_rts", min_cutoff=0.5, beta=4.0, d_cutoff=1.0,
                                        fps=30.0, process_noise=0.5, measurement_noise=0.01, lookahead=-1)


def test_tracked_faces_restore_with_per_track_seeds_and_blend(comfy_pack):
    """Detect → Track → Align → Diffusion Restore (faces connected) → Blend Face Tracks: a person's seed is
    seed + its track id in every frame; the blend is the per-track moving average of the restored crops."""
    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    frames, dets = _frames_and_detections(4)
    tracked, _, _ = run_node(nodes["BFRTrackFaces"], frames, dets, "one_euro", 24.0, 0.5, 4.0, 1.0, 0.5, 0.01, 30)
    crops, faces = run_node(nodes["BFRAlignFaces"], frames, tracked, 64, "reflect")
    assert faces.track_id.tolist() == [0, 1, 1, 0, 0, 1, 1, 0]
    assert faces.face_seeds(10) == [10, 11, 11, 10, 10, 11, 11, 10]
    (blended,) = run_node(nodes["BFRBlendFaceTracks"], crops, faces, 0.5, 30)
    assert blended.shape == crops.shape
    torch.testing.assert_close(blended[:2], crops[:2])
    torch.testing.assert_close(blended[3], 0.5 * crops[0] + 0.5 * crops[3])  # track 0: frame 0 slot 0, frame 1 slot 1
    (off,) = run_node(nodes["BFRBlendFaceTracks"], crops, faces, 0.0, 30)
    assert torch.equal(off, crops)
    assert "blend" in validate_node(nodes["BFRBlendFaceTracks"], blend=1.0)
    with pytest.raises(ValueError, match="BFR_FACES"):
        run_node(nodes["BFRBlendFaceTracks"], crops[:3], faces, 0.5, 30)


def test_paste_matches_colours_per_track(comfy_pack):
    """BFR Paste Faces color_reference (appended): per_track matches each face's colours to its track's moving
    average of original crops (the library's TrackMemory, weight 0.5), so Detect → Track → Align → restore → Paste
    equals restore_images with a TrackMemory and the colour correction stops following each frame's flicker;
    per_face (the default) is unchanged; untracked faces are refused."""
    from bfr_pack_under_test.bfr_core.restoration.pipeline import PasteOptions, restore_images
    from bfr_pack_under_test.bfr_core.restoration.temporal import TrackMemory

    nodes = comfy_pack.NODE_CLASS_MAPPINGS
    frames, dets = _frames_and_detections(8)
    gains = torch.tensor([1.0, 0.8, 1.15, 0.85, 1.1, 0.8, 1.15, 0.9])  # each frame's brightness flickers
    frames = (frames * gains[:, None, None, None]).clamp(0, 1)
    tracked, _, _ = run_node(nodes["BFRTrackFaces"], frames, dets, "one_euro", 24.0, 0.5, 4.0, 1.0, 0.5, 0.01, 30)
    crops, faces = run_node(nodes["BFRAlignFaces"], frames, tracked, 64, "reflect")
    restore = lambda c: c * 0.5 + 0.3  # noqa: E731  a "restorer" that shifts the colours
    args = (frames, restore(crops), faces, "ellipse", 0.1, "mean_std", "none")
    per_face, _ = run_node(nodes["BFRPasteFaces"], *args)
    assert torch.equal(run_node(nodes["BFRPasteFaces"], *args, "per_face")[0], per_face)
    per_track, mask = run_node(nodes["BFRPasteFaces"], *args, "per_track")

    def library(temporal):
        res = restore_images(frames.movedim(-1, 1), None, lambda c: restore(c.movedim(1, -1)).movedim(-1, 1),
                             paste=PasteOptions("ellipse", 0.1, "mean_std"), crop_size=64, detections=tracked,
                             temporal=temporal)
        return res.images.movedim(1, -1)

    torch.testing.assert_close(per_track, library(TrackMemory(color=0.5)), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_face, library(None), atol=1e-5, rtol=0)
    face = mask > 0.99
    brightness = lambda x: torch.stack([x[t][face[t]].mean() for t in range(8)])  # noqa: E731
    flicker = lambda x: brightness(x).diff().abs().mean()  # noqa: E731
    assert flicker(per_track) < 0.6 * flicker(per_face)
    args_none = (frames, restore(crops), faces, "ellipse", 0.1, "none", "none")
    assert torch.equal(run_node(nodes["BFRPasteFaces"], *args_none, "per_track")[0],
                       run_node(nodes["BFRPasteFaces"], *args_none)[0])  # nothing to match: nothing changes
    crops_u, faces_u = run_node(nodes["BFRAlignFaces"], frames, dets, 64, "reflect")
    with pytest.raises(ValueError, match="Track Faces"):
        run_node(nodes["BFRPasteFaces"], frames, crops_u, faces_u, "ellipse", 0.1, "mean_std", "none", "per_track")
