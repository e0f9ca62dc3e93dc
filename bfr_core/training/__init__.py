"""Adapting restoration backbones (DT-BFR): make a loaded backbone trainable, fine-tune it on (crop, pseudo-target)
pairs (`finetune.finetune_backbone`), save the adapted weights where spandrel and other packs load them, and write
pseudo-target files (`pseudo_targets.write_pseudo_targets`). Exports are lazy: the fine-tuning loop and the
pseudo-target writer import torch and the diffusion engine only when used."""
from ..lazy import lazy_exports

_EXPORTS = {
    "freeze": ".backbones",
    "save_backbone": ".backbones",
    "trainable": ".backbones",
    "FilePairs": ".data",
    "TensorPairs": ".data",
    "split_holdout": ".data",
    "FinetuneConfig": ".finetune",
    "FinetuneResult": ".finetune",
    "evaluate_backbone": ".finetune",
    "finetune_backbone": ".finetune",
    "load_perceptual": ".perceptual",
    "write_pseudo_targets": ".pseudo_targets",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
