"""RefDrop's keys in the image infotext, and reading them back for the paste button and the API's ``infotext``.

Written into ``p.extra_generation_params`` (snake_case, prefixed like the built-ins' ``kohya_hrfix_*``). The host
converts a pasted string with ``type(component.value)(text)``, which turns "False" into True and a list into
characters, so every control is filled by a function of the parsed params (host-api.md §1.4) instead of a key.

A Save writes only what applies to a Save (mode, the name it saved as, the profile); a Use writes the Use values.

Paste rules: an infotext without RefDrop keys turns RefDrop off and leaves the other controls alone. A Use
infotext sets every control (keys left out because they were at their defaults give the default back). A Save
infotext sets the mode and the reference dropdown (to its ``refdrop_saved_as``) and leaves the Use-only controls
(RFG, groups, blocks, skip, step window, hires) as they are: they did not apply to that image, so the user's own
Use values survive; a ``refdrop_rfg`` in an older Save infotext is ignored for the same reason. The save name is
left empty (automatic), so pasting and generating again does not collide with the reference that image created.
A bad value leaves its control unchanged.
"""

from __future__ import annotations

from .errors import RefDropError
from .settings import RefDropSettings, as_bool, as_fraction, parse_blocks, parse_groups, parse_rfg
from .settings import parse_mode as _parse_mode

PREFIX = "refdrop_"
KEYS = (
    "refdrop_enabled", "refdrop_mode", "refdrop_reference", "refdrop_saved_as", "refdrop_rfg",
    "refdrop_disabled_groups", "refdrop_disabled_blocks", "refdrop_skip_first_up", "refdrop_step_start",
    "refdrop_step_end", "refdrop_hires", "refdrop_profile",
)
_DEFAULTS = RefDropSettings()


def clear(params: dict) -> None:
    """Remove every RefDrop key: X/Y/Z cells share one ``extra_generation_params`` dict (host-api.md §1.3)."""
    for key in [k for k in params if isinstance(k, str) and k.startswith(PREFIX)]:
        del params[key]


def write(params: dict, settings: RefDropSettings, saved_as: str | None = None, profile: str | None = None) -> None:
    """Describe ``settings`` in ``params`` (replacing earlier RefDrop keys); nothing when RefDrop is off."""
    clear(params)
    if not settings.enabled:
        return
    params["refdrop_enabled"] = True
    params["refdrop_mode"] = settings.mode
    if settings.saving:
        name = saved_as or settings.save_name
        if name:
            params["refdrop_saved_as"] = name
        if profile or settings.profile:
            params["refdrop_profile"] = profile or settings.profile
        return  # the Use-only values (RFG, blocks, window...) have no effect on a Save
    if settings.reference:  # an empty value would not survive the host's infotext parser
        params["refdrop_reference"] = settings.reference
    params["refdrop_rfg"] = settings.rfg
    if settings.disabled_groups:
        params["refdrop_disabled_groups"] = ", ".join(settings.disabled_groups)
    if settings.disabled_blocks:
        params["refdrop_disabled_blocks"] = ", ".join(settings.disabled_blocks)
    if settings.skip_first_up:
        params["refdrop_skip_first_up"] = True
    if settings.step_start != _DEFAULTS.step_start:
        params["refdrop_step_start"] = settings.step_start
    if settings.step_end != _DEFAULTS.step_end:
        params["refdrop_step_end"] = settings.step_end
    if settings.apply_hires:
        params["refdrop_hires"] = True


# -- reading back -----------------------------------------------------------------------------------------
# The host calls these while pasting, with whatever the infotext (or another extension) put in the dict: each
# returns a valid value or None and never raises, since an exception would stop the whole paste.

def _present(d: dict) -> bool:
    return isinstance(d, dict) and ("refdrop_enabled" in d or "refdrop_mode" in d)


def _sets_use_controls(d: dict) -> bool:
    """A Use infotext sets every Use-only control; a Save one leaves them alone, since none of them applied."""
    return _present(d) and parse_mode(d) != "Save"


def _text(value):
    return value.strip() if isinstance(value, str) else None


def _validated(d: dict, key: str, default, parse):
    """``key`` checked by the settings' own parser; None (the control keeps its value) if absent or invalid."""
    if not _present(d):
        return None
    try:
        return parse(d.get(key, default))
    except RefDropError:
        return None


def _use_only(d: dict, key: str, default, parse):
    return _validated(d, key, default, parse) if _sets_use_controls(d) else None


def parse_enabled(d: dict) -> bool:
    if not _present(d):
        return False
    try:
        return as_bool("refdrop_enabled", d.get("refdrop_enabled", False))
    except RefDropError:
        return False


def parse_mode(d: dict):
    return _validated(d, "refdrop_mode", _DEFAULTS.mode, _parse_mode)


def parse_rfg_field(d: dict):
    return _use_only(d, "refdrop_rfg", _DEFAULTS.rfg, parse_rfg)


def parse_reference(d: dict):
    if not _present(d):
        return None
    return _text(d.get("refdrop_reference") or d.get("refdrop_saved_as") or "")


def parse_save_name(d: dict):
    return "" if _present(d) else None


def parse_disabled_groups(d: dict):
    return _use_only(d, "refdrop_disabled_groups", "", lambda v: list(parse_groups(v)))


def parse_disabled_blocks(d: dict):
    return _use_only(d, "refdrop_disabled_blocks", "", lambda v: list(parse_blocks(v)))


def _flag(d: dict, key: str):
    return _use_only(d, key, False, lambda v: as_bool(key, v))


def _fraction(d: dict, key: str, default: float):
    return _use_only(d, key, default, lambda v: as_fraction(key, v))


def parse_skip_first_up(d: dict):
    return _flag(d, "refdrop_skip_first_up")


def parse_step_start(d: dict):
    return _fraction(d, "refdrop_step_start", _DEFAULTS.step_start)


def parse_step_end(d: dict):
    return _fraction(d, "refdrop_step_end", _DEFAULTS.step_end)


def parse_apply_hires(d: dict):
    return _flag(d, "refdrop_hires")


def parse_overwrite(d: dict):
    return False if _present(d) else None  # never carry "overwrite" over from another image


def parse_profile(d: dict):
    if not _present(d):
        return None
    return _text(d.get("refdrop_profile", ""))


PARSERS = {
    "enabled": parse_enabled,
    "mode": parse_mode,
    "rfg": parse_rfg_field,
    "reference": parse_reference,
    "save_name": parse_save_name,
    "disabled_groups": parse_disabled_groups,
    "disabled_blocks": parse_disabled_blocks,
    "skip_first_up": parse_skip_first_up,
    "step_start": parse_step_start,
    "step_end": parse_step_end,
    "apply_hires": parse_apply_hires,
    "overwrite": parse_overwrite,
    "profile": parse_profile,
}


def parse(d: dict) -> dict:
    """Every control's pasted value by argument name; controls that stay unchanged are left out."""
    values = {name: parser(d) for name, parser in PARSERS.items()}
    return {name: value for name, value in values.items() if value is not None}


def fields(components: dict) -> list[tuple]:
    """``infotext_fields`` for the script: ``(component, parser)`` for every argument name in ``components``."""
    return [(components[name], PARSERS[name]) for name in PARSERS if name in components]
