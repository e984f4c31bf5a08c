"""The "RefDrop" section of the WebUI Settings page, and reading it with fallbacks outside a host.

Every reader works without the host (tests, API helpers) and with a host whose ``shared.opts`` lacks the key
(an old config, the settings callback not run yet): it then returns the documented default.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .profiles import DEFAULT_PROFILE, PROFILES
from .reader import RAM_CACHE
from .settings import DEFAULT_RFG
from .store import ReferenceStore

SECTION = ("refdrop", "RefDrop")
DEFAULT_RAM_MB = 4096

# key -> (default, label); the default of the folder is computed (models_path) and stored as "".
OPTIONS = {
    "refdrop_store_folder": ("", "Folder of saved references (empty: <models>/RefDrop)"),
    "refdrop_ram_budget_mb": (DEFAULT_RAM_MB, "RAM for cached references, MB (0: read from disk every time)"),
    "refdrop_default_rfg": (DEFAULT_RFG, "Default RFG coefficient of the RefDrop panel (after a UI reload)"),
    "refdrop_default_profile": (DEFAULT_PROFILE, "Storage profile of new references when the panel leaves it empty"),
    "refdrop_overwrite_default": (False, "Save may overwrite a reference of the same name by default"),
}


def register(shared, gr) -> None:
    """Add the section; called from ``script_callbacks.on_ui_settings`` with the host's modules."""
    def add(key, component, args=None, onchange=None):
        default, label = OPTIONS[key]
        info = shared.OptionInfo(default, label, component, args, onchange=onchange, section=SECTION)
        shared.opts.add_option(key, info)

    add("refdrop_store_folder", gr.Textbox, onchange=forget_store)
    add("refdrop_ram_budget_mb", gr.Slider, {"minimum": 0, "maximum": 65536, "step": 256}, onchange=apply_ram_budget)
    add("refdrop_default_rfg", gr.Slider, {"minimum": -1.0, "maximum": 1.0, "step": 0.01})
    add("refdrop_default_profile", gr.Dropdown, {"choices": list(PROFILES)})
    add("refdrop_overwrite_default", gr.Checkbox)


def _get(key):
    default = OPTIONS[key][0]
    try:
        from modules import shared
    except ImportError:
        return default
    opts = getattr(shared, "opts", None)
    data = getattr(opts, "data", None)
    if isinstance(data, dict) and key in data:
        return data[key]
    try:
        return getattr(opts, key)  # the registered default, when the user never changed it
    except AttributeError:
        return default


def models_path() -> str:
    try:
        from modules.paths import models_path as path
    except ImportError:
        return os.path.join(os.getcwd(), "models")
    return path


def store_folder() -> str:
    folder = str(_get("refdrop_store_folder") or "").strip()
    return os.path.expanduser(folder) if folder else os.path.join(models_path(), "RefDrop")


def ram_budget_mb() -> int:
    try:
        return max(0, int(float(_get("refdrop_ram_budget_mb"))))
    except (TypeError, ValueError):
        return DEFAULT_RAM_MB


def default_rfg() -> float:
    try:
        value = float(_get("refdrop_default_rfg"))
    except (TypeError, ValueError):
        return DEFAULT_RFG
    return value if -1.0 <= value <= 1.0 else DEFAULT_RFG


def default_profile() -> str:
    value = _get("refdrop_default_profile")
    return value if value in PROFILES else DEFAULT_PROFILE


def overwrite_default() -> bool:
    value = _get("refdrop_overwrite_default")
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def apply_ram_budget() -> None:
    RAM_CACHE.set_budget(ram_budget_mb() * 1024 * 1024)


_store: ReferenceStore | None = None
_store_lock = threading.Lock()


def get_store() -> ReferenceStore:
    """The store of the configured folder (opened once; reopened when the folder setting changes)."""
    global _store
    folder = store_folder()
    with _store_lock:
        if _store is None or _store.root != Path(folder).expanduser().resolve():
            _store = ReferenceStore(folder)
        return _store


def forget_store() -> None:
    global _store
    with _store_lock:
        _store = None
