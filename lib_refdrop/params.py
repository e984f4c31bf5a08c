"""The validated settings of one generation, built from UI values, API arguments or infotext.

Data flows one way: raw arguments -> ``RefDropSettings`` (validated here, once) -> a plan in the engine.
``FIELDS`` is the one table of the arguments: their names, defaults and validators, their infotext keys and when
webui/infotext.py writes and pastes each. ``RefDropSettings`` (one attribute per row) and ``ARG_NAMES`` are made from
it. The positional order of ``ARG_NAMES`` is the order of the controls returned by ``ui()`` and therefore the
order of ``alwayson_scripts["RefDrop"]["args"]``; it is part of the public API and only ever grows at the end.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass

from .errors import RefDropError

MODES = ("Save", "Use")
BLOCK_GROUPS = ("input", "middle", "output")
# ASCII digits only: "\d" would also take "OUT٠١" (Arabic-Indic digits), which int() reads but the rest does not.
_BLOCK_RE = re.compile(r"(IN|OUT)[0-9]{2}|M00", re.ASCII)
# Number text as a user types it; float() alone would also take "٠.٣" (Arabic-Indic digits) and "1_0".
_NUMBER_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
MAX_SHOWN_CHARS = 60  # of a bad value quoted in a message: values come from API clients and can be huge
DEFAULT_RFG = 0.3  # the paper's App. C: 0.3-0.4 behaves like concatenated attention; 0.2 for simple subjects
_ALIASES = {"rfg_coefficient": "rfg", "coefficient": "rfg", "name": "save_name", "ref": "reference"}


def shown(value) -> str:
    """``repr`` of a user's value for a message, cut short; never raises (messages are built while refusing)."""
    try:
        text = repr(value)
    except Exception:  # an int of over 4300 digits has no decimal repr; deep nesting exhausts the stack
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "..."


# -- validators: (value, name) -> the valid value, or RefDropError naming ``name``; for any JSON value -------------

def parse_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise RefDropError(f"RefDrop: '{name}' must be true or false, got {shown(value)}")


def as_number(value) -> float | None:
    """A float (maybe inf or nan) from a real number or ASCII number text; None if ``value`` is neither."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        return None  # float(True) would pass as 1.0, float(b"0.3") as 0.3
    if isinstance(value, str):
        value = value.strip()
        if not _NUMBER_RE.fullmatch(value):
            return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float range (10**400 in JSON) is a number, just far out of range
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        return None


def parse_fraction(value, name: str) -> float:
    number = as_number(value)
    if number is None:
        raise RefDropError(f"RefDrop: '{name}' must be a number, got {shown(value)}")
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise RefDropError(f"RefDrop: '{name}' must lie in [0, 1], got {shown(value)}")
    return number


def parse_rfg(value, name: str = "rfg") -> float:
    rfg = as_number(value)
    if rfg is None:
        raise RefDropError(
            f"RefDrop: RFG coefficient must be a number in [-1, 1], got {shown(value)} (argument '{name}')"
        )
    if not math.isfinite(rfg) or not -1.0 <= rfg <= 1.0:
        raise RefDropError(f"RefDrop: RFG coefficient must lie in [-1, 1], got {shown(value)} (argument '{name}')")
    return rfg


def parse_mode(value, name: str = "mode") -> str:
    if isinstance(value, str):
        for mode in MODES:
            if value.strip().lower() == mode.lower():
                return mode
    raise RefDropError(f"RefDrop: {name} must be one of {', '.join(MODES)}, got {shown(value)}")


def parse_text(value, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RefDropError(f"RefDrop: '{name}' must be text, got {shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no file name or PNG text can hold it
        raise RefDropError(f"RefDrop: '{name}' is not valid unicode text: {shown(value)}") from None
    return value.strip()


def _names_list(value, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise RefDropError(f"RefDrop: '{name}' must be a list of names, got {shown(value)}")
        return [v.strip() for v in value if v.strip()]
    raise RefDropError(f"RefDrop: '{name}' must be a list of names, got {shown(value)}")


def _block_name(raw: str) -> str | None:
    """The canonical name of a block ("out3" is no block, "mid" is M00); None if ``raw`` names none."""
    if not raw.isascii():  # str.upper() maps some letters into ASCII ("ın01" -> "IN01")
        return None
    name = raw.upper()
    if name in ("MID", "M0", "MIDDLE"):
        name = "M00"
    if not _BLOCK_RE.fullmatch(name) or int(name[-2:]) > 11:
        return None
    return name


def parse_blocks(value, name: str = "disabled_blocks") -> tuple[str, ...]:
    names = []
    for raw in _names_list(value, name):
        block = _block_name(raw)
        if block is None:
            raise RefDropError(
                f"RefDrop: unknown block {shown(raw)} in '{name}'; use IN00-IN11, M00 or OUT00-OUT11 "
                "(see the Advanced panel)"
            )
        if block not in names:
            names.append(block)
    return tuple(sorted(names, key=block_sort_key))


def block_sort_key(name: str) -> tuple[int, int]:
    order = {"IN": 0, "M": 1, "OUT": 2}
    prefix = name.rstrip("0123456789")
    return order[prefix], int(name[len(prefix):])


def parse_groups(value, name: str = "disabled_groups") -> tuple[str, ...]:
    groups = []
    for raw in _names_list(value, name):
        group = raw.lower()
        if not raw.isascii() or group not in BLOCK_GROUPS:
            raise RefDropError(f"RefDrop: unknown block group {shown(raw)} in '{name}'; use {', '.join(BLOCK_GROUPS)}")
        if group not in groups:
            groups.append(group)
    return tuple(g for g in BLOCK_GROUPS if g in groups)


# -- the table ------------------------------------------------------------------------------------------------

# When infotext.write puts a field into the infotext of a generation with RefDrop on. "If set": unless at the
# default, since an empty value would not survive the host's infotext parser and a key left out pastes as the default.
ALWAYS = "always"                  # every RefDrop infotext (the keys that mark one)
IN_USE = "in Use"                  # a Use's, at any value
IN_USE_IF_SET = "in Use if set"
IN_SAVE_IF_SET = "in Save if set"
NEVER = "never"
# How pasting an infotext (the paste button, the API's ``infotext``) sets the field's control; where a key is left
# out, the default comes back:
SWITCH = "switch"      # on only when the infotext says so: pasting an image made without RefDrop turns it off
ANY = "any"            # from any RefDrop infotext
USE_ONLY = "Use only"  # from a Use's; a Save's leaves the control as it is, since the value did not apply to it
RESET = "reset"        # to the default from any RefDrop infotext: never carried over from another image


@dataclass(frozen=True)
class Field:
    """One argument: its name and default, its validator, its infotext key and how that is written and pasted."""

    arg: str                         # argument name: a RefDropSettings attribute and a place in ARG_NAMES
    default: object
    parse: Callable[[object, str], object]  # a validator above: any JSON value -> valid value or RefDropError
    key: str | None                  # the infotext key (None: never in an infotext)
    written: str                     # ALWAYS, IN_USE, IN_USE_IF_SET, IN_SAVE_IF_SET or NEVER
    pasted: str                      # SWITCH, ANY, USE_ONLY or RESET
    also_read: tuple[str, ...] = ()  # keys pasted into the control when its own key is missing or empty


# The keys are those written since the first release, so that every infotext keeps pasting; two break the
# ``refdrop_<arg>`` pattern (``refdrop_saved_as``, ``refdrop_hires``) and API clients read ``refdrop_saved_as``.
FIELDS = (
    Field("enabled", False, parse_bool, "refdrop_enabled", ALWAYS, SWITCH),
    Field("mode", "Use", parse_mode, "refdrop_mode", ALWAYS, ANY),
    Field("rfg", DEFAULT_RFG, parse_rfg, "refdrop_rfg", IN_USE, USE_ONLY),
    # Use: which saved reference. A Save's name pastes into it, ready to use the reference that image made.
    Field("reference", "", parse_text, "refdrop_reference", IN_USE_IF_SET, ANY, also_read=("refdrop_saved_as",)),
    # Save: the name of the new reference ("" = automatic); the infotext holds the name it was saved as.
    Field("save_name", "", parse_text, "refdrop_saved_as", IN_SAVE_IF_SET, RESET),
    Field("disabled_groups", (), parse_groups, "refdrop_disabled_groups", IN_USE_IF_SET, USE_ONLY),  # of BLOCK_GROUPS
    Field("disabled_blocks", (), parse_blocks, "refdrop_disabled_blocks", IN_USE_IF_SET, USE_ONLY),  # ("OUT00",...)
    # The paper's Up1 ablation: less pose/background copying.
    Field("skip_first_up", False, parse_bool, "refdrop_skip_first_up", IN_USE_IF_SET, USE_ONLY),
    # The fractions of the schedule where RFG starts and ends.
    Field("step_start", 0.0, parse_fraction, "refdrop_step_start", IN_USE_IF_SET, USE_ONLY),
    Field("step_end", 1.0, parse_fraction, "refdrop_step_end", IN_USE_IF_SET, USE_ONLY),
    Field("apply_hires", False, parse_bool, "refdrop_hires", IN_USE_IF_SET, USE_ONLY),  # RFG in the hires-fix pass
    Field("overwrite", False, parse_bool, None, NEVER, RESET),  # Save: replace a reference of the same name
    # Save: the storage profile ("" = the default from the Settings page).
    Field("profile", "", parse_text, "refdrop_profile", IN_SAVE_IF_SET, ANY),
)
ARG_NAMES = tuple(f.arg for f in FIELDS)


class _Settings:
    """The validated values of one generation, one attribute per ``FIELDS`` row (made by ``build``)."""

    @property
    def saving(self) -> bool:
        return self.enabled and self.mode == "Save"

    @property
    def using(self) -> bool:
        return self.enabled and self.mode == "Use"


RefDropSettings = make_dataclass(
    "RefDropSettings", [(f.arg, type(f.default), field(default=f.default)) for f in FIELDS], bases=(_Settings,),
    frozen=True, namespace={"__module__": __name__, "__doc__": _Settings.__doc__},
)
DEFAULTS = RefDropSettings()


# -- building settings from raw arguments -----------------------------------------------------------------------

def _listed(keys) -> str:
    """Argument names for a message: a few, each shown safely (a client may send any number, of any size)."""
    texts = sorted(k if isinstance(k, str) and len(k) <= MAX_SHOWN_CHARS else shown(k) for k in keys)
    more = f" and {len(texts) - 5} more" if len(texts) > 5 else ""
    return ", ".join(texts[:5]) + more


def build(values: dict, spelled: dict | None = None) -> RefDropSettings:
    """Validate a dict of named values (unknown names are an error; missing ones take the default) into settings.

    ``spelled`` maps an argument to the alias the caller used for it, so that a message names what the user wrote.
    """
    unknown = set(values) - set(ARG_NAMES)
    if unknown:
        raise RefDropError(f"RefDrop: unknown argument(s) {_listed(unknown)}; known: {', '.join(ARG_NAMES)}")
    spelled = spelled or {}
    settings = RefDropSettings(**{
        f.arg: f.parse(values.get(f.arg, f.default), spelled.get(f.arg, f.arg)) for f in FIELDS
    })
    if settings.step_start >= settings.step_end:
        start, end = spelled.get("step_start", "step_start"), spelled.get("step_end", "step_end")
        raise RefDropError(
            f"RefDrop: the step window is empty: '{start}' ({settings.step_start}) must be below "
            f"'{end}' ({settings.step_end})"
        )
    return settings


def from_args(args, overrides: dict | None = None) -> RefDropSettings:
    """Settings from script args: the positional UI order, or one dict of named arguments (API).

    ``overrides`` (argument name -> raw value, e.g. an X/Y/Z cell's) replace the arguments' values before anything
    is validated, so the values are validated once, together.
    """
    values, spelled = _raw_values(list(args))
    overrides = overrides or {}
    spelled = {name: alias for name, alias in spelled.items() if name not in overrides}
    return build({**values, **overrides}, spelled)


def wants_refdrop(args) -> bool:
    """Whether raw script args ask for RefDrop, valid or not: when they do, their errors are worth reporting.

    An "enabled" that is neither true nor false asks for it too, so that its error is reported.
    """
    args = list(args)
    try:
        return parse_bool(_raw_enabled(args[0]) if args else False, "enabled")
    except RefDropError:
        return True


def for_generation(args, overrides: dict | None = None) -> RefDropSettings:
    """The settings of one generation from its script args and X/Y/Z ``overrides``, validated once.

    Invalid arguments that do not ask for RefDrop (``wants_refdrop``) give RefDrop off: a request that does not use
    RefDrop never fails because of it. RefDropError when they ask for it, or when a RefDrop axis set ``overrides``.
    """
    try:
        return from_args(args, overrides)
    except RefDropError:
        if overrides or wants_refdrop(args):
            raise
        return DEFAULTS


def _raw_values(args: list) -> tuple[dict, dict]:
    """The raw values of script args by argument name, and the alias used for each argument given under one."""
    if args and isinstance(args[0], dict):
        # The host fills the positions after the dict with the panel's defaults (or values from the request's
        # infotext): they are the values of the fields the dict does not name, as in the positional form.
        defaults = dict(zip(ARG_NAMES[1:], args[1:], strict=False))
        named, spelled = _named(args[0])
        return {**defaults, **named}, spelled
    if len(args) > len(ARG_NAMES):
        raise RefDropError(f"RefDrop: expected at most {len(ARG_NAMES)} arguments, got {len(args)}")
    return dict(zip(ARG_NAMES, args, strict=False)), {}  # the host may send fewer


def _raw_enabled(first):
    """The raw "enabled" of the first script arg; a dict of named arguments that names anything means "on"."""
    if isinstance(first, dict):
        return first.get("enabled", bool(first))  # {"reference": "x", "rfg": 0.4} clearly means "on"; {} stays off
    return first


def _named(raw: dict) -> tuple[dict, dict]:
    """The named API form: aliases resolved (each argument once), and "enabled" as ``_raw_enabled`` reads it.

    Returns the values by argument name and, for arguments given under an alias, the alias used.
    """
    named, spelled = {}, {}
    for key, value in raw.items():
        name = _ALIASES.get(key, key)
        if name in named:
            raise RefDropError(
                f"RefDrop: argument '{name}' is given twice (as {shown(key)} and under another name)"
            )
        named[name] = value
        if name != key:
            spelled[name] = key
    named["enabled"] = _raw_enabled(raw)
    return named, spelled


def to_args(settings: RefDropSettings) -> list:
    """The positional form, in UI order (inverse of ``from_args``): what the panel sends."""
    values = (getattr(settings, name) for name in ARG_NAMES)
    return [list(value) if isinstance(value, tuple) else value for value in values]
