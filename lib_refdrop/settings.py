"""The validated settings of one generation, built from UI values, API arguments or infotext.

Data flows one way: raw arguments -> ``RefDropSettings`` (validated here, once) -> a plan in the engine.
The positional order of ``ARG_NAMES`` is the order of the controls returned by ``ui()`` and therefore the
order of ``alwayson_scripts["RefDrop"]["args"]``; it is part of the public API and only ever grows at the end.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, fields

from .errors import RefDropError

MODES = ("Save", "Use")
BLOCK_GROUPS = ("input", "middle", "output")
# ASCII digits only: "\d" would also take "OUT٠١" (Arabic-Indic digits), which int() reads but the rest does not.
_BLOCK_RE = re.compile(r"(IN|OUT)[0-9]{2}|M00", re.ASCII)
# Number text as a user types it; float() alone would also take "٠.٣" (Arabic-Indic digits) and "1_0".
_NUMBER_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
MAX_SHOWN_CHARS = 60  # of a bad value quoted in a message: values come from API clients and can be huge
DEFAULT_RFG = 0.3  # the paper's App. C: 0.3-0.4 behaves like concatenated attention; 0.2 for simple subjects


@dataclass(frozen=True)
class RefDropSettings:
    enabled: bool = False
    mode: str = "Use"
    rfg: float = DEFAULT_RFG
    reference: str = ""          # Use: which saved reference
    save_name: str = ""          # Save: name of the new reference ("" = automatic)
    disabled_groups: tuple[str, ...] = ()   # subset of BLOCK_GROUPS
    disabled_blocks: tuple[str, ...] = ()   # e.g. ("OUT00", "M00")
    skip_first_up: bool = False  # the paper's Up1 ablation: less pose/background copying
    step_start: float = 0.0      # fraction of the schedule where RFG starts
    step_end: float = 1.0        # ... and ends
    apply_hires: bool = False    # whether RFG also runs in the hires-fix pass
    overwrite: bool = False      # Save: replace an existing reference of the same name
    profile: str = ""            # Save: storage profile ("" = the default from settings)

    @property
    def saving(self) -> bool:
        return self.enabled and self.mode == "Save"

    @property
    def using(self) -> bool:
        return self.enabled and self.mode == "Use"


ARG_NAMES = tuple(f.name for f in fields(RefDropSettings))
_ALIASES = {"rfg_coefficient": "rfg", "coefficient": "rfg", "name": "save_name", "ref": "reference"}


def shown(value) -> str:
    """``repr`` of a user's value for a message, cut short; never raises (messages are built while refusing)."""
    try:
        text = repr(value)
    except Exception:  # an int of over 4300 digits has no decimal repr; deep nesting exhausts the stack
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "..."


def as_bool(name: str, value) -> bool:
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


def as_fraction(name: str, value) -> float:
    number = as_number(value)
    if number is None:
        raise RefDropError(f"RefDrop: '{name}' must be a number, got {shown(value)}")
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise RefDropError(f"RefDrop: '{name}' must lie in [0, 1], got {shown(value)}")
    return number


def _as_list(name: str, value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise RefDropError(f"RefDrop: '{name}' must be a list of names, got {shown(value)}")
        return [v.strip() for v in value if v.strip()]
    raise RefDropError(f"RefDrop: '{name}' must be a list of names, got {shown(value)}")


def parse_rfg(value, name: str = "rfg") -> float:
    rfg = as_number(value)
    if rfg is None:
        raise RefDropError(
            f"RefDrop: RFG coefficient must be a number in [-1, 1], got {shown(value)} (argument '{name}')"
        )
    if not math.isfinite(rfg) or not -1.0 <= rfg <= 1.0:
        raise RefDropError(f"RefDrop: RFG coefficient must lie in [-1, 1], got {shown(value)} (argument '{name}')")
    return rfg


def parse_mode(value) -> str:
    if isinstance(value, str):
        for mode in MODES:
            if value.strip().lower() == mode.lower():
                return mode
    raise RefDropError(f"RefDrop: mode must be one of {', '.join(MODES)}, got {shown(value)}")


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
    for raw in _as_list(name, value):
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
    for raw in _as_list(name, value):
        group = raw.lower()
        if not raw.isascii() or group not in BLOCK_GROUPS:
            raise RefDropError(f"RefDrop: unknown block group {shown(raw)} in '{name}'; use {', '.join(BLOCK_GROUPS)}")
        if group not in groups:
            groups.append(group)
    return tuple(g for g in BLOCK_GROUPS if g in groups)


def _as_text(name: str, value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RefDropError(f"RefDrop: '{name}' must be text, got {shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no file name or PNG text can hold it
        raise RefDropError(f"RefDrop: '{name}' is not valid unicode text: {shown(value)}") from None
    return value.strip()


def _listed(keys) -> str:
    """Argument names for a message: a few, each shown safely (a client may send any number, of any size)."""
    texts = sorted(k if isinstance(k, str) and len(k) <= MAX_SHOWN_CHARS else shown(k) for k in keys)
    more = f" and {len(texts) - 5} more" if len(texts) > 5 else ""
    return ", ".join(texts[:5]) + more


def build(values: dict, spelled: dict | None = None) -> RefDropSettings:
    """Validate a dict of named values (unknown names are an error) into settings.

    ``spelled`` maps an argument to the alias the caller used for it, so that a message names what the user wrote.
    """
    unknown = set(values) - set(ARG_NAMES)
    if unknown:
        raise RefDropError(f"RefDrop: unknown argument(s) {_listed(unknown)}; known: {', '.join(ARG_NAMES)}")
    spelled = spelled or {}

    def label(name: str) -> str:
        return spelled.get(name, name)

    merged = {**asdict(RefDropSettings()), **values}
    settings = RefDropSettings(
        enabled=as_bool(label("enabled"), merged["enabled"]),
        mode=parse_mode(merged["mode"]),
        rfg=parse_rfg(merged["rfg"], label("rfg")),
        reference=_as_text(label("reference"), merged["reference"]),
        save_name=_as_text(label("save_name"), merged["save_name"]),
        disabled_groups=parse_groups(merged["disabled_groups"], label("disabled_groups")),
        disabled_blocks=parse_blocks(merged["disabled_blocks"], label("disabled_blocks")),
        skip_first_up=as_bool(label("skip_first_up"), merged["skip_first_up"]),
        step_start=as_fraction(label("step_start"), merged["step_start"]),
        step_end=as_fraction(label("step_end"), merged["step_end"]),
        apply_hires=as_bool(label("apply_hires"), merged["apply_hires"]),
        overwrite=as_bool(label("overwrite"), merged["overwrite"]),
        profile=_as_text(label("profile"), merged["profile"]),
    )
    if settings.step_start >= settings.step_end:
        raise RefDropError(
            f"RefDrop: the step window is empty: '{label('step_start')}' ({settings.step_start}) must be below "
            f"'{label('step_end')}' ({settings.step_end})"
        )
    return settings


def from_args(args) -> RefDropSettings:
    """Settings from script args: the positional UI order, or one dict of named arguments (API)."""
    args = list(args)
    if args and isinstance(args[0], dict):
        # The host fills the positions after the dict with the panel's defaults (or values from the request's
        # infotext): they are the values of the fields the dict does not name, as in the positional form.
        defaults = dict(zip(ARG_NAMES[1:], args[1:], strict=False))
        named, spelled = _named(args[0])
        return build({**defaults, **named}, spelled)
    if len(args) > len(ARG_NAMES):
        raise RefDropError(f"RefDrop: expected at most {len(ARG_NAMES)} arguments, got {len(args)}")
    return build(dict(zip(ARG_NAMES, args, strict=False)))  # the host may send fewer


def _named(raw: dict) -> tuple[dict, dict]:
    """The named API form: aliases resolved (each argument once), and a non-empty dict means "on".

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
    if named and "enabled" not in named:
        named["enabled"] = True  # {"reference": "x", "rfg": 0.4} clearly means "on"; {} stays off
    return named, spelled


def to_args(settings: RefDropSettings) -> list:
    """The positional form, in UI order (inverse of ``from_args``)."""
    values = asdict(settings)
    out = []
    for name in ARG_NAMES:
        value = values[name]
        out.append(list(value) if isinstance(value, tuple) else value)
    return out
