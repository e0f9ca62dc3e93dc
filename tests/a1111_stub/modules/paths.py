"""As modules/paths.py (re-exporting paths_internal.models_path); tests point it at a temporary folder."""
models_path = "models"
