"""Test stand-in for comfy_api.internal: the base class ComfyUI's executor checks and `first_real_override`."""
from __future__ import annotations


class _ComfyNodeInternal:
    """Marker base: ComfyUI treats subclasses as V3 nodes (server.node_info, execution.validate_inputs)."""


class classproperty:
    """A read-only property on the class (ComfyUI uses one for RETURN_TYPES, FUNCTION, ...)."""

    def __init__(self, getter):
        self.getter = getter

    def __get__(self, instance, owner):
        return self.getter(owner)


def first_real_override(cls: type, name: str, *, base: type | None = None):
    """The class's `name` if a subclass below the base defines it (else None), as ComfyUI decides whether a node
    has its own validate_inputs/fingerprint_inputs."""
    if base is None:
        base = cls.GET_BASE_CLASS() if hasattr(cls, "GET_BASE_CLASS") else object
    base_attr = getattr(base, name, None)
    if base_attr is None:
        return None
    base_func = base_attr.__func__
    for c in cls.mro():
        if c is base:
            break
        if name in c.__dict__ and getattr(c, name).__func__ is not base_func:
            return getattr(cls, name)
    return None
