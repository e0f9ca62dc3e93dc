"""Test stand-in for ComfyUI's folder_paths (the few functions the nodes call)."""
import os

models_dir = os.environ.get("BFR_TEST_COMFY_MODELS", "/nonexistent/models")
folder_names_and_paths: dict = {}


def get_filename_list(folder):
    paths, exts = folder_names_and_paths[folder]
    out = []
    for p in paths:
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                if not exts or os.path.splitext(name)[1].lower() in exts:
                    out.append(name)
    return out


def get_full_path(folder, name):
    for p in folder_names_and_paths.get(folder, ([], set()))[0]:
        cand = os.path.join(p, name)
        if os.path.isfile(cand):
            return cand
    return None
