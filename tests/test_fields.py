"""The FIELDS table drives the argument names, validation, the infotext keys and pasting; script args and X/Y/Z
overrides are validated once, together; one rule says whether raw args ask for RefDrop."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_settings_fuzz import JSON_VALUES

import lib_refdrop
from lib_refdrop import params as settings_module
from lib_refdrop.errors import RefDropError
from lib_refdrop.params import (
    ANY,
    ARG_NAMES,
    DEFAULTS,
    FIELDS,
    SLOTS,
    SWITCH,
    USE_ONLY,
    RefDropSettings,
    for_generation,
    from_args,
    parse_bool,
    to_args,
    wants_refdrop,
)
from lib_refdrop.webui import infotext, xyz

# The public positional order of alwayson_scripts["RefDrop"]["args"] (docs/api.md): it only grows at the end.
ORDER_OF_7431B38 = ("enabled", "mode", "rfg", "reference", "save_name", "disabled_groups", "disabled_blocks",
                    "skip_first_up", "step_start", "step_end", "apply_hires", "overwrite", "profile")
PUBLIC_ORDER = (*ORDER_OF_7431B38, "source", "save_from", "image", "image_prompt", "mask",
                "reference_2", "rfg_2", "source_2", "image_2", "mask_2",
                "reference_3", "rfg_3", "source_3", "image_3", "mask_3")
# Every key an infotext written by 7431b38 can hold, with a value and what it pastes into.
KEYS_OF_7431B38 = [
    ("refdrop_enabled", "True", "enabled", True),
    ("refdrop_mode", "Save", "mode", "Save"),
    ("refdrop_reference", "cat", "reference", "cat"),
    ("refdrop_saved_as", "hero", "reference", "hero"),
    ("refdrop_rfg", "-0.4", "rfg", -0.4),
    ("refdrop_disabled_groups", "input, output", "disabled_groups", ["input", "output"]),
    ("refdrop_disabled_blocks", "OUT01, M00", "disabled_blocks", ["M00", "OUT01"]),
    ("refdrop_skip_first_up", "True", "skip_first_up", True),
    ("refdrop_step_start", "0.2", "step_start", 0.2),
    ("refdrop_step_end", "0.8", "step_end", 0.8),
    ("refdrop_hires", "True", "apply_hires", True),
    ("refdrop_profile", "exact", "profile", "exact"),
]


def test_the_table_gives_the_public_argument_order_and_the_settings_attributes():
    assert ARG_NAMES == PUBLIC_ORDER and ARG_NAMES[:len(ORDER_OF_7431B38)] == ORDER_OF_7431B38
    # every argument is a typed attribute of the settings (a reference slot's in its SlotSettings)
    settings = RefDropSettings()
    for f in FIELDS:
        holder = settings if f.slot is None else settings.slot_values[f.slot - 1]
        assert f.attribute in {a.name for a in dataclasses.fields(holder)}, f.arg
        assert f.value(settings) == f.default, f.arg
    assert [s.index for s in settings.slot_values] == list(SLOTS)
    assert to_args(DEFAULTS) == [f.default if not isinstance(f.default, tuple) else [] for f in FIELDS]


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.arg)
def test_every_default_is_valid_for_its_own_validator(field):
    assert field.parse(field.default, field.arg) == field.default


@pytest.mark.parametrize("key, text, arg, pasted", KEYS_OF_7431B38)
def test_keys_written_by_7431b38_keep_pasting(key, text, arg, pasted):
    params = {"refdrop_enabled": "True", "refdrop_mode": "Use", key: text}
    assert infotext.parse(params)[arg] == pasted


def test_an_infotext_of_7431b38_pastes_whole():
    line = {"refdrop_enabled": "True", "refdrop_mode": "Use", "refdrop_reference": "cat", "refdrop_rfg": "0.5",
            "refdrop_disabled_blocks": "OUT03", "refdrop_hires": "True", "refdrop_step_end": "0.5"}
    pasted = {**dict(zip(ARG_NAMES, to_args(DEFAULTS), strict=True)), **infotext.parse(line)}
    assert from_args([pasted[name] for name in ARG_NAMES]) == from_args([{
        "reference": "cat", "rfg": 0.5, "disabled_blocks": "OUT03", "apply_hires": True, "step_end": 0.5}])


PASTED_FIELDS = [f for f in FIELDS if f.key and f.pasted in (ANY, USE_ONLY, SWITCH)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(PASTED_FIELDS), value=JSON_VALUES | st.text(max_size=12))
def test_pasting_accepts_exactly_what_the_settings_validator_accepts(field, value):
    """The paste of one key gives the validator's value, or leaves the control alone where it refuses."""
    assume(field.arg != "mode")  # the mode decides which controls a paste sets (tested in test_infotext.py)
    assume(value or not field.also_read)  # an empty reference falls back to the Save's name
    pasted = infotext.PARSERS[field.arg]({"refdrop_enabled": "True", "refdrop_mode": "Use", field.key: value})
    try:
        valid = field.parse(value, field.key)
    except RefDropError:
        valid = None
    if field.pasted == SWITCH:
        assert pasted is (valid is True)
    else:
        assert pasted == (list(valid) if isinstance(valid, tuple) else valid)


@pytest.mark.parametrize("text, value", [("True", True), ("on", True), ("yes", True), ("1", True), (1, True),
                                         ("False", False), ("off", False), ("no", False), (0, False)])
def test_one_parse_bool_for_arguments_settings_and_pasting(text, value):
    assert parse_bool(text, "x") is value
    assert from_args([{"skip_first_up": text}]).skip_first_up is value
    pasted = infotext.parse({"refdrop_enabled": text, "refdrop_mode": "Use", "refdrop_skip_first_up": text})
    assert pasted["enabled"] is value and pasted["skip_first_up"] is value


# -- one validation of args and X/Y/Z overrides ---------------------------------------------------------------

def test_overrides_are_merged_before_validation():
    """An X/Y/Z value replaces the panel's value of its cell, so a panel value it replaces is never validated."""
    assert for_generation([{"coefficient": 7, "reference": "r"}], {"rfg": 0.5}).rfg == 0.5
    assert for_generation([True, "Use", 7, "r"], {"rfg": -0.5}).rfg == -0.5
    assert for_generation([True, "Save", 0.3, "", "x"], {"mode": "Use", "reference": "r"}).using


def test_args_and_overrides_are_validated_once(monkeypatch):
    calls = []
    build = settings_module.build
    monkeypatch.setattr(settings_module, "build", lambda *a, **k: calls.append(a) or build(*a, **k))
    settings = for_generation([{"reference": "r", "rfg": 0.2}], {"step_end": 0.5, "rfg": 0.4})
    assert (settings.rfg, settings.step_end, settings.reference) == (0.4, 0.5, "r")
    assert len(calls) == 1


def test_a_bad_override_is_reported_under_its_own_name():
    with pytest.raises(RefDropError, match=r"RFG coefficient must lie in \[-1, 1\], got 7 \(argument 'rfg'\)"):
        for_generation([{"coefficient": 0.3}], {"rfg": 7})
    with pytest.raises(RefDropError, match="mode must be one of"):
        for_generation([False], {"mode": "Sideways"})  # an axis was set, so its error matters even with RefDrop off


@pytest.mark.parametrize("args", [
    [1, "Use", 7], [{"enabled": 1, "rfg": 7}], ["on", "Use", 7], [{"enabled": "yes", "mode": "Blend"}],
    [{"rfg": 7}],  # a dict that names anything means "on"
    [{"enabled": "maybe"}], [2, "Use"], [[True]], [{"enabled": None, "rfg": 0.3}],  # no boolean: report it
])
def test_invalid_args_that_ask_for_refdrop_are_reported(args):
    assert wants_refdrop(args)
    with pytest.raises(RefDropError, match="^RefDrop: "):
        for_generation(args)


@pytest.mark.parametrize("args", [[False, "Use", 7], [{"enabled": False, "rfg": 7}], ["off", "Blend"],
                                  [0, "Use", 0.3, 5], [{"enabled": "no", "nope": 1}]])
def test_invalid_args_that_do_not_ask_for_refdrop_leave_it_off(args):
    assert not wants_refdrop(args)
    assert for_generation(args) == DEFAULTS


@pytest.mark.parametrize("args, on", [([], False), ([{}], False), ([True], True), ([False, "Use", 0.5], False),
                                      ([{"reference": "r"}], True), ([{"enabled": 0, "reference": "r"}], False)])
def test_valid_args_give_their_settings(args, on):
    assert wants_refdrop(args) is on
    assert for_generation(args) == from_args(args) and for_generation(args).enabled is on


# -- X/Y/Z: the panel is read with the same rule ----------------------------------------------------------------

def xyz_p(panel_args: list):
    """A ``p`` whose script runner holds RefDrop's panel values after another script's."""
    refdrop = SimpleNamespace(title=lambda: "RefDrop", args_from=2, args_to=2 + len(panel_args))
    other = SimpleNamespace(title=lambda: "Other", args_from=0, args_to=2)
    return SimpleNamespace(scripts=SimpleNamespace(alwayson_scripts=[other, refdrop]),
                           script_args=["x", "y", *panel_args])


def rfg_axis():
    def axis_option(label, kind, apply, confirm=None, choices=None):
        return SimpleNamespace(label=label, apply=apply, confirm=confirm, choices=choices)

    axes = xyz.make_axes(axis_option, get_store=lambda: None)
    return next(axis for axis in axes if axis.label == "[RefDrop] RFG coefficient")


@pytest.mark.parametrize("panel, on", [
    ([True, "Use", 0.3], True), ([False, "Use", 0.3], False), ([{"enabled": 1}], True), ([{"rfg": 0.5}], True),
    ([{"enabled": "maybe"}], True), ([1, "Use", 7], True), ([False, "Use", 7], False), ([{}], False),
])
def test_panel_enabled_reads_the_panel_like_the_generation(panel, on):
    assert xyz.panel_enabled(xyz_p(panel)) is on is wants_refdrop(panel)


def test_a_grid_with_the_panel_off_and_an_invalid_panel_value_is_refused():
    """The panel is off, so every cell would run without RefDrop; its invalid RFG used to hide that."""
    with pytest.raises(RuntimeError, match="enable RefDrop in its panel first"):
        rfg_axis().confirm(xyz_p([False, "Use", 7]), [0.2, 0.4])
    rfg_axis().confirm(xyz_p([True, "Use", 7]), [0.2, 0.4])  # on: each cell's RFG replaces the invalid one


def test_panel_enabled_without_refdrop_or_its_args():
    assert xyz.panel_enabled(SimpleNamespace()) is None
    p = xyz_p([True])
    p.script_args = None
    assert xyz.panel_enabled(p) is None


def test_the_title_lives_with_the_package():
    assert lib_refdrop.TITLE == "RefDrop" and not hasattr(xyz, "SCRIPT_TITLE")
