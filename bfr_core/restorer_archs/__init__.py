"""Own pure-torch ports of restoration backbones, used when spandrel is not installed."""
from .swinir import (DIFFACE_SWINIR, SwinIR, SwinIRConfig, is_swinir_state_dict, load_swinir,
                     swinir_config_from_state_dict)

__all__ = ["DIFFACE_SWINIR", "SwinIR", "SwinIRConfig", "is_swinir_state_dict", "load_swinir",
           "swinir_config_from_state_dict"]
