"""How the pack declares its V3 nodes: the category, the BFR_* socket types, search words, and the Schema helper.

Every node module builds its `io.Schema` through `node_schema` so the category and search words stay one thing,
and so fields that only newer ComfyUI versions know (`search_aliases`, from the V3 schema of late 2025) are passed
only where the running ComfyUI accepts them; on older ones (>= 0.3.47) the node loads the same without them.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from comfy_api.latest import io

CATEGORY = "face restore/BFR"

# The pack's socket types: each travels only between the pack's own nodes. The io_type strings are the workflow
# identity of the sockets (saved in every workflow's links): never rename them.
Detector = io.Custom("BFR_DETECTOR")
Detections = io.Custom("BFR_DETECTIONS")
Faces = io.Custom("BFR_FACES")
Prior = io.Custom("BFR_PRIOR")
Restorer = io.Custom("BFR_RESTORER")
Recognizer = io.Custom("BFR_RECOGNIZER")
Guidance = io.Custom("BFR_GUIDANCE")

# Words that find the pack's nodes in ComfyUI's node search. Other packs' model names are here because people
# search for face restoration by them; this pack loads GFPGAN as a backbone, not CodeFormer.
PACK_SEARCH_ALIASES = ("face restore", "restore faces", "face restoration", "blind face restoration", "bfr",
                       "difface", "gfpgan", "codeformer", "face fix")


def search_aliases(*extra: str) -> list[str]:
    """The pack's search words plus a node's own."""
    return [*PACK_SEARCH_ALIASES, *extra]


def _schema_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(io.Schema)}


def node_schema(node_id: str, display_name: str, description: str, inputs: list, outputs: list,
                search: tuple[str, ...] = ()) -> io.Schema:
    """The Schema of one of the pack's nodes, in the pack's category, with its search words where supported."""
    extra = {}
    if "search_aliases" in _schema_fields():
        extra["search_aliases"] = search_aliases(*search)
    return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY, description=description,
                     inputs=inputs, outputs=outputs, **extra)


def checked(check: Callable[[], object], *values: object) -> bool | str:
    """validate_inputs' answer: True, or the message of the ValueError the check raised (ComfyUI shows it on the
    node before anything runs). `values`: the inputs the check reads; one fed by a link arrives as None at queue time
    (its node has not run yet), and then the check waits for execute, which checks again."""
    if any(v is None for v in values):
        return True
    try:
        check()
    except (ValueError, FileNotFoundError) as err:
        return str(err)
    return True
