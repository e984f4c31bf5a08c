"""The validated settings of one generation, built from UI values, API arguments or infotext.

Data flows one way: raw arguments -> ``RefDropSettings`` (validated here, once) -> a plan in ``run.py``.
``FIELDS`` is the one table of the arguments: their names, defaults, bounds and validators, their infotext keys and
when webui/infotext.py writes and pastes each; ``ARG_NAMES`` is made from it. ``RefDropSettings`` holds the validated
values, typed, with each reference slot's arguments together in one ``SlotSettings`` (``Field.value`` reads a row's).
The positional order of ``ARG_NAMES`` is the order of the controls returned by ``ui()`` and therefore the order of
``alwayson_scripts["RefDrop"]["args"]``; it is part of the public API and only ever grows at the end.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from .errors import RefDropError
from .families import BLOCK_KINDS
from .images import mask_digest, parse_image, parse_mask

MODES = ("Save", "Use")
# Where a Use slot's reference comes from: a saved reference; the first image of the batch (generated plainly, every
# other image of the generation attends to it); an image given with the request, evaluated alongside every step.
SOURCES = ("reference", "batch", "image")
SAVE_FROM = ("generation", "image")  # what a Save records: this generation, or an image baked into a reference
# The panel's labels of those values. GET /sdapi/v1/script-info lists a radio's labels as its choices, so an API
# client may send a label where a value is meant: the validators take either.
SOURCE_LABELS = {"reference": "Saved reference", "batch": "First of the batch", "image": "Uploaded picture"}
SAVE_FROM_LABELS = {"generation": "This generation", "image": "An uploaded picture"}
SLOTS = (1, 2, 3)  # slot 1 is the reference of the single-reference arguments; 2 and 3 add eq. 7's further ones
BLOCK_GROUPS = tuple(kind.group for kind in BLOCK_KINDS)  # U-Net; Flux's double- and single-stream blocks
# ASCII digits only: "\d" would also take "OUT٠١" (Arabic-Indic digits), which int() reads but the rest does not.
_BLOCK_RE = re.compile(rf"({'|'.join(kind.prefix for kind in BLOCK_KINDS)})[0-9]{{2}}", re.ASCII)
_LAST_BLOCK = {kind.prefix: kind.last for kind in BLOCK_KINDS}
_BLOCK_ORDER = {kind.prefix: n for n, kind in enumerate(BLOCK_KINDS)}
# Number text as a user types it; float() alone would also take "٠.٣" (Arabic-Indic digits) and "1_0".
_NUMBER_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
MAX_SHOWN_CHARS = 60  # of a bad value quoted in a message: values come from API clients and can be huge
DEFAULT_RFG = 0.3  # the paper's App. C: 0.3-0.4 behaves like concatenated attention; 0.2 for simple subjects
_ALIASES = {
    "rfg_coefficient": "rfg", "coefficient": "rfg", "name": "save_name", "ref": "reference",
    **{f"{alias}_1": arg for alias, arg in (("reference", "reference"), ("ref", "reference"), ("rfg", "rfg"),
                                            ("rfg_coefficient", "rfg"), ("coefficient", "rfg"),
                                            ("source", "source"), ("image", "image"), ("mask", "mask"))},
    **{f"{alias}_{k}": f"{arg}_{k}" for k in SLOTS[1:] for alias, arg in (
        ("rfg_coefficient", "rfg"), ("coefficient", "rfg"), ("ref", "reference"))},
}


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


def _one_of(labels: dict[str, str], what: str) -> Callable[[object, str], str]:
    """A validator of one of ``labels``' values, given as the value or as its label (any case)."""
    spelled = {spelling.lower(): value for value, label in labels.items() for spelling in (value, label)}

    def parse(value, name: str) -> str:
        if isinstance(value, str) and value.strip().lower() in spelled:
            return spelled[value.strip().lower()]
        raise RefDropError(f"RefDrop: '{name}' must be one of {', '.join(labels)} ({what}), got {shown(value)}")

    return parse


parse_source = _one_of(SOURCE_LABELS, "where the reference comes from")
parse_save_from = _one_of(SAVE_FROM_LABELS, "what a Save records")


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
    if not _BLOCK_RE.fullmatch(name) or int(name[-2:]) > _LAST_BLOCK[name.rstrip("0123456789")]:
        return None
    return name


_BLOCK_RANGES = ", ".join(f"{k.prefix}00-{k.prefix}{k.last:02d}" if k.last else f"{k.prefix}00" for k in BLOCK_KINDS)


def parse_blocks(value, name: str = "disabled_blocks") -> tuple[str, ...]:
    names = []
    for raw in _names_list(value, name):
        block = _block_name(raw)
        if block is None:
            raise RefDropError(
                f"RefDrop: unknown block {shown(raw)} in '{name}'; use {_BLOCK_RANGES} (see the Advanced panel)"
            )
        if block not in names:
            names.append(block)
    return tuple(sorted(names, key=block_sort_key))


def block_sort_key(name: str) -> tuple[int, int]:
    prefix = name.rstrip("0123456789")
    return _BLOCK_ORDER[prefix], int(name[len(prefix):])


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
# A field with ``applies`` is written only where that says its value had an effect (a slot that is on, a source that
# reads it).
ALWAYS = "always"                  # every RefDrop infotext (the keys that mark one)
IN_USE = "in Use"                  # a Use's, at any value
IN_USE_IF_SET = "in Use if set"
IN_SAVE_IF_SET = "in Save if set"
IF_SET = "if set"                  # a Use's or a Save's
NEVER = "never"
# How pasting an infotext (the paste button, the API's ``infotext``) sets the field's control; where a key is left
# out, the default comes back:
SWITCH = "switch"      # on only when the infotext says so: pasting an image made without RefDrop turns it off
ANY = "any"            # from any RefDrop infotext
USE_ONLY = "Use only"  # from a Use's; a Save's leaves the control as it is, since the value did not apply to it
RESET = "reset"        # to the default from any RefDrop infotext: never carried over from another image
KEEP = "keep"          # never: an image or a mask is not in an infotext, so the control keeps what it holds


@dataclass(frozen=True)
class Field:
    """One argument: its name and default, its validator, its infotext key and how that is written and pasted."""

    arg: str                         # argument name: a place in ARG_NAMES
    default: object
    parse: Callable[[object, str], object]  # a validator above: any JSON value -> valid value or RefDropError
    key: str | None                  # the infotext key (None: never in an infotext)
    written: str                     # ALWAYS, IN_USE, IN_USE_IF_SET, IN_SAVE_IF_SET, IF_SET or NEVER
    pasted: str                      # SWITCH, ANY, USE_ONLY, RESET or KEEP
    also_read: tuple[str, ...] = ()  # keys pasted into the control when its own key is missing or empty
    applies: Callable[[object], bool] | None = None  # settings -> whether the value had an effect (None: always)
    recorded: Callable[[object], object] | None = None  # what the infotext says of the value (None: the value)
    slot: int | None = None          # a reference slot's argument: the slot (1, 2, 3); None: the settings' own
    attribute: str = ""              # its attribute in RefDropSettings or, for a slot's, in SlotSettings
    bounds: tuple[float, float] | None = None  # a number's range, for the controls that offer it

    def __post_init__(self):
        if not self.attribute:
            object.__setattr__(self, "attribute", self.arg)

    def value(self, settings) -> object:
        """This argument's value in ``settings``."""
        holder = settings if self.slot is None else settings.slot_values[self.slot - 1]
        return getattr(holder, self.attribute)


# -- when a value has an effect (the ``applies`` of the rows below) ----------------------------------------------

def slot_is_on(k: int) -> Callable[[object], bool]:
    """Slot 1 is on in every Use; slots 2 and 3 when their coefficient is not 0."""
    return lambda settings: k == 1 or settings.slot_values[k - 1].rfg != 0


def slot_reads_the_store(k: int) -> Callable[[object], bool]:
    on = slot_is_on(k)
    return lambda settings: on(settings) and settings.slot_values[k - 1].source == "reference"


def an_image_is_evaluated(settings) -> bool:
    """A Save from an image, or a Use with a slot on whose source is a live image: where ``image_prompt`` counts."""
    if settings.mode == "Save":
        return settings.save_from == "image"
    return any(slot_is_on(k)(settings) and settings.slot_values[k - 1].source == "image" for k in SLOTS)


def slot_arg(name: str, k: int) -> str:
    """The argument of slot ``k``: slot 1's are the single-reference arguments (``rfg``), the others ``rfg_2``..."""
    return name if k == 1 else f"{name}_{k}"


RFG_BOUNDS = (-1.0, 1.0)
FRACTION_BOUNDS = (0.0, 1.0)


def _slot_field(k: int, attribute: str, default, parse, key_written_pasted: tuple, **more) -> Field:
    key, written, pasted = key_written_pasted
    return Field(slot_arg(attribute, k), default, parse, key, written, pasted, slot=k, attribute=attribute, **more)


def _more_slot_fields(k: int) -> tuple[Field, ...]:
    """Slot ``k`` (2, 3): written in a Use only while the slot is on, pasted from a Use only (left out: off)."""
    return (
        _slot_field(k, "reference", "", parse_text, (f"refdrop_reference_{k}", IN_USE_IF_SET, USE_ONLY),
                    applies=slot_reads_the_store(k)),
        _slot_field(k, "rfg", 0.0, parse_rfg, (f"refdrop_rfg_{k}", IN_USE_IF_SET, USE_ONLY),  # 0 = the slot is off
                    bounds=RFG_BOUNDS),
        _slot_field(k, "source", "reference", parse_source, (f"refdrop_source_{k}", IN_USE_IF_SET, USE_ONLY),
                    applies=slot_is_on(k)),
        _slot_field(k, "image", None, parse_image, (None, NEVER, KEEP)),
        _slot_field(k, "mask", None, parse_mask, (f"refdrop_mask_{k}", IN_USE_IF_SET, KEEP), applies=slot_is_on(k),
                    recorded=mask_digest),
    )


# The keys are those written since the first release, so that every infotext keeps pasting; two break the
# ``refdrop_<arg>`` pattern (``refdrop_saved_as``, ``refdrop_hires``) and API clients read ``refdrop_saved_as``.
FIELDS = (
    Field("enabled", False, parse_bool, "refdrop_enabled", ALWAYS, SWITCH),
    Field("mode", "Use", parse_mode, "refdrop_mode", ALWAYS, ANY),
    _slot_field(1, "rfg", DEFAULT_RFG, parse_rfg, ("refdrop_rfg", IN_USE, USE_ONLY), bounds=RFG_BOUNDS),
    # Use: which saved reference. A Save's name pastes into it, ready to use the reference that image made.
    _slot_field(1, "reference", "", parse_text, ("refdrop_reference", IN_USE_IF_SET, ANY),
                also_read=("refdrop_saved_as",), applies=slot_reads_the_store(1)),
    # Save: the name of the new reference ("" = automatic); the infotext holds the name it was saved as.
    Field("save_name", "", parse_text, "refdrop_saved_as", IN_SAVE_IF_SET, RESET),
    Field("disabled_groups", (), parse_groups, "refdrop_disabled_groups", IN_USE_IF_SET, USE_ONLY),  # of BLOCK_GROUPS
    Field("disabled_blocks", (), parse_blocks, "refdrop_disabled_blocks", IN_USE_IF_SET, USE_ONLY),  # ("OUT00",...)
    # The paper's Up1 ablation: less pose/background copying.
    Field("skip_first_up", False, parse_bool, "refdrop_skip_first_up", IN_USE_IF_SET, USE_ONLY),
    # The fractions of the schedule where RFG starts and ends.
    Field("step_start", 0.0, parse_fraction, "refdrop_step_start", IN_USE_IF_SET, USE_ONLY, bounds=FRACTION_BOUNDS),
    Field("step_end", 1.0, parse_fraction, "refdrop_step_end", IN_USE_IF_SET, USE_ONLY, bounds=FRACTION_BOUNDS),
    Field("apply_hires", False, parse_bool, "refdrop_hires", IN_USE_IF_SET, USE_ONLY),  # RFG in the hires-fix pass
    Field("overwrite", False, parse_bool, None, NEVER, RESET),  # Save: replace a reference of the same name
    # Save: the storage profile ("" = the default from the Settings page).
    Field("profile", "", parse_text, "refdrop_profile", IN_SAVE_IF_SET, ANY),
    # Use: where slot 1's reference comes from (SOURCES).
    _slot_field(1, "source", "reference", parse_source, ("refdrop_source", IN_USE_IF_SET, USE_ONLY)),
    # Save: what it records (SAVE_FROM).
    Field("save_from", "generation", parse_save_from, "refdrop_save_from", IN_SAVE_IF_SET, ANY),
    # The image of slot 1 (source "image") and of a Save from an image; never in an infotext.
    _slot_field(1, "image", None, parse_image, (None, NEVER, KEEP)),
    # The text an image is evaluated with (a Save from an image, a live image of any slot).
    Field("image_prompt", "", parse_text, "refdrop_image_prompt", IF_SET, ANY, applies=an_image_is_evaluated),
    # Slot 1's subject mask (white = attended); the infotext records its digest, never the mask.
    _slot_field(1, "mask", None, parse_mask, ("refdrop_mask", IN_USE_IF_SET, KEEP), recorded=mask_digest),
    *_more_slot_fields(2),
    *_more_slot_fields(3),
)
ARG_NAMES = tuple(f.arg for f in FIELDS)
FIELD_OF = {f.arg: f for f in FIELDS}  # argument name -> its row: a control's default and bounds come from here


@dataclass(frozen=True)
class SlotSettings:
    """One reference of a Use (eq. 7's j): where it comes from and with which coefficient."""

    index: int                 # 1, 2 or 3
    source: str = "reference"  # one of SOURCES
    reference: str = ""        # source "reference": the saved reference's name
    rfg: float = 0.0           # its coefficient c_j (0: slots 2 and 3 are off)
    image: object = field(default=None, hash=False)  # source "image": the image (RGB PIL image)
    mask: object = field(default=None, hash=False)   # the subject mask ("L" PIL image, 0 or 255) or None


@dataclass(frozen=True)
class RefDropSettings:
    """The validated values of one generation (made by ``build``): the arguments of ``FIELDS``, each reference
    slot's together in ``slot_values``."""

    enabled: bool = False
    mode: str = "Use"                     # one of MODES
    save_name: str = ""                   # Save: the new reference's name ("" = automatic)
    disabled_groups: tuple[str, ...] = ()  # of BLOCK_GROUPS
    disabled_blocks: tuple[str, ...] = ()  # block names: "OUT00", "M00", "D03"...
    skip_first_up: bool = False
    step_start: float = 0.0               # the fractions of the schedule where RFG starts and ends
    step_end: float = 1.0
    apply_hires: bool = False
    overwrite: bool = False               # Save: replace a reference of the same name
    profile: str = ""                     # Save: the storage profile ("" = the Settings default)
    save_from: str = "generation"         # Save: one of SAVE_FROM
    image_prompt: str = ""                # what an image is evaluated with
    slot_values: tuple[SlotSettings, ...] = (SlotSettings(1, rfg=DEFAULT_RFG), SlotSettings(2), SlotSettings(3))

    # Slot 1's values are the single-reference arguments, and a Save from an image reads slot 1's image.
    @property
    def rfg(self) -> float:
        return self.slot_values[0].rfg

    @property
    def reference(self) -> str:
        return self.slot_values[0].reference

    @property
    def source(self) -> str:
        return self.slot_values[0].source

    @property
    def image(self):
        return self.slot_values[0].image

    @property
    def mask(self):
        return self.slot_values[0].mask

    @property
    def saving(self) -> bool:
        return self.enabled and self.mode == "Save"

    @property
    def using(self) -> bool:
        return self.enabled and self.mode == "Use"

    @property
    def slots(self) -> tuple[SlotSettings, ...]:
        """The slots of a Use that are on: slot 1 always (its coefficient may be 0), 2 and 3 when their
        coefficient is not 0. Empty unless this is a Use."""
        if not self.using:
            return ()
        return tuple(slot for slot in self.slot_values if slot_is_on(slot.index)(self))


def settings_of(values: dict) -> RefDropSettings:
    """Settings from already valid values by argument name (``ARG_NAMES``); missing ones take their default."""
    own, per_slot = {}, {k: {} for k in SLOTS}
    for f in FIELDS:
        if f.arg in values:
            (own if f.slot is None else per_slot[f.slot])[f.attribute] = values[f.arg]
    defaults = RefDropSettings().slot_values
    return RefDropSettings(**own, slot_values=tuple(
        replace(defaults[k - 1], **per_slot[k]) for k in SLOTS))


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
    settings = settings_of({
        f.arg: f.parse(values.get(f.arg, f.default), spelled.get(f.arg, f.arg)) for f in FIELDS
    })
    if settings.step_start >= settings.step_end:
        start, end = spelled.get("step_start", "step_start"), spelled.get("step_end", "step_end")
        raise RefDropError(
            f"RefDrop: the step window is empty: '{start}' ({settings.step_start}) must be below "
            f"'{end}' ({settings.step_end})"
        )
    as_spelled = partial(_as_spelled, spelled)
    if settings.using:
        _check_slots(settings, as_spelled)
    if settings.saving:
        _check_save(settings, as_spelled)
    return settings


def _as_spelled(spelled: dict, arg: str) -> str:
    return spelled.get(arg, arg)


def _check_save(settings: RefDropSettings, spelled: Callable[[str], str]) -> None:
    if settings.save_from == "image" and settings.image is None:
        raise RefDropError(
            f"RefDrop: a Save from an image needs an image, and none was given ('{spelled('save_from')}' is 'image',"
            f" '{spelled('image')}' is empty)"
        )


def _check_slots(settings: RefDropSettings, spelled: Callable[[str], str]) -> None:
    """The slots that are on can run: a reference or an image where their source needs one, one batch source.

    Slot 1 without a reference is refused when the Use is planned (run.py), with the references there are.
    """
    for slot in settings.slots:
        arg = partial(slot_arg, k=slot.index)
        if slot.index > 1 and slot.source == "reference" and not slot.reference:
            raise RefDropError(
                f"RefDrop: slot {slot.index} is on ({spelled(arg('rfg'))} = {slot.rfg}) but no reference is selected"
                f" ('{spelled(arg('reference'))}' is empty)"
            )
        if slot.source == "image" and slot.image is None:
            raise RefDropError(
                f"RefDrop: slot {slot.index}'s source is an image but no image was given ('{spelled(arg('source'))}'"
                f" is 'image', '{spelled(arg('image'))}' is empty)"
            )
    batch = [slot.index for slot in settings.slots if slot.source == "batch"]
    if len(batch) > 1:
        names = ", ".join(f"'{spelled(slot_arg('source', k))}'" for k in batch)
        raise RefDropError(
            f"RefDrop: only one slot can take the first image of the batch; slots {_and(batch)} have source "
            f"'batch' ({names})"
        )


def _and(numbers: list[int]) -> str:
    *first, last = map(str, numbers)
    return f"{', '.join(first)} and {last}" if first else last


def _check_overrides_reach_a_slot(settings: RefDropSettings, overrides: dict) -> None:
    """An X/Y/Z value for a slot that is off would give every cell the same image: refused, naming the slot."""
    if not settings.using:
        return
    for k in SLOTS[1:]:
        for name in (slot_arg("reference", k), slot_arg("source", k)):
            rfg = slot_arg("rfg", k)
            if name in overrides and rfg not in overrides and not slot_is_on(k)(settings):
                raise RefDropError(
                    f"RefDrop: an X/Y/Z axis sets '{name}', but slot {k} is off ({rfg} = 0), so no cell would "
                    f"use it; give slot {k} a coefficient under More references, or put '{rfg}' on another axis"
                )


def from_args(args, overrides: dict | None = None) -> RefDropSettings:
    """Settings from script args: the positional UI order, or one dict of named arguments (API).

    ``overrides`` (argument name -> raw value, e.g. an X/Y/Z cell's) replace the arguments' values before anything
    is validated, so the values are validated once, together.
    """
    values, spelled = _raw_values(list(args))
    overrides = overrides or {}
    spelled = {name: alias for name, alias in spelled.items() if name not in overrides}
    settings = build({**values, **overrides}, spelled)
    _check_overrides_reach_a_slot(settings, overrides)
    return settings


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
    values = (f.value(settings) for f in FIELDS)
    return [list(value) if isinstance(value, tuple) else value for value in values]
