"""Restoring a photo archive with Ray Data (optional: `pip install "ray[data]"`; not a dependency of bfr_core).

Each Ray actor loads the models once (one `FaceRestorer`) and restores the photos of the batches it is given;
`concurrency` actors run at once (one per GPU: pass ``num_gpus=1`` and ``device="cuda"``). Results are written as
`<out>/<stem>.png` atomically (`write_image` writes a temporary file beside the target and renames it), and photos
whose result already exists are skipped, so rerunning an interrupted job resumes it. Each face's noise seed derives
from its key within its own image, so the results do not depend on how Ray splits the work: they are the results of
`python -m bfr_core restore` with the same settings (and the same number of CPU threads, on a CPU).

    python docs/ray_restore.py archive/*.jpg -o restored/ --detector face_detection_yunet_2023mar.onnx \\
        --prior iddpm_ffhq512_ema500000.pth --concurrency 4

Tested by tests/test_ray_restore.py (a tiny prior, `ray.init(num_cpus=2)`), skipped where ray is not installed.
"""
from __future__ import annotations

import argparse
from pathlib import Path


class ArchiveRestorer:
    """A Ray Data callable class: built once per actor, called on batches {"path": [...]} of image paths."""

    def __init__(self, out_dir: str, detector: str, prior: str | None = None, backbone: str | None = None,
                 strength: float = 0.4, steps: int | None = None, crop_size: int | None = None, seed: int = 0,
                 device: str = "cpu", threads: int | None = None, dtype: str = "auto"):
        import torch

        import bfr_core as bfr

        if threads:
            torch.set_num_threads(threads)
        self.out_dir, self.device, self.seed = Path(out_dir), device, seed
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.detector = bfr.load_detector(detector)
        # dtype "auto" as the CLI's default (bf16 on CPUs with native bf16), so results equal `restore`'s
        self.restorer = bfr.FaceRestorer(bfr.load_prior(prior, device=device, dtype=dtype) if prior else None,
                                         bfr.load_restorer(backbone, device=device, dtype=dtype) if backbone else None,
                                         strength=strength, steps=steps)
        self.crop_size = crop_size or self.restorer.crop_size

    def __call__(self, batch: dict) -> dict:
        from bfr_core.io.images import read_image, write_image
        from bfr_core.restoration.pipeline import restore_images

        outputs, faces = [], []
        for path in batch["path"]:
            target = self.out_dir / (Path(path).stem + ".png")
            if target.exists():  # written atomically: an existing result is complete
                outputs.append(str(target))
                faces.append(-1)  # -1: already done
                continue
            img = read_image(path)
            res = restore_images(img.rgb[None].to(self.device), self.detector, self.restorer,
                                 crop_size=self.crop_size, seed=self.seed)
            write_image(target, res.images[0], img.alpha, img.gray, img.bit_depth)
            outputs.append(str(target))
            faces.append(len(res.faces))
        return {"path": list(batch["path"]), "output": outputs, "faces": faces}


def restore_with_ray(paths, out_dir, *, concurrency: int = 2, batch_size: int = 1, num_cpus: float = 1,
                     num_gpus: float = 0, **restorer_kwargs) -> list[dict]:
    """Restore ``paths`` with ``concurrency`` actors; returns one row per photo (path, output, faces).

    Call ``ray.init(...)`` first to choose the cluster (otherwise Ray starts a local one). Output names must be
    unique (two inputs with the same stem would write the same result), as `bfr_core restore` checks.
    """
    import ray

    paths = sorted(str(p) for p in paths)
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError("two inputs share a file name stem; their results would overwrite each other")
    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(ArchiveRestorer, fn_constructor_kwargs={"out_dir": str(out_dir), **restorer_kwargs},
                        concurrency=concurrency, batch_size=batch_size, num_cpus=num_cpus, num_gpus=num_gpus)
    return sorted(ds.take_all(), key=lambda row: row["path"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--detector", required=True, help="YuNet .onnx file")
    p.add_argument("--prior", help="diffusion prior file")
    p.add_argument("--restorer", dest="backbone", help="backbone file (e.g. swinir_restoration512_L1.pth)")
    p.add_argument("--strength", type=float, default=0.4)
    p.add_argument("--steps", type=int)
    p.add_argument("--crop-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--concurrency", type=int, default=2, help="actors (model copies) at once")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor (1 with --device cuda)")
    a = p.parse_args(argv)
    rows = restore_with_ray(a.images, a.output, concurrency=a.concurrency, num_gpus=a.num_gpus,
                            detector=a.detector, prior=a.prior, backbone=a.backbone, strength=a.strength,
                            steps=a.steps, crop_size=a.crop_size, seed=a.seed, device=a.device)
    for row in rows:
        print(f"{row['path']}: " + ("already done" if row["faces"] < 0 else f"{row['faces']} face(s)")
              + f" -> {row['output']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
