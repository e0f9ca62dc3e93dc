"""Model files and checkpoints: safe reading and unwrapping of state dicts, strict loading with clear errors, the
registry of files the pack knows (where they go, licences, checksums, explicit downloads)."""
from ..lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": ".errors",
    "CheckpointLayout": ".checkpoint",
    "CheckpointOrigin": ".checkpoint",
    "load_state_dict": ".checkpoint",
    "load_state_dict_and_layout": ".checkpoint",
    "load_strict": ".checkpoint",
    "read_checkpoint": ".checkpoint",
    "unwrap_state_dict": ".checkpoint",
    "write_state_dict": ".checkpoint",
    "REGISTRY": ".files",
    "ModelFile": ".files",
    "find_model": ".files",
    "resolve_model": ".files",
    "check_licence": ".files",
    "LicenceError": ".files",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

