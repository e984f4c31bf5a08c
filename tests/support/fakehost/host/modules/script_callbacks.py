"""modules.script_callbacks: records registrations so tests can fire them."""
callbacks = {"ui_settings": [], "before_ui": [], "app_started": [], "infotext_pasted": []}


def on_ui_settings(callback):
    callbacks["ui_settings"].append(callback)


def on_before_ui(callback):
    callbacks["before_ui"].append(callback)


def on_app_started(callback):
    callbacks["app_started"].append(callback)


def on_infotext_pasted(callback):
    callbacks["infotext_pasted"].append(callback)
