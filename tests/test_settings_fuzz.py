"""Every argument, given any JSON value, is either accepted or refused with RefDropError naming it; the infotext
paste parsers never raise.

An exception of another type escaping validation is swallowed by the host, which then generates a plain image with
RefDrop silently off; an exception while pasting stops the paste of every field.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lib_refdrop.errors import RefDropError
from lib_refdrop.params import (
    _ALIASES,
    ARG_NAMES,
    BLOCK_GROUPS,
    FIELDS,
    MODES,
    SAVE_FROM,
    SOURCES,
    RefDropSettings,
    from_args,
    parse_blocks,
    parse_groups,
    parse_rfg,
    to_args,
)
from lib_refdrop.webui import infotext

DEFAULT_ARGS = to_args(RefDropSettings())  # what the panel sends when nothing was changed
# Beyond float range; 10**5000 also has no decimal repr (built lazily: hypothesis describes strategies with repr).
HUGE_INTS = st.builds(lambda sign, exponent: sign * 10**exponent, st.sampled_from([1, -1]),
                      st.sampled_from([309, 400, 5000]))
SPECIAL_TEXT = st.sampled_from([
    "OUT٠١", "IN０１", "OUT1١", "ın01", "İnput", "mid", "OUT01, M00", "٠.٣", "0_3", " 0.3 ", "1e400", "-1e400",
    "nan", "inf", "-Infinity", "True", "off", "Use", "save", "", " ", "\x00", "a\ud800", "1" * 5000, "x" * 100_000,
])
UNICODE_DIGITS = st.text(st.characters(categories=["Nd"]), min_size=1, max_size=3)
BLOCKISH_TEXT = st.builds(lambda prefix, digits: prefix + digits, st.sampled_from(["IN", "OUT", "M", "out", ""]),
                          UNICODE_DIGITS)
SURROGATE_TEXT = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
SCALARS = (st.none() | st.booleans() | st.integers() | HUGE_INTS | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | SPECIAL_TEXT | BLOCKISH_TEXT | SURROGATE_TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
SPELLINGS = st.sampled_from(sorted({*ARG_NAMES, *_ALIASES}))  # every name the named form accepts
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def accepted_or_refused_naming(args, label: str) -> None:
    """The only two outcomes allowed: valid settings, or RefDrop's own error that names ``label``."""
    try:
        result = from_args(args)
    except RefDropError as exc:
        message = str(exc)
        assert message.startswith("RefDrop: "), message
        assert label in message, f"{label!r} not named in {message!r}"
        return
    assert isinstance(result, RefDropSettings)
    assert from_args(to_args(result)) == result  # what was accepted is itself valid input


@FUZZ
@given(index=st.integers(0, len(ARG_NAMES) - 1), value=JSON_VALUES)
def test_any_json_value_in_any_position(index, value):
    assume(not (index == 0 and isinstance(value, dict)))  # a dict first is the named form (tested below)
    args = list(DEFAULT_ARGS)
    args[index] = value
    accepted_or_refused_naming(args, ARG_NAMES[index])


@FUZZ
@given(spelling=SPELLINGS, value=JSON_VALUES)
def test_any_json_value_under_any_name(spelling, value):
    """The named form as the host sends it: the client's dict, then the panel's defaults."""
    accepted_or_refused_naming([{spelling: value}, *DEFAULT_ARGS[1:]], spelling)


@FUZZ
@given(index=st.integers(1, len(ARG_NAMES) - 1), value=JSON_VALUES)
def test_any_json_value_in_the_panel_values_after_a_named_dict(index, value):
    """The positions after the dict come from the panel or the request's infotext: validated the same way."""
    args = [{"reference": "cat"}, *DEFAULT_ARGS[1:]]
    args[index] = value
    accepted_or_refused_naming(args, ARG_NAMES[index])


@FUZZ
@given(named=st.dictionaries(SPELLINGS | st.text(max_size=8), JSON_VALUES, max_size=4))
def test_any_named_dict(named):
    try:
        result = from_args([named, *DEFAULT_ARGS[1:]])
    except RefDropError as exc:
        assert str(exc).startswith("RefDrop: ")
        assert any(key in str(exc) for key in [*named, "step_start", "step_end"]), str(exc)
        return
    assert isinstance(result, RefDropSettings)


@pytest.mark.parametrize("args, label", [
    ([{"rfg": 10**400}], "'rfg'"),
    ([{"coefficient": -(10**400)}], "'coefficient'"),
    ([{"step_start": 10**400}], "'step_start'"),
    ([{"step_end": 10**5000}], "'step_end'"),
    ([{"enabled": 10**5000}], "'enabled'"),  # the message cannot quote it in decimal
    ([True, "Use", 10**400], "'rfg'"),
    ([{"disabled_blocks": "OUT٠١"}], "'disabled_blocks'"),
    ([{"disabled_blocks": ["IN٠٤", "M00"]}], "'disabled_blocks'"),
    ([{"disabled_blocks": "ın01"}], "'disabled_blocks'"),  # upper() would make it IN01
    ([{"disabled_groups": "İnput"}], "'disabled_groups'"),
    ([{"rfg": "٠.٣"}], "'rfg'"),
    ([{"rfg": b"0.3"}], "'rfg'"),
    ([{"reference": "cat\ud800"}], "'reference'"),
    ([{"name": 5}], "'name'"),
    ([{1: 0.3}], "unknown argument"),
    ([{None: 0.3, ("a",): 1}], "unknown argument"),
])
def test_values_that_used_to_escape_as_other_exceptions(args, label):
    with pytest.raises(RefDropError) as info:
        from_args(args)
    assert label in str(info.value)
    assert len(str(info.value)) < 400  # a huge value is quoted cut short


# -- pasting ------------------------------------------------------------------------------------------------------

INFOTEXT_KEYS = sorted({key for f in FIELDS for key in (f.key, *f.also_read) if key})
PASTED_KEYS = st.sampled_from([*INFOTEXT_KEYS, "Steps", "refdrop_other"]) | st.text(max_size=8)
PASTED_VALUES = JSON_VALUES | st.text(max_size=20)
PASTED = st.dictionaries(PASTED_KEYS, PASTED_VALUES, max_size=8).map(
    lambda d: {"refdrop_enabled": "True", **d} if len(d) % 2 else d)  # half of them count as RefDrop infotexts


def assert_pasted_values_are_valid(pasted: dict) -> None:
    assert set(pasted) <= set(ARG_NAMES)
    checks = {
        "enabled": lambda v: isinstance(v, bool), "skip_first_up": lambda v: isinstance(v, bool),
        "apply_hires": lambda v: isinstance(v, bool), "overwrite": lambda v: v is False,
        "mode": lambda v: v in MODES, "rfg": lambda v: parse_rfg(v) == v,
        "reference": lambda v: isinstance(v, str), "save_name": lambda v: v == "",
        "profile": lambda v: isinstance(v, str),
        "disabled_groups": lambda v: list(parse_groups(v)) == v and set(v) <= set(BLOCK_GROUPS),
        "disabled_blocks": lambda v: list(parse_blocks(v)) == v,
        "step_start": lambda v: isinstance(v, float) and 0 <= v <= 1,
        "step_end": lambda v: isinstance(v, float) and 0 <= v <= 1,
        "source": lambda v: v in SOURCES, "source_2": lambda v: v in SOURCES, "source_3": lambda v: v in SOURCES,
        "save_from": lambda v: v in SAVE_FROM, "image_prompt": lambda v: isinstance(v, str),
        "reference_2": lambda v: isinstance(v, str), "reference_3": lambda v: isinstance(v, str),
        "rfg_2": lambda v: parse_rfg(v) == v, "rfg_3": lambda v: parse_rfg(v) == v,
    }
    for name, value in pasted.items():
        assert checks[name](value), (name, value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=PASTED)
def test_paste_parsers_never_raise_and_give_valid_values(params):
    assert_pasted_values_are_valid(infotext.parse(params))
    for parser in infotext.PARSERS.values():  # the host calls each one separately
        parser(params)


@pytest.mark.parametrize("params", [
    {"refdrop_enabled": "True", "refdrop_rfg": 10**400, "refdrop_step_start": 10**400, "refdrop_step_end": -10**400},
    {"refdrop_mode": "Use", "refdrop_hires": 10**5000, "refdrop_skip_first_up": [1]},
    {"refdrop_mode": "Use", "refdrop_reference": 10**5000, "refdrop_profile": 10**5000},
    {"refdrop_enabled": 10**5000, "refdrop_disabled_blocks": "OUT٠١", "refdrop_disabled_groups": {"a": 1}},
])
def test_paste_of_values_that_used_to_raise(params):
    assert_pasted_values_are_valid(infotext.parse(params))
