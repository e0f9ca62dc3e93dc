"""Model files and checkpoints: safe reading and unwrapping of state dicts, strict loading with clear errors, the
registry of files the pack knows (where they go, licences, checksums, explicit downloads)."""
from .checkpoint import (CheckpointError, CheckpointLayout, CheckpointOrigin, load_state_dict, load_state_dict_and_layout,
                         load_strict, read_checkpoint, unwrap_state_dict, write_state_dict)
from .files import REGISTRY, ModelFile, find_model, resolve_model

__all__ = ["CheckpointError", "CheckpointLayout", "CheckpointOrigin", "ModelFile", "REGISTRY", "find_model",
           "load_state_dict", "load_state_dict_and_layout", "load_strict", "read_checkpoint", "resolve_model",
           "unwrap_state_dict", "write_state_dict"]
