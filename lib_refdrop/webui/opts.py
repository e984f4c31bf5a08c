"""The "RefDrop" section of the WebUI Settings page, and reading it with fallbacks outside a host.

Every reader works without the host (tests, API helpers) and with a host whose ``shared.opts`` lacks the key
(an old config, the settings callback not run yet): it then returns the documented default. A value that cannot
be used (out of range, of the wrong type) is clamped or replaced by the default, with a message printed once.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

from ..errors import RefDropError
from ..params import DEFAULT_RFG, as_number, parse_bool, parse_rfg, shown
from ..reference.profiles import DEFAULT_PROFILE, PROFILES
from ..reference.reader import RAM_CACHE
from ..reference.store import ReferenceStore

SECTION = ("refdrop", "RefDrop")
DEFAULT_RAM_MB = 4096
MAX_RAM_MB = 65536  # the Settings slider's maximum

# key -> (default, label); the default of the folder is computed (models_path) and stored as "".
OPTIONS = {
    "refdrop_store_folder": ("", "Folder of saved references (empty: <models>/RefDrop)"),
    "refdrop_ram_budget_mb": (DEFAULT_RAM_MB, "RAM for cached references, MB (0: read from disk every time)"),
    "refdrop_default_rfg": (DEFAULT_RFG, "Default RFG coefficient of the RefDrop panel (after a UI reload)"),
    "refdrop_default_profile": (DEFAULT_PROFILE, "Storage profile of new references when the panel leaves it empty"),
    "refdrop_overwrite_default": (False, "Save may overwrite a reference of the same name by default"),
    "refdrop_bake_trajectories": (True, "Make a trajectory reference fast after its first Use: keep the rows that "
                                        "Use computes, in the storage profile above (off: every Use evaluates the "
                                        "reference again, exactly)"),
}


def register(shared, gr) -> None:
    """Add the section; called from ``script_callbacks.on_ui_settings`` with the host's modules."""
    def add(key, component, args=None, onchange=None):
        default, label = OPTIONS[key]
        info = shared.OptionInfo(default, label, component, args, onchange=onchange, section=SECTION)
        shared.opts.add_option(key, info)

    add("refdrop_store_folder", gr.Textbox, onchange=forget_store)
    add("refdrop_ram_budget_mb", gr.Slider, {"minimum": 0, "maximum": MAX_RAM_MB, "step": 256},
        onchange=apply_ram_budget)
    add("refdrop_default_rfg", gr.Slider, {"minimum": -1.0, "maximum": 1.0, "step": 0.01})
    add("refdrop_default_profile", gr.Dropdown, {"choices": list(PROFILES)})
    add("refdrop_overwrite_default", gr.Checkbox)
    add("refdrop_bake_trajectories", gr.Checkbox)


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


# A hand-edited config.json can hold anything JSON allows (``Infinity``, lists, null...). Each reader returns a
# usable value whatever it finds, and says once per value what it used instead, so the extension always loads.
_reported: set[tuple[str, str]] = set()


def _instead(key: str, value, problem: str, used):
    """Report (once per key and value) that a setting is unusable; return what is used in its place."""
    token = (key, shown(value))
    if token not in _reported:
        _reported.add(token)
        print(f"RefDrop: the setting {key} = {shown(value)} {problem}; using {used!r} instead")
    return used


def default_store_folder() -> str:
    return os.path.join(models_path(), "RefDrop")


def store_folder() -> str:
    key = "refdrop_store_folder"
    value = _get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default_store_folder()
    if not isinstance(value, str):
        return _instead(key, value, "is not a folder path", default_store_folder())
    folder = value.strip()
    try:
        os.fsencode(folder)  # a lone surrogate cannot name a file here
    except UnicodeError:
        return _instead(key, value, "is not a valid folder path", default_store_folder())
    if "\x00" in folder:
        return _instead(key, value, "contains a NUL character", default_store_folder())
    return os.path.expanduser(folder)


def ram_budget_mb() -> int:
    key = "refdrop_ram_budget_mb"
    value = _get(key)
    number = as_number(value)
    if number is None or math.isnan(number):
        return _instead(key, value, "is not a number of MB", DEFAULT_RAM_MB)
    if number < 0:
        return _instead(key, value, "is below 0", 0)
    if number > MAX_RAM_MB:
        return _instead(key, value, f"is above the most allowed ({MAX_RAM_MB})", MAX_RAM_MB)
    return int(number)


def _validated(key: str, parse, what: str, fallback):
    """The setting ``key`` through a params validator, or ``fallback`` with one printed line."""
    value = _get(key)
    try:
        return parse(value, key)
    except RefDropError:
        return _instead(key, value, what, fallback)


def default_rfg() -> float:
    return _validated("refdrop_default_rfg", parse_rfg, "is not an RFG coefficient in [-1, 1]", DEFAULT_RFG)


def default_profile() -> str:
    key = "refdrop_default_profile"
    value = _get(key)
    if isinstance(value, str) and value.strip() in PROFILES:
        return value.strip()
    if value is None or value == "":
        return DEFAULT_PROFILE
    return _instead(key, value, f"is not a storage profile ({', '.join(PROFILES)})", DEFAULT_PROFILE)


def overwrite_default() -> bool:
    return _validated("refdrop_overwrite_default", parse_bool, "is not true or false", False)


def bake_trajectories() -> bool:
    return _validated("refdrop_bake_trajectories", parse_bool, "is not true or false", True)


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
