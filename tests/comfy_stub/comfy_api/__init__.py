"""Test stand-in for ComfyUI's comfy_api package (V3 node schema), the pieces the pack uses."""
