"""Room for fine-tuning (e.g. DT-BFR style adaptation of the restoration backbone): make a loaded backbone
trainable, save the adapted weights where spandrel and other packs can load them, and write DT-BFR pseudo-target
files (`pseudo_targets.write_pseudo_targets`, imported on use: it pulls in the diffusion engine)."""
from .backbones import freeze, save_backbone, trainable

__all__ = ["freeze", "save_backbone", "trainable"]
