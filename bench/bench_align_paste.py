"""Align + paste-back of every face in a photo: bfr_core against facexlib's FaceRestoreHelper.

Both get the same landmarks (YuNet's) and the same image; facexlib runs `align_warp_face` +
`get_inverse_affine` + `paste_faces_to_input_image` (no parsing), bfr_core runs `align_faces` +
`paste_faces` including the uint8 ↔ float conversions. The two run alternately, --repeat times each, in one
process, so the ratio is what to read. `--memory` also measures peak RSS of bfr_core's align+paste
against image size, each size in a fresh subprocess.

    python bench/bench_align_paste.py [--image ../shared/data/images/group/Solvay_conference_1927.png]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bfr_core.faces.detection.yunet import YuNetDetector  # noqa: E402
from bfr_core.faces.align import align_faces  # noqa: E402
from bfr_core.faces.paste import paste_faces  # noqa: E402
from bfr_core.faces.types import FaceDetections  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def facexlib_helper():
    """FaceRestoreHelper without its constructor's weight downloads (its detector/parser are unused here)."""
    import facexlib.utils.face_restoration_helper as frh

    frh.init_detection_model = lambda *a, **k: None
    frh.init_parsing_model = lambda *a, **k: None
    return frh.FaceRestoreHelper(upscale_factor=1, face_size=512, use_parse=False, device=torch.device("cpu"))


def run_facexlib(bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    helper = facexlib_helper()
    helper.read_image(bgr)
    helper.all_landmarks_5 = [lm.astype(np.float32) for lm in landmarks]
    helper.align_warp_face()
    for crop in helper.cropped_faces:
        helper.add_restored_face(crop)
    helper.get_inverse_affine()
    return helper.paste_faces_to_input_image()


def run_ours(bgr: np.ndarray, dets: FaceDetections) -> np.ndarray:
    rgb = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    crops, faces = align_faces(rgb, [dets])
    out, _ = paste_faces(rgb, crops, faces)
    return (out[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8)


def paired_times(fn_a, fn_b, repeat: int) -> tuple[list[float], list[float]]:
    """Times of fn_a and fn_b run alternately (a, b, a, b, ...): load from other processes hits both alike."""
    fn_a(), fn_b()  # warm-up
    ta, tb = [], []
    for _ in range(repeat):
        for fn, out in ((fn_a, ta), (fn_b, tb)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return ta, tb


def memory_child(scale: float, image: str) -> None:
    """Peak memory growth (MiB) of align + paste on the image upscaled by `scale` (after it is loaded)."""
    bgr = cv2.imread(image, cv2.IMREAD_COLOR)
    dets = YuNetDetector(DATA / "models/face_detection_yunet_2023mar.onnx").detect(
        torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255, 0.6)[0]
    big = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    dets = FaceDetections(dets.boxes * scale, dets.landmarks * scale, dets.scores)
    rgb = torch.from_numpy(big[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    del big
    before = _rss_kib("VmRSS")
    _reset_peak()
    crops, faces = align_faces(rgb, [dets])
    paste_faces(rgb, crops, faces)
    print(json.dumps({"megapixels": rgb.shape[2] * rgb.shape[3] / 1e6, "faces": len(dets),
                      "image_mib": rgb.numel() * 4 / 2**20, "peak_growth_mib": (_rss_kib("VmHWM") - before) / 1024}))


def _rss_kib(field: str) -> int:
    """VmRSS / VmHWM (peak) of this process from /proc (Linux), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS, so the peak seen is that of the work that follows (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(DATA / "images/group/Solvay_conference_1927.png"))
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--memory", action="store_true", help="also measure peak memory against image size")
    ap.add_argument("--memory-child", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    if args.memory_child:
        memory_child(args.memory_child, args.image)
        return
    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    rgb = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    dets = YuNetDetector(DATA / "models/face_detection_yunet_2023mar.onnx").detect(rgb, 0.6)[0]
    landmarks = dets.landmarks.numpy()
    ts_fx, ts_ours = paired_times(lambda: run_facexlib(bgr, landmarks), lambda: run_ours(bgr, dets), args.repeat)
    t_fx, t_ours = statistics.median(ts_fx), statistics.median(ts_ours)
    pair_ratios = sorted(a / b for a, b in zip(ts_fx, ts_ours))
    print(f"image {Path(args.image).name} {bgr.shape[1]}x{bgr.shape[0]}, {len(dets)} faces, "
          f"torch threads {torch.get_num_threads()}, {args.repeat} alternating runs each")
    print(f"facexlib FaceRestoreHelper align+paste: {t_fx * 1000:8.1f} ms (median; min {min(ts_fx) * 1000:.1f})")
    print(f"bfr_core align_faces+paste_faces:       {t_ours * 1000:8.1f} ms (median; min {min(ts_ours) * 1000:.1f})")
    print(f"speed-up: {t_fx / t_ours:.2f}x (ratio of medians); per adjacent pair: median "
          f"{statistics.median(pair_ratios):.2f}x, range {pair_ratios[0]:.2f}-{pair_ratios[-1]:.2f}x")
    if args.memory:
        print("peak memory of bfr_core align+paste against image size (fresh process each):")
        for scale in (1, 2, 4):
            res = subprocess.run([sys.executable, __file__, "--image", args.image, "--memory-child", str(scale)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"  {row['megapixels']:6.1f} MP, {row['faces']} faces: float image {row['image_mib']:7.1f} MiB, "
                  f"peak growth of align+paste {row['peak_growth_mib']:7.1f} MiB")


if __name__ == "__main__":
    main()
