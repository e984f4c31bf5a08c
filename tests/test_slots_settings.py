"""The settings of several references, reference sources, images and masks (params.FIELDS after ``profile``):
validation with messages that name the argument as it was spelled, ``RefDropSettings.slots``, the named form's
aliases, the positional form and X/Y/Z overrides."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from lib_refdrop.errors import RefDropError
from lib_refdrop.params import (
    ARG_NAMES,
    DEFAULTS,
    SOURCES,
    SlotSettings,
    build,
    for_generation,
    from_args,
    to_args,
    wants_refdrop,
)

SINGLE_REFERENCE_ARGS = 13  # the positional arguments before the slots existed (7431b38)


def png_base64(colour="red", size=(8, 8), mode="RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def use(**values):
    return build({"enabled": True, "mode": "Use", **values})


# -- defaults and the slots that are on -------------------------------------------------------------------------

def test_the_new_arguments_default_to_one_saved_reference():
    assert (DEFAULTS.source, DEFAULTS.save_from, DEFAULTS.image, DEFAULTS.image_prompt, DEFAULTS.mask) == (
        "reference", "generation", None, "", None)
    for k in (2, 3):
        slot = DEFAULTS.slot_values[k - 1]
        assert [slot.reference, slot.rfg, slot.source, slot.image, slot.mask] == ["", 0.0, "reference", None, None]
    assert use(reference="cat").slots == (SlotSettings(1, "reference", "cat", 0.3),)


def test_single_reference_arguments_keep_their_meaning():
    """A request of 7431b38 (13 positions, or a named dict of its names) gives the same settings as it did."""
    positional = [True, "Use", 0.4, "cat", "", ["middle"], ["OUT03"], True, 0.1, 0.9, True, False, ""]
    assert len(positional) == SINGLE_REFERENCE_ARGS
    settings = from_args(positional)
    named = from_args([{"reference": "cat", "rfg": 0.4, "disabled_groups": "middle", "disabled_blocks": "OUT03",
                        "skip_first_up": True, "step_start": 0.1, "step_end": 0.9, "apply_hires": True}])
    assert settings == named
    assert settings.slots == (SlotSettings(1, "reference", "cat", 0.4),)
    assert to_args(settings)[:SINGLE_REFERENCE_ARGS] == positional
    assert to_args(settings)[SINGLE_REFERENCE_ARGS:] == to_args(DEFAULTS)[SINGLE_REFERENCE_ARGS:]


def test_slots_2_and_3_are_on_when_their_coefficient_is_not_0():
    settings = use(reference="a", rfg=0, reference_2="b", rfg_2=0.25, reference_3="c", rfg_3=0)
    assert [(s.index, s.reference, s.rfg) for s in settings.slots] == [(1, "a", 0.0), (2, "b", 0.25)]
    settings = use(reference="a", reference_2="b", rfg_2=-0.2, reference_3="c", rfg_3=0.5)
    assert [(s.index, s.rfg) for s in settings.slots] == [(1, 0.3), (2, -0.2), (3, 0.5)]


def test_no_slots_outside_a_use():
    assert build({"enabled": True, "mode": "Save", "reference_2": "b", "rfg_2": 0.3}).slots == ()
    assert build({"enabled": False, "reference": "a"}).slots == ()


def test_a_slot_carries_its_source_image_and_mask():
    settings = use(source="image", image=png_base64("blue"), mask=png_base64("white", mode="L"),
                   source_2="batch", rfg_2=0.2, mask_2=png_base64("black", mode="L"))
    first, second = settings.slots
    assert (first.source, first.image.mode, first.image.getpixel((0, 0)), first.mask.getpixel((0, 0))) == (
        "image", "RGB", (0, 0, 255), 255)
    assert (second.source, second.image, second.mask.getpixel((0, 0))) == ("batch", None, 0)


# -- validation ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelled", ["Batch", " IMAGE ", "reference"])
def test_sources_in_any_case(spelled):
    assert use(source_3=spelled).slot_values[2].source == spelled.strip().lower()
    assert use(source_3=spelled).slot_values[2].source in SOURCES


@pytest.mark.parametrize("values, message", [
    ({"source": "upload"}, "'source' must be one of reference, batch, image"),
    ({"source_2": 2}, "'source_2' must be one of reference, batch, image"),
    ({"save_from": "disk"}, "'save_from' must be one of generation, image"),
    ({"rfg_2": 1.5}, r"RFG coefficient must lie in \[-1, 1\], got 1.5 \(argument 'rfg_2'\)"),
    ({"coefficient_3": "x"}, r"RFG coefficient must be a number .*\(argument 'coefficient_3'\)"),
    ({"reference_2": 5}, "'reference_2' must be text"),
    ({"image_prompt": ["a"]}, "'image_prompt' must be text"),
    ({"image": "not an image"}, "'image' is neither an image nor base64"),
    ({"mask_3": 7}, "'mask_3' must be an image"),
])
def test_bad_values_are_refused_naming_the_argument(values, message):
    with pytest.raises(RefDropError, match=message):
        from_args([values])


def test_a_slot_that_is_on_needs_a_reference():
    with pytest.raises(RefDropError) as info:
        from_args([{"reference": "a", "rfg_2": 0.3}])
    assert str(info.value) == ("RefDrop: slot 2 is on (rfg_2 = 0.3) but no reference is selected "
                               "('reference_2' is empty)")
    with pytest.raises(RefDropError, match=r"slot 3 is on \(rfg_coefficient_3 = -0.2\).*'ref_3' is empty"):
        from_args([{"reference": "a", "rfg_coefficient_3": -0.2, "ref_3": " "}])


def test_slot_1_without_a_reference_is_left_to_the_engine():
    """The engine says "Use is on but no reference is selected" for slot 1, as it always has (run.py)."""
    assert use().slots == (SlotSettings(1, "reference", "", 0.3),)


@pytest.mark.parametrize("values, message", [
    ({"source": "image"}, "slot 1's source is an image but no image was given ('source' is 'image', 'image' is empty)"),
    ({"source_1": "Image", "image_1": ""}, "('source_1' is 'image', 'image_1' is empty)"),
    ({"reference": "a", "source_3": "image", "rfg_3": 0.4}, "slot 3's source is an image"),
    ({"source": "batch", "source_2": "batch", "rfg_2": 0.1},
     "only one slot can take the first image of the batch; slots 1 and 2 have source 'batch' ('source', 'source_2')"),
    ({"source": "batch", "source_2": "batch", "rfg_2": 0.1, "source_3": "batch", "rfg_3": 0.1},
     "slots 1, 2 and 3 have source 'batch'"),
    ({"mode": "Save", "save_from": "image"},
     "a Save from an image needs an image, and none was given ('save_from' is 'image', 'image' is empty)"),
])
def test_a_source_without_what_it_needs_is_refused(values, message):
    with pytest.raises(RefDropError, match="^RefDrop: ") as info:
        from_args([values])
    assert message in str(info.value)


@pytest.mark.parametrize("values", [
    {"reference": "a", "source_2": "image", "rfg_2": 0},  # slot 2 is off: its source does not matter
    {"reference": "a", "source_2": "batch", "source_3": "batch"},  # both off
    {"reference": "a", "save_from": "image"},  # a Use: what a Save would record does not matter
    {"mode": "Save", "rfg_2": 0.3, "source": "image"},  # a Save: the Use slots do not matter
    {"enabled": False, "source": "image", "rfg_2": 0.5},  # off
    {"source": "batch", "reference_2": "b", "rfg_2": 0.3},  # one batch slot and a saved one
])
def test_what_does_not_apply_is_not_checked(values):
    from_args([values])


def test_a_save_from_an_image_and_a_live_image():
    saved = build({"enabled": True, "mode": "Save", "save_from": "IMAGE", "image": png_base64(),
                   "image_prompt": " a fox "})
    assert (saved.save_from, saved.image.size, saved.image_prompt) == ("image", (8, 8), "a fox")
    live = use(source="image", image=png_base64(), image_prompt="a fox", rfg=0.5)
    assert live.slots[0].source == "image" and live.slots[0].image.getpixel((0, 0)) == (255, 0, 0)


# -- the named form, the positional form ------------------------------------------------------------------------

def test_slot_1_has_aliases_numbered_like_the_other_slots():
    numbered = from_args([{"reference_1": "a", "rfg_1": 0.2, "source_1": "reference", "reference_2": "b",
                           "rfg_2": 0.3}])
    assert numbered == from_args([{"reference": "a", "rfg": 0.2, "reference_2": "b", "rfg_2": 0.3}])
    assert from_args([{"ref_2": "b", "coefficient_2": 0.1, "ref": "a"}]).slots[1] == SlotSettings(2, "reference",
                                                                                                   "b", 0.1)


@pytest.mark.parametrize("named", [{"rfg": 0.3, "rfg_1": 0.4}, {"reference_2": "a", "ref_2": "b"},
                                   {"coefficient_3": 0.1, "rfg_3": 0.1}])
def test_an_argument_under_two_names_is_refused(named):
    with pytest.raises(RefDropError, match="is given twice"):
        from_args([named])


def test_positional_and_named_forms_of_every_new_argument_agree():
    image, mask = png_base64("green"), png_base64("white", mode="L")
    named = {"enabled": True, "mode": "Use", "reference": "a", "rfg": 0.2, "source": "reference", "mask": mask,
             "reference_2": "b", "rfg_2": 0.3, "source_2": "image", "image_2": image, "mask_2": mask,
             "rfg_3": -0.1, "source_3": "batch", "image_prompt": "fox"}
    settings = from_args([named])
    positional = [named.get(name, value) for name, value in zip(ARG_NAMES, to_args(DEFAULTS), strict=True)]
    assert from_args(positional) == settings
    assert from_args(to_args(settings)) == settings
    assert [slot.index for slot in settings.slots] == [1, 2, 3]


def test_settings_with_images_compare_by_pixels_and_hash():
    red, blue = use(source="image", image=png_base64("red")), use(source="image", image=png_base64("blue"))
    assert red == use(source="image", image=png_base64("red")) != blue
    assert hash(red) == hash(blue)  # images are left out of the hash, which equal settings still share
    assert len({DEFAULTS, red, blue}) == 3


# -- X/Y/Z ---------------------------------------------------------------------------------------------------------

def test_axis_values_for_the_slots_replace_the_panels():
    panel = [{"reference": "a", "reference_2": "b", "rfg_2": 0.2}]
    assert for_generation(panel, {"rfg_2": 0.6}).slots[1].rfg == 0.6
    assert for_generation(panel, {"reference_2": "c"}).slots[1].reference == "c"
    assert [s.index for s in for_generation(panel, {"rfg_2": 0}).slots] == [1]  # the axis's plain cell
    assert for_generation(panel, {"rfg_3": 0.1, "reference_3": "d"}).slots[2].reference == "d"


def test_an_axis_value_for_a_slot_that_is_off_is_refused():
    """Every cell of such a grid would look the same: the slot's reference is never used."""
    with pytest.raises(RefDropError, match=r"an X/Y/Z axis sets 'reference_3', but slot 3 is off \(rfg_3 = 0\)"):
        for_generation([{"reference": "a"}], {"reference_3": "d"})
    with pytest.raises(RefDropError, match="sets 'source_2', but slot 2 is off"):
        for_generation([{"reference": "a"}], {"source_2": "batch"})


def test_wants_refdrop_reads_only_enabled():
    assert wants_refdrop([{"rfg_2": 0.3}]) and not wants_refdrop([False, "Use", 0.3, "", "", [], [], False, 0.0,
                                                                    1.0, False, False, "", "image"])
    off = for_generation([False, *to_args(DEFAULTS)[1:13], "image"])  # off: a source without an image is no error
    assert not off.enabled and off.slots == ()


def slot_axes(store_names=("fox", "cat")):
    from types import SimpleNamespace

    from lib_refdrop.webui import xyz

    store = SimpleNamespace(names=lambda: list(store_names), exists=lambda name: name in store_names,
                            missing_message=lambda name: f"RefDrop: reference '{name}' not found")

    def axis_option(label, kind, apply, confirm=None, choices=None):
        return SimpleNamespace(label=label, kind=kind, apply=apply, confirm=confirm, choices=choices)

    return {axis.label: axis for axis in xyz.make_axes(axis_option, get_store=lambda: store)}


def enabled_panel_p():
    from types import SimpleNamespace

    refdrop = SimpleNamespace(title=lambda: "RefDrop", args_from=0, args_to=1)
    return SimpleNamespace(scripts=SimpleNamespace(alwayson_scripts=[refdrop]), script_args=[True])


def test_xyz_has_a_coefficient_and_a_reference_axis_per_further_slot():
    axes = slot_axes()
    assert list(axes)[:4] == ["[RefDrop] RFG coefficient", "[RefDrop] Reference", "[RefDrop] Mode",
                              "[RefDrop] Step end"]  # the existing axes first, unchanged
    assert list(axes)[4:] == ["[RefDrop] RFG coefficient (slot 2)", "[RefDrop] Reference (slot 2)",
                              "[RefDrop] RFG coefficient (slot 3)", "[RefDrop] Reference (slot 3)"]
    p = enabled_panel_p()
    for k in (2, 3):
        rfg, reference = axes[f"[RefDrop] RFG coefficient (slot {k})"], axes[f"[RefDrop] Reference (slot {k})"]
        assert rfg.kind is float and reference.kind is str and reference.choices() == ["fox", "cat"]
        rfg.confirm(p, [0.0, 0.5])
        with pytest.raises(RuntimeError, match=rf"must lie in \[-1, 1\].*'rfg_{k}'"):
            rfg.confirm(p, [1.5])
        reference.confirm(p, ["fox"])
        with pytest.raises(RuntimeError, match="'lion' not found"):
            reference.confirm(p, ["fox", "lion"])
        rfg.apply(p, 0.25, [0.25])
        reference.apply(p, "cat", ["cat"])
    assert p.refdrop_xyz == {"rfg_2": 0.25, "reference_2": "cat", "rfg_3": 0.25, "reference_3": "cat"}
    settings = for_generation([{"reference": "fox"}], p.refdrop_xyz)
    assert [(s.index, s.reference, s.rfg) for s in settings.slots] == [(1, "fox", 0.3), (2, "cat", 0.25),
                                                                         (3, "cat", 0.25)]


def test_the_messages_docs_api_md_shows_are_the_ones_given():
    """docs/api.md's table of checks: each request gives exactly the message shown next to it."""
    import json
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\{.*\})` \| `(RefDrop: .*)` \|$", text, flags=re.M)
    assert len(rows) >= 5
    for request, message in rows:
        with pytest.raises(RefDropError) as info:
            from_args([json.loads(request)])
        assert str(info.value) == message
    known = re.search(r"unknown argument\(s\) strength; known: ([a-z_0-9, ]+)", text).group(1)
    assert known.split(", ") == list(ARG_NAMES)
