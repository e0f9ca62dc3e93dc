"""As modules/script_callbacks.py, reduced to on_ui_settings."""
ui_settings_callbacks = []


def on_ui_settings(callback, *, name=None):
    ui_settings_callbacks.append(callback)
