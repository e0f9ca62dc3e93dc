"""Test stand-in for comfy.model_patcher.ModelPatcher: the constructor and the sizes ComfyUI's manager reads."""
import comfy.model_management


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if not hasattr(self.model, "device") or self.model.device is None:
            self.model.device = offload_device  # as the real one does: a read-only `device` would fail here
        self.load_device = load_device
        self.offload_device = offload_device

    def model_size(self):
        if self.size > 0:
            return self.size
        self.size = comfy.model_management.module_size(self.model)
        return self.size

    def current_loaded_device(self):
        return self.model.device

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model
