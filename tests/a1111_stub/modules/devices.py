"""As modules/devices.py, reduced: cpu, get_optimal_device, torch_gc, device_codeformer."""
import torch

cpu = torch.device("cpu")
device_codeformer = None  # set by the web UI's initialisation


def get_optimal_device():
    return cpu


def torch_gc():
    pass
