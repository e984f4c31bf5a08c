"""The validated settings of one generation, built from UI values, API arguments or infotext.

Data flows one way: raw arguments -> ``RefDropSettings`` (validated here, once) -> a plan in the engine.
The positional order of ``ARG_NAMES`` is the order of the controls returned by ``ui()`` and therefore the
order of ``alwayson_scripts["RefDrop"]["args"]``; it is part of the public API and only ever grows at the end.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

from .errors import RefDropError

MODES = ("Save", "Use")
BLOCK_GROUPS = ("input", "middle", "output")
_BLOCK_RE = re.compile(r"^(IN|OUT)(\d{2})$|^M00$")
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


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise RefDropError(f"RefDrop: '{name}' must be true or false, got {value!r}")


def _as_fraction(name: str, value) -> float:
    if isinstance(value, bool):  # float(True) would pass as 1.0
        raise RefDropError(f"RefDrop: '{name}' must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RefDropError(f"RefDrop: '{name}' must be a number, got {value!r}") from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise RefDropError(f"RefDrop: '{name}' must lie in [0, 1], got {value!r}")
    return number


def _as_list(name: str, value) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise RefDropError(f"RefDrop: '{name}' must be a list of names, got {value!r}")
        return [v.strip() for v in value if v.strip()]
    raise RefDropError(f"RefDrop: '{name}' must be a list of names, got {value!r}")


def parse_rfg(value) -> float:
    if isinstance(value, bool):
        raise RefDropError(f"RefDrop: RFG coefficient must be a number in [-1, 1], got {value!r}")
    try:
        rfg = float(value)
    except (TypeError, ValueError):
        raise RefDropError(f"RefDrop: RFG coefficient must be a number in [-1, 1], got {value!r}") from None
    if not math.isfinite(rfg) or not -1.0 <= rfg <= 1.0:
        raise RefDropError(f"RefDrop: RFG coefficient must lie in [-1, 1], got {value!r}")
    return rfg


def parse_mode(value) -> str:
    if isinstance(value, str):
        for mode in MODES:
            if value.strip().lower() == mode.lower():
                return mode
    raise RefDropError(f"RefDrop: mode must be one of {', '.join(MODES)}, got {value!r}")


def parse_blocks(value) -> tuple[str, ...]:
    names = []
    for raw in _as_list("disabled_blocks", value):
        name = raw.upper()
        if name in ("MID", "M0", "MIDDLE"):
            name = "M00"
        if not _BLOCK_RE.match(name) or int(name[-2:]) > 11:
            raise RefDropError(
                f"RefDrop: unknown block {raw!r}; use IN00-IN11, M00 or OUT00-OUT11 (see the Advanced panel)"
            )
        if name not in names:
            names.append(name)
    return tuple(sorted(names, key=block_sort_key))


def block_sort_key(name: str) -> tuple[int, int]:
    order = {"IN": 0, "M": 1, "OUT": 2}
    prefix = name.rstrip("0123456789")
    return order[prefix], int(name[len(prefix):])


def parse_groups(value) -> tuple[str, ...]:
    groups = []
    for raw in _as_list("disabled_groups", value):
        group = raw.lower()
        if group not in BLOCK_GROUPS:
            raise RefDropError(f"RefDrop: unknown block group {raw!r}; use {', '.join(BLOCK_GROUPS)}")
        if group not in groups:
            groups.append(group)
    return tuple(g for g in BLOCK_GROUPS if g in groups)


def _as_text(name: str, value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RefDropError(f"RefDrop: '{name}' must be text, got {value!r}")
    return value.strip()


def build(values: dict) -> RefDropSettings:
    """Validate a dict of named values (unknown names are an error) into settings."""
    unknown = sorted(set(values) - set(ARG_NAMES))
    if unknown:
        raise RefDropError(f"RefDrop: unknown argument(s) {', '.join(unknown)}; known: {', '.join(ARG_NAMES)}")
    merged = {**asdict(RefDropSettings()), **values}
    settings = RefDropSettings(
        enabled=_as_bool("enabled", merged["enabled"]),
        mode=parse_mode(merged["mode"]),
        rfg=parse_rfg(merged["rfg"]),
        reference=_as_text("reference", merged["reference"]),
        save_name=_as_text("save_name", merged["save_name"]),
        disabled_groups=parse_groups(merged["disabled_groups"]),
        disabled_blocks=parse_blocks(merged["disabled_blocks"]),
        skip_first_up=_as_bool("skip_first_up", merged["skip_first_up"]),
        step_start=_as_fraction("step_start", merged["step_start"]),
        step_end=_as_fraction("step_end", merged["step_end"]),
        apply_hires=_as_bool("apply_hires", merged["apply_hires"]),
        overwrite=_as_bool("overwrite", merged["overwrite"]),
        profile=_as_text("profile", merged["profile"]),
    )
    if settings.step_start >= settings.step_end:
        raise RefDropError(
            f"RefDrop: the step window is empty: start {settings.step_start} must be below end {settings.step_end}"
        )
    return settings


def from_args(args) -> RefDropSettings:
    """Settings from script args: the positional UI order, or one dict of named arguments (API)."""
    args = list(args)
    if args and isinstance(args[0], dict):
        # The host fills the positions after the dict with the panel's defaults (or values from the request's
        # infotext): they are the values of the fields the dict does not name, as in the positional form.
        defaults = dict(zip(ARG_NAMES[1:], args[1:], strict=False))
        return build({**defaults, **_named(args[0])})
    if len(args) > len(ARG_NAMES):
        raise RefDropError(f"RefDrop: expected at most {len(ARG_NAMES)} arguments, got {len(args)}")
    return build(dict(zip(ARG_NAMES, args, strict=False)))  # the host may send fewer


def _named(raw: dict) -> dict:
    """The named API form: aliases resolved (each argument once), and a non-empty dict means "on"."""
    named = {}
    for key, value in raw.items():
        name = _ALIASES.get(key, key)
        if name in named:
            raise RefDropError(f"RefDrop: argument '{name}' is given twice (as {key!r} and under another name)")
        named[name] = value
    if named and "enabled" not in named:
        named["enabled"] = True  # {"reference": "x", "rfg": 0.4} clearly means "on"; {} stays off
    return named


def to_args(settings: RefDropSettings) -> list:
    """The positional form, in UI order (inverse of ``from_args``)."""
    values = asdict(settings)
    out = []
    for name in ARG_NAMES:
        value = values[name]
        out.append(list(value) if isinstance(value, tuple) else value)
    return out
