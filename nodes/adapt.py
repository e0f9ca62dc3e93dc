"""DT-BFR adaptation nodes: pseudo-targets of aligned crops, and fine-tuning a loaded backbone on crops + targets.

Training follows ComfyUI's own training nodes (comfy_extras/nodes_train.py): the work runs under
``torch.inference_mode(False)`` (ComfyUI executes nodes in inference mode), steps/batch/learning rate/seed are
widgets, the progress bar counts steps and its Cancel button stops the run, and the result is written to a file
with a counter so nothing is overwritten. Here the file goes to models/facerestore_models (the Load Restorer list)
in the layout of the backbone's own file; a cancelled run resumes from its checkpoint when queued again.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
import tempfile
from pathlib import Path

import torch
from comfy_api.latest import io

from ..bfr_core.restoration.pseudo_targets import (DEFAULT_CONSTRAIN_UNTIL, DEFAULT_LOWPASS, DEFAULT_RESPACING,
                                                   DEFAULT_T_START, generate_pseudo_targets)
from ..bfr_core.training.backbones import save_backbone
from ..bfr_core.training.data import TensorPairs, split_holdout
from ..bfr_core.training.finetune import FinetuneConfig, finetune_backbone
from ..bfr_core.utils.layout import split_alpha
from .comfy_glue import log, to_bchw, to_bhwc
from .memory import BACKWARD_FACTOR, PATCHER_ATTR, activation_bytes, models_loaded, patcher_of
from .progress import RestoreProgress
from .schema import Prior, Restorer, checked, node_schema


def _check_chain(t_start: int, constrain_until: int) -> None:
    if constrain_until > t_start:
        raise ValueError(f"constrain_until ({constrain_until}) must not exceed t_start ({t_start}); 0 turns the "
                         f"low-pass constraint off")


class BFRPseudoTargets(io.ComfyNode):
    SEARCH = ("pseudo targets", "dt-bfr", "adaptation", "fine-tune data", "content constraint")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRPseudoTargets", "BFR Pseudo-Targets (DT-BFR)",
            "DT-BFR pseudo-targets of aligned face crops: the backbone's estimate is diffused to t_start and sampled "
            "back by the prior with ancestral steps, keeping the estimate's low-frequency band (coarse content and "
            "colours) while t >= constrain_until. Useful on its own (DifFace with a content constraint) and as the "
            "targets of BFR Adapt Restorer.",
            inputs=[
                io.Image.Input("crops", tooltip="Aligned face crops from BFR Align Faces (one kind of degradation)."),
                Prior.Input("prior", tooltip="A pixel prior from BFR Load Diffusion Prior."),
                io.Int.Input("t_start", default=DEFAULT_T_START, min=1, max=DEFAULT_RESPACING - 1,
                             tooltip="Start step of the 250-step respacing (DT-BFR: 150 = training timestep 600). "
                                     "Higher: more detail from the prior, less of the photo."),
                io.Int.Input("constrain_until", default=DEFAULT_CONSTRAIN_UNTIL, min=0, max=DEFAULT_RESPACING - 1,
                             tooltip="Keep the estimate's low band while the step is >= this (DT-BFR: 90); 0 = no "
                                     "constraint (plain ancestral sampling from the estimate)."),
                io.Int.Input("lowpass", default=DEFAULT_LOWPASS, min=1, max=512,
                             tooltip="The low band: bicubic down by this factor and back (DT-BFR: 16 for SwinIR, 8 "
                                     "for other backbones)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Noise seed; crop i uses seed + i."),
                io.Int.Input("batch_size", default=4, min=1, max=64,
                             tooltip="Faces per UNet call; halves itself automatically on out-of-memory."),
                Restorer.Input("restorer", optional=True,
                               tooltip="The backbone whose estimate is refined (the one you will adapt); "
                                       "unconnected = the crop itself."),
            ],
            outputs=[io.Image.Output(display_name="targets", tooltip="One pseudo-target per crop, same size and "
                                                                    "order: the targets for BFR Adapt Restorer.")],
            search=cls.SEARCH)

    @classmethod
    def validate_inputs(cls, t_start: int = DEFAULT_T_START, constrain_until: int = DEFAULT_CONSTRAIN_UNTIL,
                        **_) -> bool | str:
        return checked(lambda: _check_chain(t_start, constrain_until), t_start, constrain_until)

    @classmethod
    def execute(cls, crops, prior, t_start, constrain_until, lowpass, seed, batch_size, restorer=None) -> io.NodeOutput:
        _check_chain(t_start, constrain_until)
        rgb, _ = split_alpha(to_bchw(crops))
        side = int(getattr(prior, "sample_size", rgb.shape[-1]))
        # the backbone, then the prior, run on batch_size faces at a time: the larger activation budget of the two
        need = max(activation_bytes(restorer, batch_size, rgb.shape[-2], rgb.shape[-1]),
                   activation_bytes(prior, batch_size, side, side))
        # progress counts the prior's evaluations only (no backbone phase), so the bar gets no backbone
        with models_loaded(prior, restorer, memory_required=need):
            targets = generate_pseudo_targets(rgb.cpu(), prior, restorer, t_start=t_start, lowpass=lowpass,
                                              constrain_until=constrain_until, seed=seed, batch_size=batch_size,
                                              progress=RestoreProgress(rgb.shape[0], batch_size))
        if targets.shape[1] == 1:  # a gray prior's targets, as an RGB IMAGE
            targets = targets.repeat(1, 3, 1, 1)
        return io.NodeOutput(to_bhwc(targets))


def _trainable_copy(restorer: torch.nn.Module) -> torch.nn.Module:
    """A copy of a loaded backbone with ordinary tensors: the loader ran in inference mode, and inference tensors
    can neither be trained nor saved for backward. The loader's own object (cached by ComfyUI) stays as it was."""
    with torch.inference_mode(False):
        # the copy is trained outside ComfyUI's memory manager: it gets no patcher (nor a copy of the loader's)
        clone = copy.deepcopy(restorer, memo={id(patcher_of(restorer)): None})
        clone.__dict__.pop(PATCHER_ATTR, None)
        for module in clone.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = b.detach().clone()
    return clone


def _output_file(prefix: str, steps: int, suffix: str) -> tuple[Path, str]:
    """(path, name as Load Restorer lists it) of a new file in models/facerestore_models: <prefix>_<steps>steps_
    <counter>.<suffix>, the counter one above the highest present (as ComfyUI's SaveLoRA)."""
    import folder_paths

    prefix = prefix.strip().replace("\\", "/")
    if not prefix or prefix.startswith("/") or ".." in prefix.split("/") or re.search(r'[:*?"<>|]', prefix):
        raise ValueError(f"filename_prefix {prefix!r} must be a relative name inside models/facerestore_models, "
                         f"e.g. bfr_adapted/swinir_album")
    root = Path(folder_paths.folder_names_and_paths["facerestore_models"][0][0])
    stem = f"{prefix}_{steps}steps"
    folder = (root / stem).parent
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for f in folder.iterdir()
             if (m := re.fullmatch(re.escape(Path(stem).name) + r"_(\d{5})\.\w+", f.name))]
    name = f"{stem}_{max(taken, default=0) + 1:05d}{suffix}"
    return root / name, name


def _run_folder(crops: torch.Tensor, targets: torch.Tensor, config: FinetuneConfig, prefix: str) -> Path:
    """The checkpoint folder of this run (ComfyUI's temp folder): the same inputs and settings find it again, so
    a cancelled run resumes when queued again."""
    digest = hashlib.sha1()
    for t in (crops, targets):
        digest.update(t.detach().to(torch.float16).cpu().numpy().tobytes())
    digest.update(repr((dataclasses.asdict(config), prefix)).encode())
    try:
        import folder_paths

        base = folder_paths.get_temp_directory()
    except (ImportError, AttributeError):
        base = tempfile.gettempdir()
    return Path(base) / "bfr_adapt" / digest.hexdigest()[:16]


class BFRAdaptRestorer(io.ComfyNode):
    SEARCH = ("adapt", "fine-tune", "finetune", "train", "dt-bfr", "swinir training")

    @classmethod
    def define_schema(cls) -> io.Schema:
        schema = node_schema(
            "BFRAdaptRestorer", "BFR Adapt Restorer (DT-BFR)",
            "Fine-tunes a loaded restoration backbone on aligned crops and their pseudo-targets (BFR Pseudo-Targets) "
            "for N steps (L1 loss, AdamW, cosine learning rate), then saves it to models/facerestore_models in the "
            "layout of its own file, where BFR Load Restorer, spandrel and other packs load it. The adapted "
            "backbone alone then restores this kind of photo in one pass. Cancel keeps a checkpoint: queue the same "
            "graph again to resume.",
            inputs=[
                Restorer.Input("restorer", tooltip="The backbone to adapt, from BFR Load Restorer (not changed: a "
                                                   "copy is trained)."),
                io.Image.Input("crops", tooltip="The degraded aligned crops (at least 8 faces, one size)."),
                io.Image.Input("targets", tooltip="Their pseudo-targets from BFR Pseudo-Targets, same order."),
                io.Int.Input("steps", default=500, min=1, max=100000,
                             tooltip="Optimizer steps (DT-BFR: 20000 at batch 16 on a GPU)."),
                io.Int.Input("batch_size", default=4, min=1, max=64,
                             tooltip="Faces per step; on out-of-memory it is split into smaller micro-batches whose "
                                     "gradients accumulate (the step stays the same)."),
                io.Float.Input("learning_rate", default=2e-5, min=1e-7, max=1e-2, step=1e-6,
                               tooltip="AdamW learning rate at the start (DT-BFR: 2e-5) ..."),
                io.Float.Input("learning_rate_end", default=5e-6, min=0.0, max=1e-2, step=1e-6,
                               tooltip="... cosine-annealed to this at the last step (DT-BFR: 5e-6)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seeds the batch order, flips and the held-out faces."),
                io.Combo.Input("precision", options=["fp32", "bf16", "fp16"], default="fp32",
                               tooltip="bf16: mixed precision on CPU and recent GPUs; fp16: CUDA only."),
                io.String.Input("filename_prefix", default="bfr_adapted/restorer_adapted",
                                tooltip="Name of the saved file in models/facerestore_models (steps and a counter "
                                        "are appended)."),
            ],
            outputs=[Restorer.Output(display_name="restorer", tooltip="The adapted backbone, for BFR Diffusion "
                                                                      "Restore / Restore Faces (or strength 0)."),
                     io.String.Output(display_name="filename", tooltip="The saved file, as BFR Load Restorer "
                                                                       "lists it."),
                     io.Int.Output(display_name="steps", tooltip="Optimizer steps done.")],
            search=cls.SEARCH)
        return dataclasses.replace(schema, is_output_node=True, is_experimental=True)

    @classmethod
    def validate_inputs(cls, learning_rate: float = 2e-5, learning_rate_end: float = 5e-6, **_) -> bool | str:
        return checked(lambda: FinetuneConfig(lr=learning_rate, lr_min=learning_rate_end).check(),
                       learning_rate, learning_rate_end)

    @classmethod
    def execute(cls, restorer, crops, targets, steps, batch_size, learning_rate, learning_rate_end, seed, precision,
                filename_prefix) -> io.NodeOutput:
        config = FinetuneConfig(steps=steps, batch_size=batch_size, lr=learning_rate, lr_min=learning_rate_end,
                                precision=precision, seed=seed, validate_every=max(1, steps // 10),
                                checkpoint_every=max(1, min(500, steps // 10)))
        config.check()
        backbone = _trainable_copy(restorer)
        with torch.inference_mode(False):
            lq, tg = split_alpha(to_bchw(crops))[0].clone(), split_alpha(to_bchw(targets))[0].clone()
            train_idx, val_idx = split_holdout(lq.shape[0], 0.125, seed)
            train = TensorPairs(lq[train_idx], tg[train_idx])
            val = TensorPairs(lq[val_idx], tg[val_idx]) if val_idx else None
        run = _run_folder(lq, tg, config, filename_prefix)
        side = int(lq.shape[-1])
        need = BACKWARD_FACTOR * activation_bytes(backbone, batch_size, side, side)
        with models_loaded(backbone, memory_required=need):
            result = finetune_backbone(backbone, train, val, config, checkpoint_dir=run,
                                       progress=RestoreProgress(steps, 1), log=log.info)
        origin = getattr(backbone, "origin", None)
        suffix = ".safetensors" if origin is None or origin.layout.format == "safetensors" else ".pth"
        path, name = _output_file(filename_prefix, result.step, suffix)
        save_backbone(backbone, path, layout="original" if origin is not None else "safetensors")
        log.info("BFR Adapt Restorer: %d steps, saved %s", result.step, path)
        return io.NodeOutput(backbone, name, result.step)


NODES = [BFRPseudoTargets, BFRAdaptRestorer]
__all__ = ["BFRAdaptRestorer", "BFRPseudoTargets", "NODES"]
