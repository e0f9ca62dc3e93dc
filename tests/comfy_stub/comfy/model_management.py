"""Test stand-in for comfy.model_management: CPU devices, a settable interrupt flag, load_models_gpu."""
import torch

INTERRUPT = {"flag": False}


class InterruptProcessingException(Exception):
    pass


OOM_EXCEPTION = torch.cuda.OutOfMemoryError


def get_torch_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def throw_exception_if_processing_interrupted():
    if INTERRUPT["flag"]:
        INTERRUPT["flag"] = False
        raise InterruptProcessingException()


def soft_empty_cache(force=False):
    pass


FREED: list = []


def free_memory(memory_required, device, keep_loaded=()):
    FREED.append((memory_required, str(device)))


# --- load_models_gpu: which patchers ComfyUI holds loaded (weakly, as its LoadedModel does) -------------------------
import weakref  # noqa: E402

current_loaded_models: list = []  # weakrefs to the loaded patchers, most recent first
LOAD_REQUESTS: list = []  # (model class name, memory_required) of each patcher that had to be loaded


def loaded_models(only_currently_used=False):
    return [r() for r in current_loaded_models if r() is not None]


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    """Loads patchers not yet loaded (ComfyUI logs "Requested to load <class>" for exactly those) onto their
    load_device; already loaded ones stay where they are."""
    current_loaded_models[:] = [r for r in current_loaded_models if r() is not None]
    for patcher in models:
        if any(r() is patcher for r in current_loaded_models):
            continue
        LOAD_REQUESTS.append((type(patcher.model).__name__, memory_required))
        free_memory(patcher.model_size() + memory_required, patcher.load_device)
        patcher.model.to(patcher.load_device)
        current_loaded_models.insert(0, weakref.ref(patcher))


def load_model_gpu(model):
    return load_models_gpu([model])


def module_size(module):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())
