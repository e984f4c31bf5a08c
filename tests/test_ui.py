"""The RefDrop panel under gradio 3.41.2 (reForge's version), and its reference-library callbacks."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from lib_refdrop.params import ARG_NAMES, FIELD_OF, FIELDS, RefDropSettings, from_args
from lib_refdrop.reference.store import MANIFEST, PREVIEW, ReferenceStore
from lib_refdrop.reference.writer import format_bytes
from lib_refdrop.webui import panel as ui
from tests.support import fakehost
from tests.support.node import node_binary
from tests.support.refdrop_harness import save_synthetic

JS = Path(__file__).resolve().parents[1] / "javascript" / "refdrop.js"
TOOLTIP_HARNESS = Path(__file__).resolve().parent / "refdrop_tooltip_harness.js"
MASK_CLEAR_HARNESS = Path(__file__).resolve().parent / "refdrop_mask_clear_harness.js"


GENERATION = {"width": 512, "height": 768, "steps": 20, "sampler_name": "Euler a", "scheduler": "Karras",
              "seed": 1234, "prompt": "a red fox in the snow, " * 5}


@pytest.fixture(scope="module")
def saved_library(tmp_path_factory):
    """A library with references "fox" (with preview) and "Cat" (without); tests get copies."""
    root = tmp_path_factory.mktemp("library") / "refs"
    store = ReferenceStore(root)
    save_synthetic(store, "fox", GENERATION, Image.new("RGB", (8, 8), "red"))
    save_synthetic(store, "Cat", GENERATION, None)
    return root


def copy_reference(library: Path, store: ReferenceStore, name: str) -> None:
    shutil.copytree(library / name, store.root / name)


@pytest.fixture
def store(tmp_path):
    return ReferenceStore(tmp_path / "refs")


def build_panel(store, input_accordion=None):
    with gr.Blocks():
        return ui.build(elem_id=lambda item: f"script_txt2img_refdrop_{item}", get_store=lambda: store,
                        input_accordion=input_accordion)


def input_accordion_factory():
    with fakehost.activated("none"):
        from modules.ui_components import InputAccordion
    return InputAccordion


@pytest.mark.parametrize("with_input_accordion", [True, False])
def test_builds_twice_in_arg_order_with_default_settings(store, saved_library, with_input_accordion):
    factory = input_accordion_factory() if with_input_accordion else None
    copy_reference(saved_library, store, "fox")
    for _ in range(2):  # the API calls ui() a second time to read the defaults
        controls = build_panel(store, factory)
        args = controls.args
        assert len(args) == len(ARG_NAMES)
        for name, component in zip(ARG_NAMES, args, strict=True):
            assert component is controls.inputs[name]
            assert component.elem_id.startswith(f"script_txt2img_refdrop_{name}")
        assert from_args([c.value for c in args]) == RefDropSettings()
        assert controls.inputs["reference"].choices == ["fox"]
        sliders = {name: (c.minimum, c.maximum) for name, c in controls.inputs.items() if isinstance(c, gr.Slider)}
        assert sliders == {f.arg: f.bounds for f in FIELDS if f.bounds is not None}  # the table's ranges
    if with_input_accordion:
        assert args[0].accordion_id == "script_txt2img_refdrop_enabled"


def _model_blocks(arch: str) -> set[str]:
    """The names of the attn1 blocks of a U-Net of SD1.5's or SDXL's structure (hostsim's, as the hosts address
    them): the truth the panel's lists are checked against."""
    from tests.support.hostsim import layer_map, make_unet

    prefix = {"input": "IN", "middle": "M", "output": "OUT"}
    return {f"{prefix[layer.block[0]]}{layer.block[1]:02d}" for layer in layer_map(make_unet(arch, "tiny"))}


def test_block_choices_are_the_models_blocks_and_visibility(store):
    controls = build_panel(store)
    blocks = controls.inputs["disabled_blocks"]
    flux = {f"D{i:02d}" for i in range(19)} | {f"S{i:02d}" for i in range(38)}  # Flux.1: 19 double, 38 single
    assert set(ui.SD15_BLOCKS) == _model_blocks("sd15") and set(ui.SDXL_BLOCKS) == _model_blocks("sdxl")
    assert set(ui.FLUX_BLOCKS) == flux
    qwen_image, wan = {f"D{i:02d}" for i in range(60)}, {f"S{i:02d}" for i in range(40)}  # 60 double, 40 single
    assert set(blocks.choices if isinstance(blocks.choices[0], str) else [c[1] for c in blocks.choices]) == (
        _model_blocks("sd15") | _model_blocks("sdxl") | flux | qwen_image | wan)
    assert "SD1.5" in blocks.info and "SDXL" in blocks.info and "D00-D18" in blocks.info
    assert "Qwen-Image D00-D59" in blocks.info and "Wan S00-S39" in blocks.info
    assert controls.inputs["save_name"].placeholder == "automatic: ref-<seed>-<time>"
    assert ui.mode_visibility("Save") == (False, True)
    assert ui.mode_visibility("Use") == (True, False)
    assert controls.extras["save_box"].visible is False and controls.extras["use_box"].visible is True
    assert controls.extras["delete_confirm"].visible is False


def test_every_item_has_a_unique_elem_id_and_a_tooltip_on_the_page(store):
    controls = build_panel(store)
    ids = [getattr(c, "elem_id", None) for c in [*controls.inputs.values(), *controls.extras.values()]]
    named = [i for i in ids if i and i.startswith("script_txt2img_refdrop_")]
    assert len(named) == len(set(named))
    items = {i.removeprefix("script_txt2img_refdrop_") for i in named}
    assert set(ui.ITEM_IDS) <= items | {"advanced"}
    assert set(ui.ITEM_IDS) == set(ui.TOOLTIPS) and all(ui.TOOLTIPS.values())
    assert page_tooltips(controls) == ui.TOOLTIPS  # the text, as the browser reads it from the page


def page_tooltips(controls) -> dict:
    """The tooltips the panel's page carries, read from its HTML as a browser does."""
    from html.parser import HTMLParser

    found = []

    class Reader(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value for name, value in attrs if name == "data-refdrop-tooltips")

    Reader().feed(controls.extras["tooltips"].value)
    assert len(found) == 1, controls.extras["tooltips"].value
    return json.loads(found[0])


def test_the_tooltips_name_what_the_panel_offers():
    """Every storage profile, block group and model family the controls offer is in its tooltip."""
    from lib_refdrop.params import BLOCK_GROUPS
    from lib_refdrop.reference.profiles import PROFILES

    assert set(ui.PROFILE_NOTES) == set(PROFILES)
    assert all(f"{name}: " in ui.TOOLTIPS["profile"] for name in PROFILES)
    assert all(group in ui.TOOLTIPS["disabled_groups"] for group in BLOCK_GROUPS)
    assert ui.TOOLTIPS["disabled_blocks"] == ui.BLOCKS_INFO
    assert all(label in ui.TOOLTIPS["reference"] for label in ("SD1.5", "SDXL", "Flux"))


def test_the_script_sets_the_pages_tooltips_as_titles(store, tmp_path):
    """javascript/refdrop.js takes its text from the page, in both tabs: a title is exactly the Python table's."""
    node = node_binary()
    controls = build_panel(store)
    page = tmp_path / "page.json"
    page.write_text(json.dumps({"attribute": json.dumps(page_tooltips(controls)), "items": list(ui.ITEM_IDS)}),
                    encoding="utf-8")
    done = subprocess.run([node, str(TOOLTIP_HARNESS), str(JS), str(page)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    titles = json.loads(done.stdout)
    assert titles == {"txt2img": ui.TOOLTIPS, "img2img": ui.TOOLTIPS}


def test_clearing_a_painted_mask_removes_its_picture():
    """gradio 3's sketch Clear keeps the picture the strokes were on, which a Use would then refuse as a mask that
    is not black and white: in RefDrop's masks (any slot, either tab) the page's script removes the picture too,
    and leaves the host's own sketches alone."""
    node = node_binary()
    done = subprocess.run([node, str(MASK_CLEAR_HARNESS), str(JS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"script_txt2img_refdrop_mask": ["script_txt2img_refdrop_mask"],
                                       "script_img2img_refdrop_mask_2": ["script_img2img_refdrop_mask_2"],
                                       "img2maskimg": []}


def test_unopenable_store_still_builds(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with gr.Blocks():
        controls = ui.build(get_store=lambda: ReferenceStore(blocker / "refs"))
    assert "cannot open" in controls.extras["status"].value


def test_refresh_and_describe(store, saved_library):
    assert ui.refresh(store, "") == ([], "")
    copy_reference(saved_library, store, "fox")
    copy_reference(saved_library, store, "Cat")
    assert ui.refresh(store, "gone") == (["Cat", "fox"], "gone")

    preview, text = ui.describe(store, "fox")
    assert isinstance(preview, Image.Image) and preview.size == (8, 8) and preview.getpixel((0, 0)) == (255, 0, 0)
    for part in ("SD1.5", "512×768", "20 steps", "Euler a (Karras)", "seed 1234", "“a red fox in the snow", "…",
                 format_bytes(store.manifest("fox")["bytes"]), "profile exact"):
        assert part in text, part
    assert ui.describe(store, "Cat")[0] is None and "seed 1234" in ui.describe(store, "Cat")[1]
    assert "does not exist" in ui.describe(store, "gone")[1]
    assert "No reference selected" in ui.describe(store, "")[1]


def test_describe_broken_manifest(store, saved_library):
    copy_reference(saved_library, store, "fox")
    (store.root / "fox" / MANIFEST).write_text("{", encoding="utf-8")
    preview, text = ui.describe(store, "fox")
    assert preview is None and "corrupt manifest" in text


def test_delete(store, saved_library):
    copy_reference(saved_library, store, "fox")
    copy_reference(saved_library, store, "Cat")
    message, choices, value = ui.delete(store, "fox")
    assert "Deleted" in message and choices == ["Cat"] and value == ""
    assert not (store.root / "fox").exists()
    message, choices, value = ui.delete(store, "fox")
    assert "not found" in message and value == "fox"
    assert "Select" in ui.delete(store, "")[0]


def test_rename(store, saved_library):
    copy_reference(saved_library, store, "fox")
    copy_reference(saved_library, store, "Cat")
    message, choices, value = ui.rename(store, "fox", "red fox")
    assert "Renamed" in message and choices == ["Cat", "red fox"] and value == "red fox"
    assert store.manifest("red fox")["name"] == "red fox"
    message, choices, value = ui.rename(store, "Cat", "red fox")
    assert "already exists" in message and value == "Cat"
    message, _, value = ui.rename(store, "Cat", "../escape")
    assert "may not contain" in message and value == "Cat" and store.exists("Cat")
    assert "Select" in ui.rename(store, "", "x")[0]


def test_describe_does_not_follow_a_preview_link(store, saved_library, tmp_path):
    copy_reference(saved_library, store, "fox")
    elsewhere = tmp_path / "secret.png"
    Image.new("RGB", (4, 4), "green").save(elsewhere)
    (store.root / "fox" / PREVIEW).unlink()
    try:
        (store.root / "fox" / PREVIEW).symlink_to(elsewhere)
    except OSError as exc:
        pytest.skip(f"no symbolic links here: {exc}")
    preview, text = ui.describe(store, "fox")
    assert preview is None
    assert text.startswith("⚠️ RefDrop: ") and "'fox'" in text


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_describe_does_not_hang_on_a_fifo_preview(store, saved_library):
    copy_reference(saved_library, store, "fox")
    (store.root / "fox" / PREVIEW).unlink()
    os.mkfifo(store.root / "fox" / PREVIEW)
    answer = []
    worker = threading.Thread(target=lambda: answer.append(ui.describe(store, "fox")), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader so the thread ends, then fail
        with open(store.root / "fox" / PREVIEW, "wb"):
            pass
        pytest.fail("describe() blocked on a FIFO preview")
    preview, text = answer[0]
    assert preview is None and "'fox'" in text and text.startswith("⚠️ RefDrop: ")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and holds almost none: decoders read the size first."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\nnot a png after all", "not a readable PNG"),
    (png_header(8, 8), "not a readable PNG"),  # pixel data cut short
    (b"GIF89a" + b"\x00" * 20, "not a readable PNG"),
    (png_header(9000, 9000), "9000×9000 pixels, too large"),  # 81 M pixels, 243 MB decoded
    (png_header(60_000, 60_000), "exceeds limit"),  # Pillow's own decompression-bomb check
])
def test_describe_a_preview_that_cannot_be_shown(store, saved_library, content, message):
    copy_reference(saved_library, store, "fox")
    (store.root / "fox" / PREVIEW).write_bytes(content)
    preview, text = ui.describe(store, "fox")
    assert preview is None and message in text and "'fox'" in text


# -- sources, images, masks and more references ------------------------------------------------------------------

def build_page(store):
    with gr.Blocks() as demo:
        controls = ui.build(elem_id=lambda item: f"script_txt2img_refdrop_{item}", get_store=lambda: store)
    return demo, controls


def wired(demo, component, trigger: str):
    """Every (function, dependency) gradio runs on ``trigger`` of ``component``, in the order they were wired."""
    return [(demo.fns[index].fn, dependency) for index, dependency in enumerate(demo.dependencies)
            if component._id in dependency["targets"] and dependency["trigger"] == trigger]


def visible(update) -> bool:
    return update["visible"]


def test_the_new_inputs_under_gradio_3(store):
    controls = build_panel(store)
    i = controls.inputs
    for name in ("source", "source_2", "source_3"):
        assert i[name].choices == [("Saved reference", "reference"), ("First of the batch", "batch"),
                                   ("Uploaded picture", "image")] and i[name].value == "reference"
    assert i["save_from"].choices == [("This generation", "generation"), ("An uploaded picture", "image")]
    for name in ("image", "image_2", "image_3", "mask", "mask_2", "mask_3"):
        assert (i[name].type, i[name].image_mode, i[name].value) == ("pil", "RGBA", None)
    assert [i[name].tool for name in ("mask", "mask_2", "mask_3")] == ["sketch"] * 3  # painted in the panel
    # strokes show in the colour the mask holds (the subject is white, as the tooltip says)
    assert [i[name].brush_color.lower() for name in ("mask", "mask_2", "mask_3")] == ["#ffffff"] * 3
    assert i["image"].tool != "sketch"
    assert (i["rfg_2"].value, i["rfg_3"].value, i["rfg_2"].minimum, i["rfg_2"].maximum) == (0.0, 0.0, -1.0, 1.0)
    assert i["image_prompt"].placeholder == ui.IMAGE_PROMPT_PLACEHOLDER


@pytest.mark.parametrize("mode, source, save_from, more, shown", [
    ("Use", "reference", "generation", ("reference", 0, "reference", 0), {"use_box", "use_advanced", "reference_box",
                                                                           "use_more", "mask_keep_box"}),
    ("Use", "image", "generation", ("reference", 0, "reference", 0), {"use_box", "use_advanced", "image_box",
                                                                       "prompt_box", "use_more"}),
    ("Use", "batch", "image", ("reference", 0, "reference", 0), {"use_box", "use_advanced", "use_more",
                                                                  "batch_hint"}),
    ("Use", "reference", "generation", ("reference", 0.3, "image", 0), {
        "use_box", "use_advanced", "reference_box", "use_more", "mask_keep_box", "slot_box_2", "slot_3"}),
    ("Use", "reference", "generation", ("reference", 0.3, "image", -0.2), {
        "use_box", "use_advanced", "reference_box", "use_more", "mask_keep_box", "slot_box_2", "slot_3",
        "slot_box_3", "prompt_box"}),
    ("Use", "image", "generation", ("batch", "0.5", "image", 0), {  # an off slot's picture needs no prompt
        "use_box", "use_advanced", "image_box", "prompt_box", "use_more", "slot_box_2", "slot_3", "batch_hint"}),
    ("Use", "reference", "generation", ("reference", 0, "reference", 0.4), {  # slot 3 on alone (pasted) shows
        "use_box", "use_advanced", "reference_box", "use_more", "mask_keep_box", "slot_3", "slot_box_3"}),
    ("Save", "image", "generation", ("image", 0, "image", 0), {"save_box", "save_advanced"}),
    ("Save", "reference", "image", ("batch", 1, "reference", 0), {
        "save_box", "save_advanced", "reference_box", "image_box", "prompt_box", "mask_keep_box", "slot_box_2",
        "slot_3"}),
])
def test_layout_shows_what_the_mode_and_sources_use(mode, source, save_from, more, shown):
    visibility = ui.layout_visibility(mode, source, save_from, *more)
    assert set(visibility) == set(ui.LAYOUT_BOXES)
    # always true inside their boxes (a box inside a hidden one may say True): slot 2's slider, and each
    # further slot's dropdown or picture by its source
    shown |= {"slot_2", *(f"{box}_{k}" for k, slot_source in zip((2, 3), more[::2], strict=True)
                          for box, source_shown in (("reference_box", "reference"), ("image", "image"))
                          if slot_source == source_shown)}
    assert {box for box, on in visibility.items() if on} == shown


def test_each_layout_control_updates_the_boxes(store):
    demo, controls = build_page(store)
    i, x = controls.inputs, controls.extras
    parts = {**i, **x}
    layout = [i[name] for name in ("mode", "source", "save_from", "source_2", "rfg_2", "source_3", "rfg_3")]
    for control in layout:
        fn, dependency = wired(demo, control, "change")[0]
        assert dependency["inputs"] == [c._id for c in layout]
        assert dependency["outputs"] == [parts[box]._id for box in ui.LAYOUT_BOXES]
        updates = dict(zip(ui.LAYOUT_BOXES, fn("Save", "reference", "image", "image", 0.3, "batch", 0), strict=True))
        assert visible(updates["image_box"]) and not visible(updates["use_box"])
        assert [visible(updates[box]) for box in ("reference_box_2", "image_2", "slot_box_2", "slot_3")] == [
            False, True, True, True]
    built = ui.layout_visibility(*(parts[name].value for name in ui.LAYOUT_ARGS))
    assert all(parts[box].visible == built[box] for box in ui.LAYOUT_BOXES)  # the page starts as the layout says


def test_an_unused_slot_is_one_slider_and_slot_3_waits_for_slot_2(store):
    """With More references open and both further slots off, only slot 2's slider shows."""
    controls = build_panel(store)
    x = controls.extras
    assert x["slot_2"].visible and not x["slot_box_2"].visible and not x["slot_3"].visible
    shown = ui.layout_visibility("Use", "reference", "generation", "reference", 0, "reference", 0)
    assert shown["slot_2"] and not shown["slot_box_2"] and not shown["slot_3"] and not shown["slot_box_3"]
    shown = ui.layout_visibility("Use", "reference", "generation", "reference", 0.3, "reference", 0)
    assert shown["slot_box_2"] and shown["slot_3"] and not shown["slot_box_3"]


def test_a_slot_that_is_on_shows_in_the_closed_accordions_title(store):
    """A pasted infotext (or a slider) that turns slot 2 or 3 on opens More references and names the slot in its
    title; turning them off renames it and leaves it open."""
    demo, controls = build_page(store)
    i, x = controls.inputs, controls.extras
    for k in (2, 3):
        (fn, dependency), = [(f, d) for f, d in wired(demo, i[f"rfg_{k}"], "change")
                             if d["outputs"] == [x["more"]._id]]
        assert dependency["inputs"] == [i["rfg_2"]._id, i["rfg_3"]._id]
        assert fn(0.3, 0) == gr.update(label="More references (reference 2: c = 0.3)", open=True)
        assert fn(0, -0.25) == gr.update(label="More references (reference 3: c = -0.25)", open=True)
        assert fn(0.3, 0.2)["label"] == "More references (reference 2: c = 0.3; reference 3: c = 0.2)"
        assert fn(0, 0) == gr.update(label="More references")
    assert x["more"].label == "More references" and x["more"].open is False


def test_the_status_line_shows_the_last_save_in_save_mode_only(store):
    saved = "RefDrop: saved reference 'hero'"
    with gr.Blocks() as page:
        built = ui.build(get_store=lambda: store, get_status=lambda: saved)
    assert built.extras["status"].value == ""  # the page starts in Use mode
    (fn, dependency), = [(f, d) for f, d in wired(page, built.inputs["mode"], "change")
                         if d["outputs"] == [built.extras["status"]._id]]
    assert fn("Use") == "" and fn("Save") == saved
    (refresh, dependency), = wired(page, built.extras["refresh"], "click")[:1]
    assert dependency["inputs"][-1] == built.inputs["mode"]._id
    assert refresh("", built.extras["shown"].value, "Use")[1] == ""
    _, status, shown = refresh("", built.extras["shown"].value, "Save")
    assert status == saved and shown["status"] == saved


def test_every_choice_script_info_lists_is_accepted(store):
    """GET /sdapi/v1/script-info lists the first item of a (label, value) choice (the hosts' modules/scripts.py,
    ``x[0] if isinstance(x, tuple) else x``): an API client that sends what it lists gets the value it names."""
    controls = build_panel(store)
    listed = 0
    for name, component in controls.inputs.items():
        for choice in getattr(component, "choices", None) or []:
            label, value = choice if isinstance(choice, tuple) else (choice, choice)
            field = FIELD_OF[name]
            assert field.parse(label, name) == field.parse(value, name), (name, label)
            listed += label != value
    assert listed == 3 * 3 + 2  # each Source radio's and Save from's labels differ from their values


def test_the_batch_source_says_when_it_does_nothing(store):
    """With one image per generation, the batch's first image has nothing to steer: the panel says so."""
    controls = build_panel(store)
    hint = controls.extras["batch_hint"]
    assert not hint.visible and "batch size" in hint.value and "batch count" in hint.value
    assert "batch size" in ui.TOOLTIPS["batch_hint"] and "*" not in ui.TOOLTIPS["batch_hint"]  # a title is plain text
    assert "with one image it changes nothing" in ui.TOOLTIPS["source"]
    assert ui.layout_visibility("Use", "batch", "generation", "reference", 0, "reference", 0)["batch_hint"]
    assert ui.layout_visibility("Use", "reference", "generation", "batch", 0.2, "reference", 0)["batch_hint"]
    assert not ui.layout_visibility("Use", "reference", "generation", "batch", 0, "reference", 0)["batch_hint"]
    assert not ui.layout_visibility("Save", "batch", "generation", "batch", 0.2, "reference", 0)["batch_hint"]


def test_slot_dropdowns_refresh_with_their_own_button_and_with_slot_1s(store, saved_library):
    demo, controls = build_page(store)
    i, x = controls.inputs, controls.extras
    copy_reference(saved_library, store, "fox")
    (refresh_2, dependency), = wired(demo, x["refresh_2"], "click")
    assert dependency["outputs"] == [i["reference_2"]._id]
    assert refresh_2("gone") == gr.update(choices=["fox"], value="gone")
    copy_reference(saved_library, store, "Cat")
    for button in ("refresh", "delete_confirm", "rename"):
        fn, dependency = wired(demo, x[button], "click")[-1]
        assert dependency["outputs"] == [i["reference_2"]._id, i["reference_3"]._id]
        assert fn("fox", "") == [gr.update(choices=["Cat", "fox"])] * 2  # the picks stay


def test_the_paint_button_puts_the_slots_picture_in_its_mask(store, saved_library):
    copy_reference(saved_library, store, "fox")
    demo, controls = build_page(store)
    i, x = controls.inputs, controls.extras
    picture = Image.new("RGBA", (6, 4), "blue")
    for suffix in ("", "_2", "_3"):
        (paint, dependency), = wired(demo, x[f"mask_paint{suffix}"], "click")
        assert dependency["inputs"] == [i[f"{name}{suffix}"]._id for name in ("source", "reference", "image")]
        assert dependency["outputs"] == [i[f"mask{suffix}"]._id]
        preview = paint("reference", "fox", None)["value"]
        assert preview.size == (8, 8) and preview.getpixel((0, 0)) == (255, 0, 0)
        assert paint("image", "fox", picture)["value"] is picture
        assert paint("batch", "fox", picture) == gr.update() == paint("reference", "", None)
    assert ui.mask_canvas(store, "reference", "gone", None) is None


def test_what_the_panel_sends_is_valid_input(store):
    """The values gradio 3 hands the script for these controls: PIL images, a sketch dict for a painted mask."""
    controls = build_panel(store)
    values = {name: component.value for name, component in controls.inputs.items()}
    strokes = Image.new("RGB", (8, 8), "black")
    strokes.paste((255, 255, 255), (2, 2, 6, 6))
    values.update(enabled=True, source="image", image=Image.new("RGBA", (8, 8), (0, 0, 0, 0)),
                  mask={"image": Image.new("RGBA", (8, 8), "green"), "mask": strokes},
                  rfg_2=0.3, source_2="batch", mask_3={"image": None, "mask": None})
    settings = from_args([values[name] for name in ARG_NAMES])
    first, second = settings.slots
    assert first.image.getpixel((0, 0)) == (255, 255, 255) and first.mask.getbbox() == (2, 2, 6, 6)
    assert (second.index, second.source) == (2, "batch") and settings.slot_values[2].mask is None


def test_a_mask_kept_with_a_saved_reference(store, saved_library):
    """The library view gives a saved reference a mask (the engine uses it when a Use brings none)."""
    copy_reference(saved_library, store, "fox")
    demo, controls = build_page(store)
    i, x = controls.inputs, controls.extras
    (keep, dependency), = wired(demo, x["mask_keep"], "click")
    assert dependency["inputs"] == [i["reference"]._id, i["mask"]._id]
    assert dependency["outputs"] == [x["status"]._id, x["info"]._id]
    strokes = Image.new("RGB", (8, 8), "black")
    strokes.paste((255, 255, 255), (1, 2, 5, 7))
    status, info = keep("fox", {"image": Image.new("RGB", (8, 8), "red"), "mask": strokes})
    assert "keeps this subject mask" in status and info.endswith(" · subject mask kept")
    kept = Image.open(io.BytesIO(store.read_mask("fox")))
    assert kept.mode == "L" and kept.getbbox() == (1, 2, 5, 7)
    assert "first" in keep("fox", None)[0] and "Select" in keep("", strokes)[0]
    assert "not a PNG, JPEG or WebP" in keep("fox", base64.b64encode(b"GIF89a" + bytes(20)).decode())[0]
    (forget, _), = wired(demo, x["mask_forget"], "click")
    status, info = forget("fox")
    assert "keeps no subject mask" in status and "mask" not in info and store.read_mask("fox") is None
    assert "'gone' not found" in ui.keep_mask(store, "gone", strokes) and not (store.root / "gone").exists()
    assert "'gone' not found" in ui.forget_mask(store, "gone")
