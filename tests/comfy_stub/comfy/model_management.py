"""Test stand-in for comfy.model_management: CPU devices and a settable interrupt flag."""
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
