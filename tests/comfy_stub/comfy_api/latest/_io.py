"""Test stand-in for comfy_api.latest._io (ComfyUI v0.3.64), written from its documented behaviour.

Only what the pack uses, with the real names, signatures and outputs: input/output declarations and their
`as_dict()`, `Custom` types, `Schema` (the fields of v0.3.64: no `search_aliases` yet), and `ComfyNode` with
the V1 view ComfyUI's server and executor read (INPUT_TYPES, RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS,
OUTPUT_IS_LIST, FUNCTION = "EXECUTE_NORMALIZED", GET_NODE_INFO_V1). `Schema.validate` rejects duplicate ids as
the real one does, so a schema that ComfyUI would refuse fails here too.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from comfy_api.internal import _ComfyNodeInternal, classproperty


def prune_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class Input:
    """A node input; `Parent` (the type class) gives its io_type."""

    Parent: type = None

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict if extra_dict is not None else {}

    @property
    def io_type(self):
        return self.Parent.io_type

    def as_dict(self):
        return prune_dict({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                           "lazy": self.lazy}) | prune_dict(self.extra_dict)

    def get_io_type(self):
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, socketless: bool = None, widget_type: str = None, force_input: bool = None,
                 extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self):
        return super().as_dict() | prune_dict({"default": self.default, "socketless": self.socketless,
                                               "widgetType": self.widget_type, "forceInput": self.force_input})

    def get_io_type(self):
        return self.widget_type if self.widget_type is not None else super().get_io_type()


class Output:
    Parent: type = None

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    @property
    def io_type(self):
        return self.Parent.io_type

    def as_dict(self):
        return prune_dict({"display_name": self.display_name, "tooltip": self.tooltip,
                           "is_output_list": self.is_output_list})

    def get_io_type(self):
        return self.io_type


def _comfytype(io_type: str, input_cls=Input, output_cls=Output, name: str = "CustomComfyType"):
    """A type class with its own Input/Output subclasses bound to it (the real decorator copies them likewise)."""
    cls = type(name, (), {"io_type": io_type})
    cls.Input = type("Input", (input_cls,), {"Parent": cls})
    cls.Output = type("Output", (output_cls,), {"Parent": cls})
    return cls


def Custom(io_type: str) -> type:
    """A type for a custom io_type, e.g. Custom("BFR_FACES")."""
    return _comfytype(io_type)


class _BooleanInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: bool = None, label_on: str = None, label_off: str = None, socketless: bool = None,
                 force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.label_on = label_on
        self.label_off = label_off

    def as_dict(self):
        return super().as_dict() | prune_dict({"label_on": self.label_on, "label_off": self.label_off})


class _IntInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: int = None, min: int = None, max: int = None, step: int = None,
                 control_after_generate: bool = None, display_mode: NumberDisplay = None, socketless: bool = None,
                 force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step = min, max, step
        self.control_after_generate = control_after_generate
        self.display_mode = display_mode

    def as_dict(self):
        return super().as_dict() | prune_dict({
            "min": self.min, "max": self.max, "step": self.step, "control_after_generate": self.control_after_generate,
            "display": self.display_mode.value if self.display_mode else None})


class _FloatInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: float = None, min: float = None, max: float = None, step: float = None, round: float = None,
                 display_mode: NumberDisplay = None, socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.round = min, max, step, round
        self.display_mode = display_mode

    def as_dict(self):
        return super().as_dict() | prune_dict({"min": self.min, "max": self.max, "step": self.step,
                                               "round": self.round, "display": self.display_mode})


class _StringInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 multiline=False, placeholder: str = None, default: str = None, dynamic_prompts: bool = None,
                 socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.multiline = multiline
        self.placeholder = placeholder
        self.dynamic_prompts = dynamic_prompts

    def as_dict(self):
        return super().as_dict() | prune_dict({"multiline": self.multiline, "placeholder": self.placeholder,
                                               "dynamicPrompts": self.dynamic_prompts})


class _ComboInput(WidgetInput):
    def __init__(self, id: str, options: list = None, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, default=None, control_after_generate: bool = None, upload=None,
                 image_folder=None, remote=None, socketless: bool = None):
        if isinstance(options, type) and issubclass(options, Enum):
            options = [v.value for v in options]
        if isinstance(default, Enum):
            default = default.value
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.multiselect = False
        self.options = options
        self.control_after_generate = control_after_generate

    def as_dict(self):
        return super().as_dict() | prune_dict({"multiselect": self.multiselect, "options": self.options,
                                               "control_after_generate": self.control_after_generate})


Boolean = _comfytype("BOOLEAN", _BooleanInput, name="Boolean")
Int = _comfytype("INT", _IntInput, name="Int")
Float = _comfytype("FLOAT", _FloatInput, name="Float")
String = _comfytype("STRING", _StringInput, name="String")
Combo = _comfytype("COMBO", _ComboInput, name="Combo")
Image = _comfytype("IMAGE", name="Image")
Mask = _comfytype("MASK", name="Mask")
Image.Type = Mask.Type = torch.Tensor
# Socket-only types of the core sampling nodes (v0.3.64's comfytype io_type strings).
Model = _comfytype("MODEL", name="Model")
Vae = _comfytype("VAE", name="Vae")
Conditioning = _comfytype("CONDITIONING", name="Conditioning")
Guider = _comfytype("GUIDER", name="Guider")
Latent = _comfytype("LATENT", name="Latent")


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


@dataclass
class Schema:
    """V3 node properties (the fields of ComfyUI v0.3.64)."""

    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        input_ids = [i.id for i in self.inputs or []]
        output_ids = [o.id for o in self.outputs or []]
        issues = []
        if len(set(input_ids)) != len(input_ids):
            issues.append(f"Input ids must be unique, but {[k for k, n in Counter(input_ids).items() if n > 1]} are not.")
        if len(set(output_ids)) != len(output_ids):
            issues.append(f"Output ids must be unique, but {[k for k, n in Counter(output_ids).items() if n > 1]} are not.")
        if set(input_ids) & set(output_ids):
            issues.append(f"Ids must be unique between inputs and outputs, but {set(input_ids) & set(output_ids)} are not.")
        if issues:
            raise ValueError("\n".join(issues))

    def finalize(self):
        for i, output in enumerate(self.outputs or []):
            if output.id is None:
                output.id = f"_{i}_{output.io_type}_"

    def get_v1_info(self, cls) -> dict:
        inputs: dict = {"required": {}}
        for i in self.inputs or []:
            d = i.as_dict()
            d.pop("optional", None)
            inputs.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), d)
        outs = self.outputs or []
        return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
                "output": [o.io_type for o in outs], "output_is_list": [o.is_output_list for o in outs],
                "output_name": [o.display_name or o.io_type for o in outs],
                "output_tooltips": [o.tooltip or None for o in outs], "name": self.node_id,
                "display_name": self.display_name, "description": self.description,
                "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"), "category": self.category,
                "output_node": self.is_output_node, "deprecated": self.is_deprecated,
                "experimental": self.is_experimental, "api_node": self.is_api_node}


class NodeOutput:
    """A node's outputs (and optional UI data)."""

    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    def __getitem__(self, index) -> Any:
        return self.args[index]


class ComfyNode(_ComfyNodeInternal):
    """Base class of V3 nodes: classmethods only, no instance state."""

    RELATIVE_PYTHON_MODULE = None
    SCHEMA = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> Any:
        raise NotImplementedError

    @classmethod
    def GET_BASE_CLASS(cls):
        return ComfyNode

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        cls.SCHEMA = schema
        return schema

    @classmethod
    def INPUT_TYPES(cls, include_hidden=True, return_schema=False):
        schema = cls.define_schema()
        schema.finalize()
        inputs = schema.get_v1_info(cls)["input"]
        return (inputs, schema) if return_schema else inputs

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:
        return cls.GET_SCHEMA().get_v1_info(cls)

    @classproperty
    def FUNCTION(cls):  # noqa: N802
        return "EXECUTE_NORMALIZED"

    @classproperty
    def DESCRIPTION(cls):  # noqa: N802
        return cls.GET_SCHEMA().description

    @classproperty
    def CATEGORY(cls):  # noqa: N802
        return cls.GET_SCHEMA().category

    @classproperty
    def RETURN_TYPES(cls):  # noqa: N802
        return [o.io_type for o in cls.GET_SCHEMA().outputs or []]

    @classproperty
    def RETURN_NAMES(cls):  # noqa: N802
        return [o.display_name or o.io_type for o in cls.GET_SCHEMA().outputs or []]

    @classproperty
    def OUTPUT_TOOLTIPS(cls):  # noqa: N802
        return [o.tooltip or None for o in cls.GET_SCHEMA().outputs or []]

    @classproperty
    def OUTPUT_IS_LIST(cls):  # noqa: N802
        return [o.is_output_list for o in cls.GET_SCHEMA().outputs or []]

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args, **kwargs) -> NodeOutput:
        out = cls.execute(*args, **kwargs)
        if out is None:
            return NodeOutput()
        if isinstance(out, tuple):
            return NodeOutput(*out)
        if not isinstance(out, NodeOutput):
            raise Exception(f"Invalid return type from node: {type(out)}")
        return out


__all__ = ["NumberDisplay", "Input", "WidgetInput", "Output", "Custom", "Boolean", "Int", "Float", "String", "Combo",
           "Image", "Mask", "Model", "Vae", "Conditioning", "Guider", "Latent", "Hidden", "Schema", "NodeOutput", "ComfyNode"]
