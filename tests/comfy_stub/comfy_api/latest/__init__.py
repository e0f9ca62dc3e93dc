"""Test stand-in for comfy_api.latest (ComfyUI >= 0.3.47): `io` and `ComfyExtension`."""
from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called when the extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The node classes the extension provides."""


comfy_io = io

__all__ = ["ComfyExtension", "io", "comfy_io"]
