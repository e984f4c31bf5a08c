"""RefDrop's keys in the image infotext, and reading them back for the paste button and the API's ``infotext``.

Which keys there are, when each is written and how each is pasted is the ``FIELDS`` table in params.py; this
module applies it. Keys are snake_case and prefixed, like the built-ins' ``kohya_hrfix_*``.

Writing (into ``p.extra_generation_params``): nothing when RefDrop is off. A Save writes only what applies to a
Save (mode, the name it saved as, the profile; from an image: ``refdrop_save_from`` and the image prompt); a Use
writes the Use values that had an effect: slot 1's reference only when its source is a saved reference, slots 2
and 3 only while they are on (``refdrop_rfg_2`` not 0). Images are never written; a mask is recorded by its digest
(``refdrop_mask: 3f2a9c01be47``), which says which mask was used and is never pasted.

Pasting: every control is filled by a function of the parsed params rather than by a plain key. The host gives a
plain key's text to ``type(component.value)`` (``paste_value`` in tests/support/fakehost/host/modules/infotext_utils.py
copies it), which would make a CheckboxGroup's list out of the text's characters; it would leave a control as it
was when its key is missing, where a key left out at its default must give the default back; and it would paste a
bad value as it is. Rules: an infotext without RefDrop keys turns RefDrop off and leaves the other controls alone.
A Use infotext sets every control. A Save infotext sets the mode and the reference dropdown (to its
``refdrop_saved_as``) and leaves the Use-only controls (RFG, groups, blocks, skip, step window, hires) as they are:
they did not apply to that image, so the user's own Use values survive; a ``refdrop_rfg`` in an older Save
infotext is ignored for the same reason. The save name is left empty (automatic), so pasting and generating again
does not collide with the reference that image created. A bad value leaves its control unchanged. The image
and mask controls are never pasted (their parsers answer None, which the host reads as "leave it"): they keep
what they hold.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from ..errors import RefDropError
from ..params import (
    ALWAYS,
    FIELDS,
    IF_SET,
    IN_SAVE_IF_SET,
    IN_USE,
    IN_USE_IF_SET,
    KEEP,
    NEVER,
    RESET,
    SWITCH,
    USE_ONLY,
    Field,
    RefDropSettings,
)

PREFIX = "refdrop_"
_MODE = next(f for f in FIELDS if f.arg == "mode")
_WRITTEN = {  # (mode of the generation, value differs from the default) -> written?
    ALWAYS: lambda mode, changed: True,
    IN_USE: lambda mode, changed: mode == "Use",
    IN_USE_IF_SET: lambda mode, changed: mode == "Use" and changed,
    IN_SAVE_IF_SET: lambda mode, changed: mode == "Save" and changed,
    IF_SET: lambda mode, changed: changed,
    NEVER: lambda mode, changed: False,
}


def clear(params: dict) -> None:
    """Remove every RefDrop key: X/Y/Z cells share one ``extra_generation_params`` dict (``copy(p)`` is shallow)."""
    for key in [k for k in params if isinstance(k, str) and k.startswith(PREFIX)]:
        del params[key]


def write(params: dict, settings: RefDropSettings, saved_as: str | None = None, profile: str | None = None) -> None:
    """Describe ``settings`` in ``params`` (replacing earlier RefDrop keys); nothing when RefDrop is off.

    A Save describes the name it saved as and the profile it used, when the settings left them to be chosen.
    """
    clear(params)
    if not settings.enabled:
        return
    settings = replace(settings, save_name=saved_as or settings.save_name, profile=profile or settings.profile)
    for field in FIELDS:
        value = field.value(settings)
        if _WRITTEN[field.written](settings.mode, value != field.default) and _applies(field, settings):
            params[field.key] = _recorded(field, value)


def _applies(field: Field, settings: RefDropSettings) -> bool:
    return field.applies is None or field.applies(settings)


def _recorded(field: Field, value):
    if field.recorded is not None:
        return field.recorded(value)
    return ", ".join(value) if isinstance(value, tuple) else value


# -- reading back -----------------------------------------------------------------------------------------
# The host calls the parsers while pasting, with whatever the infotext (or another extension) put in the dict:
# each returns a valid value or None (the control keeps its value) and never raises, since an exception would
# stop the whole paste.

def _is_refdrop(d) -> bool:
    return isinstance(d, dict) and any(f.key in d for f in FIELDS if f.written == ALWAYS)


def _raw(field: Field, d: dict):
    """The infotext's value for ``field``: its own key, or the keys it also reads when that is empty."""
    value = d.get(field.key, field.default)
    for key in field.also_read:
        value = value or d.get(key) or field.default
    return value


def _checked(field: Field, value):
    """``value`` checked by the field's validator; None if invalid. Lists for the CheckboxGroups."""
    try:
        value = field.parse(value, field.key)
    except RefDropError:
        return None
    return list(value) if isinstance(value, tuple) else value


def _pasted(field: Field, d: dict):
    """The value pasted into the control of ``field`` from the parsed infotext ``d``, or None to leave it."""
    if field.pasted == KEEP:
        return None
    if not _is_refdrop(d):
        return False if field.pasted == SWITCH else None
    if field.pasted == RESET:
        return _checked(field, field.default)
    if field.pasted == USE_ONLY and _checked(_MODE, _raw(_MODE, d)) == "Save":
        return None
    value = _checked(field, _raw(field, d))  # ANY, USE_ONLY and SWITCH
    return value is True if field.pasted == SWITCH else value


PARSERS = {field.arg: partial(_pasted, field) for field in FIELDS}  # argument name -> paste target


def parse(d: dict) -> dict:
    """Every control's pasted value by argument name; controls that stay unchanged are left out."""
    values = {name: parser(d) for name, parser in PARSERS.items()}
    return {name: value for name, value in values.items() if value is not None}


def fields(components: dict) -> list[tuple]:
    """``infotext_fields`` for the script: ``(component, parser)`` for every argument name in ``components``."""
    return [(components[name], PARSERS[name]) for name in PARSERS if name in components]
