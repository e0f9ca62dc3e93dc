"""Peak activation memory of the pack's networks per image pixel, for ComfyUI's memory estimate (nodes/memory.py).

Counts the bytes of every tensor a forward pass allocates while it is alive (a TorchDispatchMode sees each op's
outputs; a tensor's storage is released when its last view dies), on the CPU, fp32, under inference_mode — what
the nodes run. Weights and inputs are not counted (ComfyUI counts the weights itself). The networks have their
real shapes (DifFace's UNet and SwinIR) with random weights: memory does not depend on the values.

The peak is then divided by batch × H × W: if that quotient stays flat across sizes and batches, memory is linear
in the pixels and `bytes per pixel × batch × H × W` is the estimate (`--sizes`, `--batches` to check).

    python bench/bench_activation_memory.py [--sizes 64 128] [--batches 1 2] [--nets unet swinir recognizer retinaface parser]
"""
from __future__ import annotations

import argparse
import json
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class PeakMemory(TorchDispatchMode):
    """Live bytes of tensors created inside the mode (storages shared by views counted once), and their peak."""

    def __init__(self, exclude: list[torch.Tensor]):
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in exclude}
        self.refs: dict[int, list[int]] = {}  # storage pointer → [bytes, live tensors]
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.known or storage.nbytes() == 0:
                continue
            entry = self.refs.setdefault(key, [storage.nbytes(), 0])
            if entry[1] == 0:
                self.live += entry[0]
                self.peak = max(self.peak, self.live)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out


def peak_bytes(net: torch.nn.Module, x: torch.Tensor, *extra) -> int:
    exclude = [*net.parameters(), *net.buffers(), x, *[e for e in extra if isinstance(e, torch.Tensor)]]
    with torch.inference_mode(), PeakMemory(exclude) as mode:
        out = net(x, *extra)
        del out
    return mode.peak


def networks(names: list[str]):
    from facexlib.parsing.bisenet import BiSeNet

    from bfr_core.archs.iddpm_unet import IDDPMUNet
    from bfr_core.archs.retinaface import RetinaFace
    from bfr_core.archs.iresnet import IResNet
    from bfr_core.archs.swinir import DIFFACE_SWINIR, SwinIR
    from bfr_core.identity import IRESNET_LAYERS

    makers = {
        "unet": lambda: (IDDPMUNet(), lambda x: (torch.full((x.shape[0],), 400),)),  # DifFace's 512 config
        "swinir": lambda: (SwinIR(DIFFACE_SWINIR), lambda x: ()),
        "recognizer": lambda: (IResNet(IRESNET_LAYERS["iresnet50"]), lambda x: ()),
        "retinaface": lambda: (RetinaFace("resnet50"), lambda x: ()),
        "parser": lambda: (BiSeNet(num_class=19), lambda x: ()),
    }
    for name in names:
        net, extra = makers[name]()
        yield name, net.eval(), extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--nets", nargs="+", default=["unet", "swinir", "recognizer", "retinaface", "parser"])
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, net, extra in networks(args.nets):
        sizes = [112] if name == "recognizer" else args.sizes  # ArcFace reads 112 px crops only
        for size in sizes:
            for batch in args.batches:
                x = torch.rand(batch, 3, size, size)
                peak = peak_bytes(net, x, *extra(x))
                rows.append({"net": name, "size": size, "batch": batch, "peak_MiB": round(peak / 2**20, 2),
                             "bytes_per_pixel": round(peak / (batch * size * size), 1)})
                print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
