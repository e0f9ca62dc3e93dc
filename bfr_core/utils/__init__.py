"""Small helpers shared across the library: tensors (device/dtype discovery, luma, resizing), chunked runs, the
device of a launched process."""
from ..lazy import lazy_exports

_EXPORTS = {
    "COMPILE_MODES": ".precision",
    "CompiledModel": ".acceleration",
    "OOM_ERROR": ".chunking",
    "ProgressCallback": ".chunking",
    "run_chunked": ".chunking",
    "PRECISIONS": ".precision",
    "check_device": ".devices",
    "process_device": ".devices",
    "LUMA_BT601": ".tensors",
    "device_dtype_of": ".tensors",
    "luma": ".tensors",
    "compiled": ".acceleration",
    "cpu_has_fast_bf16": ".precision",
    "parse_dtype": ".precision",
    "preferred_dtype": ".precision",
    "resize_antialiased": ".tensors",
    "smoothstep": ".tensors",
    "to_channels_last": ".acceleration",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

