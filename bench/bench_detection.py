"""Face-detection speed: seconds per megapixel for YuNet and RetinaFace (ResNet-50, MobileNet-0.25).

    python bench/bench_detection.py                       # CPU, 0.5 / 1 / 2 MP, median of 3 runs
    python bench/bench_detection.py --sizes 1 4 --runs 5 --json out.json
    python bench/bench_detection.py --device cuda --dtype fp16 --detectors retinaface_r50

RetinaFace uses random weights unless real files are given (--r50 / --mnet); its speed does not
depend on the weights, except through how many candidates reach NMS, so the random networks' face
logits are biased down to leave few candidates, as a trained model does on a real photo.
The test image is a real photo from ../shared/data resized to each size (random noise if absent).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bfr_core.faces.detection.retinaface import RetinaFace, RetinaFaceDetector, load_retinaface  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
YUNET = SHARED / "models" / "face_detection_yunet_2023mar.onnx"
PHOTO = SHARED / "images" / "whole" / "gfpgan_00.jpg"
DETECTORS = ("yunet", "retinaface_r50", "retinaface_mnet")


def make_image(megapixels: float, aspect: float = 4 / 3) -> torch.Tensor:
    """RGB [1, 3, H, W] in [0, 1] of about `megapixels`, from the sample photo when available."""
    import cv2

    h = int(round((megapixels * 1e6 / aspect) ** 0.5))
    w = int(round(h * aspect))
    bgr = cv2.imread(str(PHOTO)) if PHOTO.is_file() else None
    if bgr is None:
        rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        rgb = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255


def yunet_fn() -> Callable[[torch.Tensor], object]:
    try:
        from bfr_core.faces.detection.yunet import YuNetDetector

        det = YuNetDetector(YUNET)
        return lambda img: det.detect(img, score_threshold=0.6)
    except ImportError:  # module not written yet: call OpenCV directly
        import cv2

        net = cv2.FaceDetectorYN.create(str(YUNET), "", (320, 320), 0.6, 0.3, 5000)

        def run(img: torch.Tensor) -> object:
            bgr = np.ascontiguousarray((img[0].flip(0).permute(1, 2, 0) * 255).round().byte().numpy())
            net.setInputSize((bgr.shape[1], bgr.shape[0]))
            return net.detect(bgr)

        return run


def retinaface_fn(
    variant: str, path: str | None, device: str, dtype: torch.dtype
) -> Callable[[torch.Tensor], object]:
    if path:
        det = load_retinaface(path, device=device, dtype=dtype)
    else:
        torch.manual_seed(0)
        model = RetinaFace(variant)
        with torch.no_grad():
            for head in model.ClassHead:
                head.conv1x1.bias[1::2] -= 10.0  # face logit down: few NMS candidates
        det = RetinaFaceDetector(model).to(device, dtype)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def run(img: torch.Tensor) -> object:
        out = det.detect(img.to(device), score_threshold=0.5)
        sync()
        return out

    return run


def time_it(fn: Callable[[torch.Tensor], object], img: torch.Tensor, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn(img)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(img)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="image sizes in megapixels")
    ap.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS))
    ap.add_argument("--runs", type=int, default=3, help="timed runs per case (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="torch device for RetinaFace (YuNet always runs on CPU)")
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--r50", help="real detection_Resnet50_Final.pth (default: random weights)")
    ap.add_argument("--mnet", help="real detection_mobilenet0.25_Final.pth (default: random weights)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    builders = {
        "yunet": yunet_fn,
        "retinaface_r50": lambda: retinaface_fn("resnet50", args.r50, args.device, dtype),
        "retinaface_mnet": lambda: retinaface_fn("mobilenet0.25", args.mnet, args.device, dtype),
    }
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.dtype}")
    print(f"{'detector':<16} {'MP':>5} {'size':>10} {'median s':>9} {'s/MP':>7}")
    for name in args.detectors:
        fn = builders[name]()
        for mp in args.sizes:
            img = make_image(mp)
            h, w = img.shape[-2:]
            sec = time_it(fn, img, args.warmup, args.runs)
            real_mp = h * w / 1e6
            rows.append({"detector": name, "megapixels": round(real_mp, 3), "width": w, "height": h,
                         "median_s": round(sec, 4), "s_per_mp": round(sec / real_mp, 4)})
            print(f"{name:<16} {real_mp:>5.2f} {f'{w}x{h}':>10} {sec:>9.3f} {sec / real_mp:>7.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "dtype": args.dtype,
                                               "threads": torch.get_num_threads(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
