"""ComfyUI entry point of the BFR face-restoration pack (the folder cloned into custom_nodes/).

V3 only: ComfyUI (>= 0.3.47) awaits `comfy_entrypoint()`. No NODE_CLASS_MAPPINGS here on purpose: ComfyUI's loader
takes V1 mappings when both exist and would then never call the entry point. The nodes are imported when ComfyUI
calls it, so the folder itself imports without ComfyUI (pytest imports it as a package).
"""


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as nodes_entrypoint

    return await nodes_entrypoint()


WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
