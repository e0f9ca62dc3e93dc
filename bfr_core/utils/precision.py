"""Precision names the CLI and the nodes accept (torch-free until a name is turned into a dtype)."""
from __future__ import annotations

# name → torch attribute
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def parse_dtype(name: str):
    """'fp32' | 'fp16' | 'bf16' → torch dtype, with an error naming the choices."""
    if str(name) not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    import torch

    return getattr(torch, PRECISIONS[str(name)])
