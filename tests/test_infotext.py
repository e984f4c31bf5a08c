"""Infotext: written by a generation, parsed by the host's regex, pasted back into the controls."""

from __future__ import annotations

import base64
import io
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from lib_refdrop.images import mask_digest
from lib_refdrop.params import ARG_NAMES, BLOCK_GROUPS, RefDropSettings, build, from_args, to_args
from lib_refdrop.webui import infotext
from tests.support import fakehost

with fakehost.activated("none"):  # the host's own quoting and parsing, copied into the fake host
    from modules.infotext_utils import create_params_text, parse_params_line, paste_value

DEFAULT_VALUES = dict(zip(ARG_NAMES, to_args(RefDropSettings()), strict=True))  # the controls before pasting


def infotext_line(params: dict) -> str:
    """The host's infotext: built-in keys first, then ``extra_generation_params``, like ``create_infotext``."""
    return create_params_text({"Steps": 20, "Sampler": "Euler a", "Seed": 1, **params, "Version": "f2.0"})


def paste(line: str, current: dict | None = None) -> dict:
    """Fill the controls as the paste button does (parser, then ``type(component.value)(value)``)."""
    current = dict(current or DEFAULT_VALUES)
    parsed = parse_params_line(line)
    for name, value in infotext.parse(parsed).items():
        current[name] = paste_value(current[name], value)
    return current


def round_trip(values: dict) -> RefDropSettings:
    params = {"Some other": "value"}
    original = build(values)
    infotext.write(params, original, saved_as=values.get("save_name") or None)
    pasted = paste(infotext_line(params))
    return from_args([pasted[name] for name in ARG_NAMES])


def test_use_with_every_control_changed():
    values = {"enabled": True, "mode": "Use", "rfg": -0.25, "reference": "my ref (2)", "disabled_groups": ["middle"],
              "disabled_blocks": ["OUT00", "IN04", "M00"], "skip_first_up": True, "step_start": 0.1,
              "step_end": 0.75, "apply_hires": True}
    assert round_trip(values) == build(values)


def test_use_defaults_and_single_block():
    assert round_trip({"enabled": True, "reference": "a"}) == build({"enabled": True, "reference": "a"})
    values = {"enabled": True, "reference": "a", "disabled_blocks": "OUT03"}
    assert round_trip(values) == build(values)


def test_save_pastes_the_saved_name_as_reference():
    values = {"enabled": True, "mode": "Save", "save_name": "hero", "profile": "exact", "rfg": 0.5}
    pasted = round_trip(values)
    assert pasted == build({**values, "rfg": DEFAULT_VALUES["rfg"], "save_name": "", "reference": "hero"})


def save_infotext_params(**values) -> dict:
    params = {}
    infotext.write(params, build({"enabled": True, "mode": "Save", **values}), saved_as="hero", profile="exact")
    return params


def test_save_writes_only_what_applies_to_a_save():
    """RFG, blocks, groups, the step window and hires have no effect on a Save, so its infotext leaves them out."""
    params = save_infotext_params(rfg=0.7, disabled_blocks="OUT01", skip_first_up=True, step_end=0.5,
                                  apply_hires=True)
    assert params == {"refdrop_enabled": True, "refdrop_mode": "Save", "refdrop_saved_as": "hero",
                      "refdrop_profile": "exact"}


USE_TUNING = {"rfg": -0.4, "disabled_groups": ["middle"], "disabled_blocks": ["OUT01"], "skip_first_up": True,
              "step_start": 0.2, "step_end": 0.8, "apply_hires": True}


def test_pasting_a_save_keeps_the_users_use_controls():
    """A user who pastes a Save image then switches to Use finds their own RFG and blocks, not defaults that the
    image never used; the Save's own controls (mode, reference, save name, profile, overwrite) are set."""
    current = {**DEFAULT_VALUES, **USE_TUNING, "save_name": "typed", "overwrite": True, "profile": "compact"}
    pasted = paste(infotext_line(save_infotext_params(rfg=0.9)), current)
    assert pasted == {**current, "enabled": True, "mode": "Save", "reference": "hero", "save_name": "",
                      "overwrite": False, "profile": "exact"}


def test_old_save_infotext_with_rfg_still_pastes_and_its_rfg_is_ignored():
    """Infotexts written before the Save stopped writing ``refdrop_rfg``: the rest pastes as before."""
    line = "Steps: 20, refdrop_enabled: True, refdrop_mode: Save, refdrop_saved_as: hero, refdrop_rfg: 0.5"
    pasted = paste(line, {**DEFAULT_VALUES, "rfg": -0.4})
    assert pasted == {**DEFAULT_VALUES, "enabled": True, "mode": "Save", "reference": "hero", "rfg": -0.4}
    assert from_args([pasted[name] for name in ARG_NAMES]).saving


def test_pasting_a_use_still_sets_every_use_control():
    params = {}
    infotext.write(params, build({"enabled": True, "mode": "Use", "reference": "hero"}))
    pasted = paste(infotext_line(params), {**DEFAULT_VALUES, **USE_TUNING})
    assert pasted == {**DEFAULT_VALUES, "enabled": True, "reference": "hero"}


def test_written_keys_are_snake_case_and_quoted_lists_survive():
    params = {}
    infotext.write(params, build({"enabled": True, "reference": "r", "disabled_groups": "input, output"}))
    assert params == {"refdrop_enabled": True, "refdrop_mode": "Use", "refdrop_reference": "r", "refdrop_rfg": 0.3,
                      "refdrop_disabled_groups": "input, output"}
    assert 'refdrop_disabled_groups: "input, output"' in infotext_line(params)


def test_booleans_are_parsed_not_cast():
    line = "Steps: 20, refdrop_enabled: False, refdrop_mode: Use, refdrop_hires: False, refdrop_skip_first_up: True"
    pasted = paste(line, {**DEFAULT_VALUES, "enabled": True, "apply_hires": True})
    assert pasted["enabled"] is False and pasted["apply_hires"] is False and pasted["skip_first_up"] is True


def test_infotext_without_refdrop_turns_it_off_and_keeps_the_rest():
    current = {**DEFAULT_VALUES, "enabled": True, "rfg": 0.6, "reference": "kept"}
    pasted = paste("Steps: 20, Sampler: Euler, Seed: 3", current)
    assert pasted == {**current, "enabled": False}


def test_bad_values_leave_controls_unchanged():
    current = {**DEFAULT_VALUES, "rfg": 0.6, "disabled_blocks": ["M00"]}
    line = "refdrop_enabled: True, refdrop_mode: Sideways, refdrop_rfg: 7, refdrop_disabled_blocks: X99"
    pasted = paste(line, current)
    assert pasted["enabled"] is True and pasted["mode"] == "Use" and pasted["rfg"] == 0.6
    assert pasted["disabled_blocks"] == ["M00"]


def test_missing_reference_is_pasted_for_the_info_line_to_report():
    assert paste("refdrop_enabled: True, refdrop_reference: gone")["reference"] == "gone"


def test_xyz_cells_sharing_one_dict_do_not_leak():
    shared = {"Hires upscale": 2}
    infotext.write(shared, build({"enabled": True, "reference": "r", "skip_first_up": True, "step_end": 0.5}))
    infotext.write(shared, build({"enabled": True, "reference": "r"}))
    assert "refdrop_skip_first_up" not in shared and "refdrop_step_end" not in shared
    infotext.write(shared, RefDropSettings())
    assert shared == {"Hires upscale": 2}


def test_fields_pair_components_with_parsers():
    components = {name: object() for name in ARG_NAMES}
    pairs = infotext.fields(components)
    assert [c for c, _ in pairs] == [components[name] for name in ARG_NAMES]
    assert all(callable(parser) for _, parser in pairs)


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 _().+-]{0,20}[A-Za-z0-9)]", fullmatch=True).filter(
    lambda s: ".." not in s)
blocks = st.lists(st.sampled_from(["IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
                                   *(f"OUT{i:02d}" for i in range(12))]), unique=True, max_size=5)
fractions = st.integers(0, 100).map(lambda i: i / 100)


@settings(max_examples=60, deadline=None)
@given(rfg=st.integers(-100, 100).map(lambda i: i / 100), reference=names, groups=st.lists(
    st.sampled_from(BLOCK_GROUPS), unique=True), blocks=blocks, skip=st.booleans(), hires=st.booleans(),
    window=st.tuples(fractions, fractions).filter(lambda w: w[0] < w[1]))
def test_use_round_trip_property(rfg, reference, groups, blocks, skip, hires, window):
    values = {"enabled": True, "mode": "Use", "rfg": rfg, "reference": reference, "disabled_groups": groups,
              "disabled_blocks": blocks, "skip_first_up": skip, "step_start": window[0], "step_end": window[1],
              "apply_hires": hires}
    assert round_trip(values) == build(values)


@pytest.mark.parametrize("text", ["True", "true", "1"])
def test_enabled_spellings(text):
    assert infotext.PARSERS["enabled"]({"refdrop_enabled": text}) is True


def test_positional_args_of_defaults_match_from_args():
    assert from_args(list(DEFAULT_VALUES.values())) == RefDropSettings()


# -- several references, sources, images and masks ----------------------------------------------------------------

def png_base64(colour="white", mode="L", size=(8, 8)) -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def written(**values) -> dict:
    params = {}
    infotext.write(params, build({"enabled": True, **values}))
    return params


def test_two_and_three_references_round_trip():
    two = {"enabled": True, "reference": "a", "rfg": 0.2, "reference_2": "b", "rfg_2": 0.35}
    assert round_trip(two) == build(two)
    assert written(**two) == {"refdrop_enabled": True, "refdrop_mode": "Use", "refdrop_reference": "a",
                              "refdrop_rfg": 0.2, "refdrop_reference_2": "b", "refdrop_rfg_2": 0.35}
    three = {**two, "reference_3": "c (2)", "rfg_3": -0.1}
    assert round_trip(three) == build(three)
    batch_third = {**two, "reference_3": "left in the dropdown", "rfg_3": 0.4, "source_3": "batch"}
    assert round_trip(batch_third) == build({**batch_third, "reference_3": ""})  # what it did not use


def test_a_slot_that_is_off_writes_nothing_and_pastes_as_off():
    values = {"enabled": True, "reference": "a", "reference_2": "b", "source_3": "batch"}  # rfg_2, rfg_3 at 0
    assert written(**values) == written(reference="a")
    current = {**DEFAULT_VALUES, "reference_2": "mine", "rfg_2": 0.4, "rfg_3": -0.3, "source_3": "image"}
    pasted = paste(infotext_line(written(**values)), current)
    assert (pasted["reference_2"], pasted["rfg_2"], pasted["rfg_3"], pasted["source_3"]) == ("", 0.0, 0.0,
                                                                                               "reference")


def test_the_batch_source_writes_no_reference():
    values = {"enabled": True, "source": "batch", "reference": "left in the dropdown", "rfg": 0.5}
    assert written(**values) == {"refdrop_enabled": True, "refdrop_mode": "Use", "refdrop_source": "batch",
                                 "refdrop_rfg": 0.5}
    assert round_trip(values) == build({**values, "reference": ""})


def test_a_live_image_writes_its_prompt_and_never_the_image():
    image = png_base64("red", "RGB")
    values = {"enabled": True, "source": "image", "image": image, "image_prompt": "a red fox"}
    params = written(**values)
    assert params == {"refdrop_enabled": True, "refdrop_mode": "Use", "refdrop_source": "image", "refdrop_rfg": 0.3,
                      "refdrop_image_prompt": "a red fox"}
    current = {**DEFAULT_VALUES, "image": build(values).image}  # the image control keeps what it holds
    pasted = paste(infotext_line(params), current)
    assert from_args([pasted[name] for name in ARG_NAMES]) == build(values)


def test_the_image_prompt_is_written_only_where_an_image_is_evaluated():
    assert "refdrop_image_prompt" not in written(reference="a", image_prompt="unused")
    assert "refdrop_image_prompt" not in written(mode="Save", image_prompt="unused")
    live_in_slot_2 = written(reference="a", source_2="image", image_2=png_base64(mode="RGB"), rfg_2=0.2,
                             image_prompt="a cat")
    assert live_in_slot_2["refdrop_image_prompt"] == "a cat" and "refdrop_reference_2" not in live_in_slot_2


def test_a_save_from_an_image_round_trips_and_keeps_the_use_controls():
    params = save_infotext_params(save_from="image", image=png_base64(mode="RGB"), image_prompt="a fox",
                                  rfg_2=0.3, reference_2="b")
    assert params == {"refdrop_enabled": True, "refdrop_mode": "Save", "refdrop_saved_as": "hero",
                      "refdrop_profile": "exact", "refdrop_save_from": "image", "refdrop_image_prompt": "a fox"}
    current = {**DEFAULT_VALUES, "reference_2": "mine", "rfg_2": 0.4, "source": "batch"}
    pasted = paste(infotext_line(params), current)
    assert pasted == {**current, "enabled": True, "mode": "Save", "reference": "hero", "profile": "exact",
                      "save_from": "image", "image_prompt": "a fox"}
    assert paste(infotext_line(save_infotext_params()), pasted)["save_from"] == "generation"


def test_masks_are_recorded_by_digest_and_never_pasted():
    mask, other = png_base64("white"), png_base64("black")
    settings = build({"enabled": True, "reference": "a", "mask": mask, "reference_2": "b", "rfg_2": 0.2,
                      "mask_2": other, "mask_3": mask})
    params = {}
    infotext.write(params, settings)
    assert params["refdrop_mask"] == mask_digest(settings.mask) != params["refdrop_mask_2"]
    assert re.fullmatch(r"[0-9a-f]{12}", params["refdrop_mask"]) and "refdrop_mask_3" not in params  # slot 3 off
    current = {**DEFAULT_VALUES, "mask": "what the control holds"}
    pasted = paste(infotext_line(params), current)
    assert pasted["mask"] == "what the control holds" and pasted["mask_2"] is None
    images = ("image", "mask", "image_2", "mask_2", "image_3", "mask_3")
    assert all(infotext.PARSERS[name](params) is None for name in images)  # the host then leaves the control


def test_a_use_infotext_of_7431b38_resets_the_slots_and_sources():
    current = {**DEFAULT_VALUES, "source": "image", "reference_2": "b", "rfg_2": 0.3, "source_2": "batch"}
    pasted = paste("refdrop_enabled: True, refdrop_mode: Use, refdrop_reference: cat, refdrop_rfg: 0.4", current)
    assert pasted == {**DEFAULT_VALUES, "enabled": True, "reference": "cat", "rfg": 0.4}


@settings(max_examples=40, deadline=None)
@given(rfgs=st.tuples(*[st.integers(-100, 100).map(lambda i: i / 100)] * 3), refs=st.tuples(names, names, names),
       sources=st.tuples(*[st.sampled_from(["reference", "batch"])] * 3))
def test_slots_round_trip_property(rfgs, refs, sources):
    assume(sources.count("batch") <= 1)
    values = {"enabled": True}
    for k, (rfg, ref, source) in enumerate(zip(rfgs, refs, sources, strict=True), start=1):
        suffix = "" if k == 1 else f"_{k}"
        values.update({f"rfg{suffix}": rfg, f"reference{suffix}": ref, f"source{suffix}": source})
    settings = build(values)
    effective = {**values}  # what did not apply is not written, so it pastes as the default
    for k in (1, 2, 3):
        suffix = "" if k == 1 else f"_{k}"
        off = k > 1 and settings.slot_values[k - 1].rfg == 0
        if off:
            effective[f"source{suffix}"] = "reference"
        if off or effective[f"source{suffix}"] != "reference":
            effective[f"reference{suffix}"] = ""
    assert round_trip(values) == build(effective)
