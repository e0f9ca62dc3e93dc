"""Test stand-in for ComfyUI's folder_paths (the few functions the nodes call)."""
import os

models_dir = os.environ.get("BFR_TEST_COMFY_MODELS", "/nonexistent/models")
folder_names_and_paths: dict = {}


def get_filename_list(folder):
    """Files below the folder's paths, as relative paths with '/' (recursive, like ComfyUI)."""
    paths, exts = folder_names_and_paths[folder]
    out = []
    for p in paths:
        for root, _, files in os.walk(p):
            for name in sorted(files):
                if not exts or os.path.splitext(name)[1].lower() in exts:
                    out.append(os.path.relpath(os.path.join(root, name), p).replace(os.sep, "/"))
    return sorted(set(out))


def get_full_path(folder, name):
    for p in folder_names_and_paths.get(folder, ([], set()))[0]:
        cand = os.path.join(p, name)
        if os.path.isfile(cand):
            return cand
    return None
