"""Small helpers shared across the library: tensors (device/dtype discovery, luma, resizing), chunked runs."""
from .chunking import OOM_ERROR, ProgressCallback, run_chunked
from .tensors import (DTYPE_NAMES, LUMA_BT601, device_dtype_of, luma, parse_dtype, resize_antialiased,
                      smoothstep)

__all__ = ["DTYPE_NAMES", "LUMA_BT601", "OOM_ERROR", "ProgressCallback", "device_dtype_of", "luma", "parse_dtype",
           "resize_antialiased", "run_chunked", "smoothstep"]
