"""Bad input through the API (named and positional script args) and the infotext: clear errors, never a crash."""

from __future__ import annotations

import pytest

from lib_refdrop.errors import RefDropError
from lib_refdrop.images import MAX_BASE64_CHARS
from lib_refdrop.params import ARG_NAMES, build, from_args
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.run import RefDropRun
from lib_refdrop.webui import infotext
from tests.support import faultkit


@pytest.mark.parametrize("value", [1.0001, -1.5, 2, 100, float("nan"), float("inf"), "-inf", "abc", None, True,
                                   [0.3], {"c": 1}, 10**400, -(10**400), b"0.3", "٠.٣"])
def test_rfg_outside_range_or_of_the_wrong_type(value):
    with pytest.raises(RefDropError, match="RFG coefficient"):
        from_args([{"mode": "Use", "rfg": value}])


@pytest.mark.parametrize("value", [-1, 1, "0.5", 0, "-1.0"])
def test_rfg_limits_are_accepted(value):
    assert -1 <= from_args([{"mode": "Use", "rfg": value}]).rfg <= 1


@pytest.mark.parametrize("args, message", [
    ({"mode": "Blend"}, "mode must be one of Save, Use"),
    ({"mode": 1}, "mode must be one of"),
    ({"enabled": "maybe"}, "'enabled' must be true or false"),
    ({"enabled": 2}, "'enabled' must be true or false"),
    ({"disabled_blocks": "OUT12"}, "unknown block 'OUT12'"),
    ({"disabled_blocks": "IN1"}, "unknown block 'IN1'"),
    ({"disabled_blocks": ["OUT01", 3]}, "must be a list of names"),
    ({"disabled_blocks": 5}, "must be a list of names"),
    ({"disabled_groups": "upper"}, "unknown block group 'upper'"),
    ({"step_start": "x"}, "'step_start' must be a number"),
    ({"step_end": 1.5}, r"'step_end' must lie in \[0, 1\]"),
    ({"step_start": 0.8, "step_end": 0.2}, "step window is empty"),
    ({"reference": 5}, "'reference' must be text"),
    ({"save_name": ["a"]}, "'save_name' must be text"),
    ({"rfg_coeff": 0.3}, "unknown argument"),
    ({"overwrite": "sometimes"}, "'overwrite' must be true or false"),
    ({"step_end": 10**400}, r"'step_end' must lie in \[0, 1\]"),  # beyond float range: float() overflows
    ({"disabled_blocks": "OUT٠١"}, "unknown block 'OUT٠١' in 'disabled_blocks'"),  # not ASCII
    ({"coefficient": 7}, "'coefficient'"),  # the alias the client used
    ({"source": "photo"}, "'source' must be one of reference, batch, image"),
    ({"save_from": ["image"]}, "'save_from' must be one of generation, image"),
    ({"rfg_3": "0.3x"}, r"RFG coefficient must be a number in \[-1, 1\], got '0.3x' \(argument 'rfg_3'\)"),
    ({"image": "data:image/png;base64,%%%"}, "'image' is neither an image nor base64 text"),
    ({"mask_2": {"layers": [1]}}, "'mask_2' must be an image"),
    ({"image_3": "x" * (MAX_BASE64_CHARS + 1)},
     f"'image_3' is {MAX_BASE64_CHARS + 1:,} characters of base64, more than the"),
])
def test_named_api_arguments_give_clear_errors(args, message):
    with pytest.raises(RefDropError, match=message):
        from_args([args])


def test_positional_api_arguments_give_clear_errors():
    with pytest.raises(RefDropError, match="at most"):
        from_args([True] * (len(ARG_NAMES) + 1))
    with pytest.raises(RefDropError, match="mode must be one of"):
        from_args([True, "Mix"])
    with pytest.raises(RefDropError, match="RFG coefficient"):
        from_args([True, "Use", 3])


@pytest.mark.parametrize("params", [
    {"refdrop_enabled": "True", "refdrop_mode": "Blend", "refdrop_rfg": "7", "refdrop_disabled_blocks": "OUT99",
     "refdrop_disabled_groups": "upper", "refdrop_step_start": "x", "refdrop_step_end": "2"},
    {"refdrop_enabled": "True", "refdrop_rfg": "nan", "refdrop_mode": ""},
    {"refdrop_mode": "Use", "refdrop_rfg": ["0.3"], "refdrop_reference": None},
])
def test_bad_infotext_values_leave_those_controls_unchanged(params):
    """Pasting cannot show an error in the host, so a bad value is dropped (the control keeps its value); the
    generation then validates all controls together (``build``) and reports what is still wrong."""
    parsed = infotext.parse(params)
    for key in ("mode", "rfg", "disabled_blocks", "disabled_groups", "step_start", "step_end"):
        if key in parsed:
            build({key: parsed[key]})  # what was accepted is valid on its own


def test_pasted_hostile_reference_name_is_a_clear_error_at_generation(tmp_path):
    store = ReferenceStore(tmp_path)
    pasted = infotext.parse({"refdrop_enabled": "True", "refdrop_mode": "Use", "refdrop_reference": "../../etc"})
    run = RefDropRun(build({**pasted, "enabled": True}), store)
    with pytest.raises(RefDropError, match="may not contain"):
        faultkit.run_generation(run, faultkit.trace_calls(limit=1))


def test_unknown_reference_lists_the_saved_ones(tmp_path):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "cat")
    run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": "dog"}), store)
    with pytest.raises(RefDropError, match=r"'dog' not found .*saved references: cat"):
        faultkit.run_generation(run, faultkit.trace_calls(limit=1))
