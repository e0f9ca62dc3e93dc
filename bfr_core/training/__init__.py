"""Room for fine-tuning (e.g. DT-BFR style adaptation of the restoration backbone): make a loaded backbone
trainable, and save the adapted weights where spandrel and other packs can load them."""
from .backbones import freeze, save_backbone, trainable

__all__ = ["freeze", "save_backbone", "trainable"]
