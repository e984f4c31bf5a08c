"""The RefDrop panel: one always-visible accordion, built gradio-3 style (reForge runs gradio 3.41.2, Forge 4.40
with a shim that accepts gradio-3 code).

``build`` only creates components and wires their events: no registration, no globals, so the host can call it
once per tab and the API once more to read the defaults. The reference-library callbacks are plain functions of
a ``ReferenceStore`` (``refresh``, ``describe``, ``delete``, ``rename``, ``poll``, ``export_file``, ``import_file``)
so they are tested on a temporary store. Tooltips are ``TOOLTIPS``, keyed by the item ids below, built from the
same tables as the controls' choices and carried by the page as JSON (``tooltips_html``); ``javascript/refdrop.js``
sets them as the elements' titles, and clicks the hidden poll button while a Save is written in the background (the
host gives scripts no event after a generation).
"""

from __future__ import annotations

import contextlib
import datetime
import html
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr
from PIL import Image

from .. import families
from ..errors import RefDropError
from ..families import FAMILY_BLOCKS
from ..images import parse_mask
from ..params import (
    ARG_NAMES,
    BLOCK_GROUPS,
    DEFAULT_RFG,
    FIELD_OF,
    MODES,
    SAVE_FROM,
    SAVE_FROM_LABELS,
    SLOTS,
    SOURCE_LABELS,
    SOURCES,
    as_number,
    block_sort_key,
)
from ..reference import bundle
from ..reference.manifest import ReferenceInfo, reference_info
from ..reference.profiles import PROFILES
from ..reference.writer import format_bytes

SD15_BLOCKS, SDXL_BLOCKS, FLUX_BLOCKS = (FAMILY_BLOCKS[family] for family in ("sd15", "sdxl", "flux"))
BLOCK_CHOICES = tuple(sorted({b for blocks in FAMILY_BLOCKS.values() for b in blocks}, key=block_sort_key))


def _listed(blocks: tuple[str, ...]) -> str:
    inputs = " ".join(b for b in blocks if not b.startswith("OUT"))
    outputs = [b for b in blocks if b.startswith("OUT")]
    return f"{inputs} {outputs[0]}-{outputs[-1]}"


def _span(blocks: tuple[str, ...], prefix: str) -> str:
    named = [b for b in blocks if b.rstrip("0123456789") == prefix]
    return f"{named[0]}-{named[-1]}"


BLOCKS_INFO = (
    f"Blocks that keep their own attention. SD1.5 has {_listed(SD15_BLOCKS)}; SDXL has {_listed(SDXL_BLOCKS)}; "
    f"Flux and Chroma have {_span(FLUX_BLOCKS, 'D')} (double-stream) and {_span(FLUX_BLOCKS, 'S')} (single-stream); "
    f"Qwen-Image {_span(FAMILY_BLOCKS['qwen_image'], 'D')}; Wan {_span(FAMILY_BLOCKS['wan'], 'S')} (S00-S29 in its "
    "1.3B and 2.2 5B). A block the model lacks is ignored."
)
# What each offered storage profile trades (the panel's and Settings' choices, reference/profiles.py PROFILES).
PROFILE_NOTES = {
    "lean": "each layer's input in int8 at every 2nd step, zstd: 1/10 of exact's bytes (Flux: 1/8)",
    "exact": "K and V as computed: Use at the Save's settings reproduces the Save bit for bit",
    "balanced": "int8: 1/2 of exact's bytes",
    "compact": "int8 at every 5th step: 1/10 of exact's bytes",
    "trajectory": "the latents and conditioning only, a few MB: a Use makes one more model call per step",
}
PROFILE_INFO = "Empty: the default from Settings → RefDrop. " + "; ".join(
    f"{name}: {PROFILE_NOTES[name]}" for name in PROFILES)
SAVE_NAME_PLACEHOLDER = "automatic: ref-<seed>-<time>"
MAX_PREVIEW_PIXELS = 8192 * 8192  # decoded size of a preview, checked before decoding (a PNG can be a pixel bomb)
MORE_SLOTS = SLOTS[1:]
MORE_LABEL = "More references"
IMAGE_PROMPT_PLACEHOLDER = "empty: no prompt"
ITEM_IDS = (
    "enabled", "mode", "rfg", "reference", "refresh", "preview", "info", "delete", "delete_confirm",
    "delete_cancel", "rename_to", "rename", "save_name", "status", "advanced", "disabled_groups",
    "disabled_blocks", "skip_first_up", "step_start", "step_end", "apply_hires", "overwrite", "profile",
    "source", "save_from", "image", "image_prompt", "mask_box", "mask", "mask_paint", "mask_keep", "mask_forget",
    "more", "batch_hint", "share", "export", "export_file", "import_file",
    *(f"{item}_{k}" for k in MORE_SLOTS for item in ("source", "rfg", "reference", "refresh", "image", "mask_box",
                                                    "mask", "mask_paint")),
)

BATCH_HINT = (f"**{SOURCE_LABELS['batch']}** acts only when this generation makes more than one image (batch size or "
              "batch count above 1): the first is generated plainly, the others follow it.")
_FAMILIES = ", ".join(families.LABELS[f] for f in ("sd15", "sdxl", *families.DIT_FAMILIES))
_SLOT_TOOLTIPS = {
    "source_{k}": "Where reference {k} comes from (see Source above). Shown while reference {k} is on.",
    "rfg_{k}": "RFG coefficient of reference {k}; 0 = reference {k} is off.",
    "reference_{k}": "The saved reference used as reference {k}.",
    "refresh_{k}": "Reload the list of saved references.",
    "image_{k}": "The picture of reference {k} when its source is Image. PNG, JPEG or WebP, up to 4096×4096.",
    "mask_box_{k}": "Which part of reference {k} the generation attends to.",
    "mask_{k}": "Subject mask of reference {k}: white = attended, black = not. Empty: the whole reference.",
    "mask_paint_{k}": "Put reference {k}'s picture (its preview, or its image) in its mask to paint the subject on it.",
}
# The title of each item of the panel (ITEM_IDS): what javascript/refdrop.js shows on hover.
TOOLTIPS = {
    "enabled": "RefDrop: Save records the self-attention of a generation as a named reference; Use blends it into "
               "new generations.",
    "mode": "Save: record this generation as a reference. Use: steer this generation with a saved reference.",
    "rfg": "RFG coefficient c: out = c·Attn(Q, K_ref, V_ref) + (1−c)·Attn(Q, K, V). Positive pulls toward the "
           "reference (0.2–0.6 typical; 0.3–0.4 for a consistent subject, 0.2 for simple ones), negative pushes away "
           "for more diversity (−0.2 to −0.3). 0 = exactly a normal generation.",
    "reference": f"The saved reference to blend in. It must come from a model of the same family ({_FAMILIES}).",
    "refresh": "Reload the list of saved references and, in Save mode, the status of the last Save.",
    "preview": "The image the reference was saved from.",
    "info": "Model family, size, steps, sampler, seed, prompt, disk size and date of the selected reference.",
    "delete": "Delete the selected reference from disk (asks for confirmation).",
    "delete_confirm": "Delete the selected reference for good.",
    "delete_cancel": "Keep the reference.",
    "rename_to": "New name for the selected reference: letters, digits, spaces and _ - . ( ) +.",
    "rename": "Rename the selected reference.",
    "share": "The selected reference as one file to share, and a shared file to add to the library.",
    "export": "Write the selected reference as one file, <name>.refdrop.safetensors, to download below: its "
              "features, manifest, preview and kept mask. A trajectory reference is a few MB.",
    "export_file": "The exported reference file: download it and share it. It needs a model of the same family.",
    "import_file": "Add a shared .refdrop.safetensors file to the library under its file name (a name that is "
                   "taken is refused). Every part of it is checked first. Dropping the file into the store folder "
                   "does the same when the list is next read.",
    "save_name": "Name of the new reference. Empty: ref-<seed>-<time>.",
    "status": "Result of the last Save (in Save mode), delete, rename or kept mask.",
    "advanced": "Where and when RefDrop acts, and how references are stored.",
    "disabled_groups": "Whole parts of the model that keep their own attention: on a U-Net input (down-sampling), "
                       "middle, output (up-sampling); on Flux and Chroma double (double-stream blocks), single "
                       "(single-stream).",
    "disabled_blocks": BLOCKS_INFO,
    "skip_first_up": "Leave the first up-sampling block with attention alone (the paper's ablation): the result "
                     "copies less of the reference's pose and background while keeping its subject.",
    "step_start": "Fraction of the sampling schedule where RefDrop starts (0 = from the first step).",
    "step_end": "Fraction of the sampling schedule where RefDrop stops (1 = until the last step). Ending early keeps "
                "the reference's layout influence and frees the details.",
    "apply_hires": "Also blend the reference during the hires fix pass (the reference is looked up by noise level).",
    "overwrite": "Replace a reference that already has this name.",
    "profile": f"How a Save stores the features. {PROFILE_INFO}.",
    "source": f"Where the reference comes from. {SOURCE_LABELS['reference']}: one from the library. "
              f"{SOURCE_LABELS['batch']}: the first image is generated plainly and every other image of this "
              "generation (batch size and batch count) attends to it; nothing is saved, and with one image it "
              f"changes nothing. {SOURCE_LABELS['image']}: the picture below, evaluated alongside every step "
              "(nothing is saved).",
    "batch_hint": f"Shown while a source is {SOURCE_LABELS['batch']}: it needs a batch size or batch count above 1.",
    "save_from": f"{SAVE_FROM_LABELS['generation']}: record the image being generated. {SAVE_FROM_LABELS['image']}: "
                 "record the picture below, evaluated with the loaded model, as a reference that later Uses read "
                 "like any other.",
    "image": "The picture of a Save from an image, or of the Image source. PNG, JPEG or WebP, up to 4096×4096.",
    "image_prompt": "The prompt every picture of a Save from an image or of an Image source is evaluated with "
                    "(empty: no prompt), as the prompt of a generation would be.",
    "mask_box": "Which part of the reference the generation attends to.",
    "mask": "White = the subject (attended), black = not attended. Paint over the reference's picture, or upload a "
            "black-and-white mask of its aspect ratio. Empty (Clear or ×): the whole reference.",
    "mask_paint": "Put the reference's picture (its preview, or the image) in the mask to paint the subject on it.",
    "mask_keep": "Keep this mask with the selected saved reference: every Use of it without a mask of its own uses it.",
    "mask_forget": "Remove the mask kept with the selected saved reference.",
    "more": "Up to two more references, each with its own coefficient: "
            "Σ c_j·Attn(Q, K_j, V_j) + (1 − Σ c_j)·Attn(Q, K, V). The title names the ones that are on; reference 3 "
            "is offered once reference 2 is on.",
    **{item.format(k=k): text.format(k=k) for k in MORE_SLOTS for item, text in _SLOT_TOOLTIPS.items()},
}


def tooltips_html() -> str:
    """The page's copy of ``TOOLTIPS``: JSON in a data attribute of a hidden element, read by javascript/refdrop.js
    (no copy of the text in the script that could go stale)."""
    return f'<div hidden data-refdrop-tooltips="{html.escape(json.dumps(TOOLTIPS), quote=True)}"></div>'



@dataclass
class Controls:
    """The panel's components: ``inputs`` by argument name, everything else (buttons, preview) in ``extras``."""

    inputs: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    @property
    def args(self) -> list:
        """The input components in ``settings.ARG_NAMES`` order: what ``Script.ui`` returns."""
        return [self.inputs[name] for name in ARG_NAMES]


# -- the reference library, as plain functions of a store -------------------------------------------------

def reference_choices(store) -> list[str]:
    bundle.adopt_received(store)  # reference files dropped into the store's folder
    return list(store.names())


def refresh(store, current: str | None) -> tuple[list[str], str]:
    """Fresh dropdown choices; the current value is kept even if it is gone (``describe`` then says so)."""
    return reference_choices(store), current or ""


def describe(store, name: str | None) -> tuple[Image.Image | None, str]:
    """(preview image or None, one info line) for the reference ``name``."""
    if not name:
        return None, "No reference selected. Generate one in **Save** mode: it is listed here once written."
    try:
        if not store.exists(name):
            return None, f"⚠️ Reference **{name}** does not exist (deleted or renamed?). Pick another one; 🔄 refreshes."
        manifest = store.manifest(name)
        preview = decode_preview(name, store.read_preview(name))
    except RefDropError as exc:
        return None, f"⚠️ {exc}"
    return preview, info_line(reference_info(manifest)) + _kept_mask_note(store, name)


def _kept_mask_note(store, name: str) -> str:
    try:
        kept = store.read_mask(name) is not None
    except RefDropError as exc:
        return f" · ⚠️ {exc}"
    return " · subject mask kept" if kept else ""


def keep_mask(store, name: str | None, value) -> str:
    """Keep the mask the panel holds with the saved reference ``name``: a Use without a mask of its own uses it."""
    if not name:
        return "Select a reference to keep the mask with."
    try:
        if not store.exists(name):
            return store.missing_message(name)
        mask = parse_mask(value, "mask")
        if mask is None:
            return "Paint or upload a subject mask first."
        png = io.BytesIO()
        mask.save(png, "PNG")
        store.set_mask(name, png.getvalue())
    except RefDropError as exc:
        return str(exc)
    return f"Reference **{name}** keeps this subject mask: a Use of it without a mask of its own uses it."


def forget_mask(store, name: str | None) -> str:
    if not name:
        return "Select a reference whose kept mask to remove."
    try:
        if not store.exists(name):
            return store.missing_message(name)
        store.set_mask(name, None)
    except RefDropError as exc:
        return str(exc)
    return f"Reference **{name}** keeps no subject mask now."


def decode_preview(name: str, data: bytes | None) -> Image.Image | None:
    """The preview PNG as an image for gradio, decoded from the bytes the store read (given a path, gradio would
    open whatever the path leads to)."""
    if data is None:
        return None
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        too_large = image.width * image.height > MAX_PREVIEW_PIXELS
        if not too_large:
            image.load()
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    except Exception as exc:  # noqa: BLE001 - a decoder fed untrusted bytes raises many kinds; none may escape
        raise RefDropError(f"RefDrop: reference '{name}' has a preview that is not a readable PNG ({exc}); "
                           "it is not shown") from None
    if too_large:
        raise RefDropError(f"RefDrop: reference '{name}' has a preview of {image.width}×{image.height} pixels, "
                           "too large to show")
    return image


def info_line(info: ReferenceInfo) -> str:
    parts = [families.label(info.family)]
    if info.width and info.height:
        parts.append(f"{info.width}×{info.height}")
    if info.steps:
        parts.append(f"{info.steps} steps")
    if info.sampler:
        scheduler = info.scheduler
        parts.append(f"{info.sampler} ({scheduler})" if scheduler and scheduler != "Automatic" else info.sampler)
    if info.seed is not None:
        parts.append(f"seed {info.seed}")
    prompt = (info.prompt or "").replace("\n", " ").strip()
    if prompt:
        parts.append(f"“{prompt[:60]}{'…' if len(prompt) > 60 else ''}”")
    if info.bytes is not None:
        parts.append(format_bytes(info.bytes))
    if info.profile:
        parts.append(f"profile {info.profile}")
    if info.created:
        try:
            parts.append(datetime.datetime.fromisoformat(info.created).strftime("%Y-%m-%d %H:%M"))
        except ValueError:
            parts.append(info.created)
    return " · ".join(parts)


def delete(store, name: str | None) -> tuple[str, list[str], str]:
    """(message, new choices, new value). The UI asks for confirmation before calling this."""
    if not name:
        return "Select a reference to delete.", reference_choices(store), ""
    try:
        store.delete(name)
    except RefDropError as exc:
        return str(exc), reference_choices(store), name
    return f"Deleted reference **{name}**.", reference_choices(store), ""


def rename(store, old: str | None, new: str | None) -> tuple[str, list[str], str]:
    """(message, new choices, new value)."""
    if not old:
        return "Select a reference to rename.", reference_choices(store), ""
    try:
        name = store.rename(old, new or "")
    except RefDropError as exc:
        return str(exc), reference_choices(store), old
    return f"Renamed **{old}** to **{name}**.", reference_choices(store), name


_exports: list[str] = []  # this process's export folders: each is removed when the next one is made


def export_file(store, name: str | None) -> tuple[str | None, str]:
    """(the path of reference ``name`` written as one file, for gradio to serve, or None; a message). The file is
    written to a fresh temporary folder, which gradio copies it out of; the previous export's folder goes."""
    if not name:
        return None, "Select a reference to export."
    while _exports:
        shutil.rmtree(_exports.pop(), ignore_errors=True)
    folder = tempfile.mkdtemp(prefix="refdrop-export-")
    _exports.append(folder)
    try:
        path = bundle.export_reference(store, name, folder)
    except RefDropError as exc:
        return None, str(exc)
    return str(path), (f"Reference **{name}** is one file of {format_bytes(path.stat().st_size)}: download "
                       f"**{path.name}** below. It works with models of the same family.")


def import_file(store, upload) -> tuple[str, list[str], str | None]:
    """(message, new choices, the imported name or None) for a file uploaded to the panel (gradio 3 gives a
    temporary file object, gradio 4 a path; both keep the uploaded file's name). It is stored under its file name
    (``cat.refdrop.safetensors`` -> ``cat``), else the name it carries; a name that is taken is refused."""
    path = getattr(upload, "name", upload)
    if not path:
        return "Choose a .refdrop.safetensors file to import.", reference_choices(store), None
    file = os.path.basename(path)
    try:
        name = bundle.import_reference(store, path, bundle.name_of_file(file), label=file)
    except RefDropError as exc:
        return str(exc), reference_choices(store), None
    return f"Imported **{file}** as reference **{name}**.", reference_choices(store), name


def poll(store, status: str, shown: dict) -> tuple[list[str] | None, str | None, dict]:
    """What changed since the panel last showed ``shown`` (``{"choices", "status", "polls"}``): (new choices or
    None, new status or None, what the panel shows now). ``polls`` counts the answers, so the page can tell an
    answer from its absence even when nothing changed."""
    choices = reference_choices(store)
    now = {"choices": choices, "status": status, "polls": shown.get("polls", 0) + 1}
    return (
        None if choices == shown.get("choices") else choices,
        None if status == shown.get("status") else status,
        now,
    )


def mode_visibility(mode: str) -> tuple[bool, bool]:
    """(Use-only controls visible, Save-only controls visible)."""
    return mode != "Save", mode == "Save"


# The controls the layout follows (argument names), and the parts it shows or hides.
LAYOUT_ARGS = ("mode", "source", "save_from", *(f"{arg}_{k}" for k in MORE_SLOTS for arg in ("source", "rfg")))
LAYOUT_BOXES = ("use_box", "save_box", "use_advanced", "save_advanced", "reference_box", "image_box", "prompt_box",
                "use_more", "mask_keep_box", "batch_hint",
                *(f"{box}_{k}" for k in MORE_SLOTS for box in ("slot", "slot_box", "reference_box", "image")))


def slot_on(rfg) -> bool:
    """A further slot is on while its coefficient is not 0 (what ``params`` reads from the same value)."""
    number = as_number(rfg)
    return number is not None and number != 0


def layout_visibility(mode: str, source: str, save_from: str, *more: str | float) -> dict[str, bool]:
    """Which parts of the panel show, by ``LAYOUT_BOXES`` name, from the values of ``LAYOUT_ARGS`` (``more``: the
    source and coefficient of slots 2 and 3). The image input serves slot 1's live image in a Use and the picture
    of a Save from an image; the image prompt serves every image. A further slot shows its source, reference and
    mask only while it is on, and slot 3 shows once slot 2 (or itself) is on: an unused slot is one slider."""
    use, save = mode_visibility(mode)
    slots = {k: (more[2 * n], slot_on(more[2 * n + 1])) for n, k in enumerate(MORE_SLOTS)}
    image = (use and source == "image") or (save and save_from == "image")
    on_sources = {slot_source for slot_source, on in slots.values() if on}
    shown = {
        "use_box": use, "save_box": save, "use_advanced": use, "save_advanced": save,
        "reference_box": source == "reference",  # inside use_box
        "image_box": image,
        "prompt_box": image or (use and "image" in on_sources),
        "use_more": use,
        "mask_keep_box": source == "reference",  # inside use_more: keep slot 1's mask with its saved reference
        "batch_hint": use and "batch" in {source, *on_sources},
    }
    earlier_on = False
    for k, (slot_source, on) in slots.items():
        shown |= {f"slot_{k}": k == MORE_SLOTS[0] or earlier_on or on, f"slot_box_{k}": on,
                  f"reference_box_{k}": slot_source == "reference", f"image_{k}": slot_source == "image"}
        earlier_on = earlier_on or on
    return shown


def more_title(*rfgs) -> tuple[str, bool]:
    """(the More references accordion's title, whether any further slot is on) for the coefficients of slots 2
    and 3: the title names the slots that are on, so a pasted or kept slot shows while the accordion is closed."""
    on = [f"reference {k}: c = {as_number(rfg):g}" for k, rfg in zip(MORE_SLOTS, rfgs, strict=True) if slot_on(rfg)]
    return (f"{MORE_LABEL} ({'; '.join(on)})" if on else MORE_LABEL), bool(on)


def status_shown(mode: str, status: str) -> str:
    """The status line when the mode changes: the last Save's line belongs to Save mode."""
    return status if mode == "Save" else ""


def mask_canvas(store, source: str, reference: str | None, image) -> Image.Image | None:
    """The picture a slot's mask is painted on: its saved reference's preview, or its image (None: nothing to
    paint on, e.g. the batch's first image, which exists only during the generation)."""
    if source == "image":
        return image if isinstance(image, Image.Image) else None
    if source == "reference" and reference:
        return describe(store, reference)[0]
    return None


# -- building the panel -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _enabled_section(input_accordion, label: str, elem_id: str):
    """The host's ``InputAccordion`` (its value is "enabled"); else an accordion with an Enable checkbox."""
    if input_accordion is not None:
        with input_accordion(False, label=label, elem_id=elem_id) as enabled:
            yield enabled
        return
    with gr.Accordion(label, open=False, elem_id=f"{elem_id}_accordion"):
        yield gr.Checkbox(False, label="Enable RefDrop", elem_id=elem_id)


# gradio 4 (Forge) selects the first choice of a dropdown whose value is empty when the page loads, without a
# change event: the panel said "no reference selected" while sending the first one, and "exact" overrode the
# default profile. A leading empty choice keeps "none" / "the default" what the page starts with; it stays first
# after a refresh, because gradio 4 keeps the selected index (not value) when the choices change.
GRADIO_3 = int(gr.__version__.split(".")[0]) < 4
_NONE_FIRST = [] if GRADIO_3 else [""]
# gradio 3's Image paints a mask over its picture (``tool="sketch"``, whose value is ``{"image", "mask"}``, the
# strokes white on black whatever colour they are drawn in); its brush draws black unless told, so it is told to
# draw what the mask holds. gradio 4 has no such arguments (Forge drops them with a warning): there a mask is
# uploaded as a picture.
_PAINTABLE = {"tool": "sketch", "brush_color": "#ffffff"} if GRADIO_3 else {}


def _safe_choices(get_store) -> tuple[list[str], str]:
    try:
        return reference_choices(get_store()), ""
    except (OSError, RefDropError) as exc:
        return [], f"⚠️ RefDrop cannot open its reference folder: {exc}"


def _slider(arg: str, label: str, elem_id: str, value=None):
    """A number control with the default and bounds ``FIELDS`` gives ``arg`` (``value``: another default)."""
    row = FIELD_OF[arg]
    low, high = row.bounds
    return gr.Slider(minimum=low, maximum=high, step=0.01, value=row.default if value is None else value,
                     label=label, elem_id=elem_id)


def _checkbox(arg: str, label: str, elem_id: str, value=None):
    return gr.Checkbox(FIELD_OF[arg].default if value is None else value, label=label, elem_id=elem_id)


def _source_radio(arg: str, label: str, elem_id: str):
    return gr.Radio([(SOURCE_LABELS[v], v) for v in SOURCES], value=FIELD_OF[arg].default, label=label,
                    elem_id=elem_id)


def _image_input(label: str, elem_id: str, visible: bool = True):
    # RGBA: a transparent picture reaches images.parse_image, which lays it over white (gradio's own RGB
    # conversion would make its clear parts black).
    return gr.Image(value=None, type="pil", image_mode="RGBA", label=label, height=200, visible=visible,
                    elem_id=elem_id)


def _mask_input(label: str, elem_id: Callable[[str], str], suffix: str) -> tuple:
    """A slot's mask input, and the button that puts the slot's picture in it to paint on (gradio 3 only)."""
    mask = gr.Image(value=None, type="pil", image_mode="RGBA", label=label, height=200,
                    elem_id=elem_id(f"mask{suffix}"), **_PAINTABLE)
    paint = gr.Button("🖌️ Paint on the reference's picture", visible=GRADIO_3, size="sm",
                      elem_id=elem_id(f"mask_paint{suffix}"))
    return mask, paint


def _library(c: Controls, elem_id: Callable[[str], str], choices: list[str]) -> None:
    """Slot 1's saved reference: the dropdown, its preview and info line, rename and delete."""
    i, x = c.inputs, c.extras
    with gr.Row():
        i["reference"] = gr.Dropdown(choices=_NONE_FIRST + choices, value="", label="Reference",
                                     allow_custom_value=True, elem_id=elem_id("reference"))
        x["refresh"] = gr.Button("🔄", elem_id=elem_id("refresh"), scale=0, min_width=40)
    with gr.Row():
        x["preview"] = gr.Image(value=None, label="Reference preview", interactive=False, height=160,
                                elem_id=elem_id("preview"))
        with gr.Column():
            x["info"] = gr.Markdown(describe(None, "")[1], elem_id=elem_id("info"))
            x["rename_to"] = gr.Textbox(label="New name", placeholder="new name for this reference",
                                        elem_id=elem_id("rename_to"))
            with gr.Row():  # small buttons in a row of their own: beside the textbox they took its height
                x["rename"] = gr.Button("Rename", elem_id=elem_id("rename"), scale=0, size="sm")
                x["delete"] = gr.Button("Delete", elem_id=elem_id("delete"), scale=0, size="sm")
                x["delete_confirm"] = gr.Button("Confirm delete", variant="stop", visible=False,
                                                elem_id=elem_id("delete_confirm"), scale=0, size="sm")
                x["delete_cancel"] = gr.Button("Cancel", visible=False, elem_id=elem_id("delete_cancel"),
                                               scale=0, size="sm")
    with gr.Accordion("Share", open=False, elem_id=elem_id("share")) as x["share"]:
        with gr.Row():
            with gr.Column():
                x["export"] = gr.Button("Export as one file", elem_id=elem_id("export"), size="sm")
                x["export_file"] = gr.File(label="Reference file", interactive=False, elem_id=elem_id("export_file"))
            x["import_file"] = gr.File(label="Import a .refdrop.safetensors file", file_types=[".safetensors"],
                                       elem_id=elem_id("import_file"))


def _more_slot(c: Controls, elem_id: Callable[[str], str], choices: list[str], k: int, shown: dict) -> None:
    """Slot ``k`` (2, 3): off while its coefficient is 0, and then only its slider shows (``shown``: the
    layout's visibility at the defaults)."""
    i, x = c.inputs, c.extras
    with gr.Column(visible=shown[f"slot_{k}"]) as x[f"slot_{k}"]:
        i[f"rfg_{k}"] = _slider(f"rfg_{k}", f"Reference {k}: RFG coefficient (0 = off)", elem_id(f"rfg_{k}"))
        with gr.Column(visible=shown[f"slot_box_{k}"]) as x[f"slot_box_{k}"]:
            i[f"source_{k}"] = _source_radio(f"source_{k}", f"Source {k}", elem_id(f"source_{k}"))
            with gr.Row(visible=shown[f"reference_box_{k}"]) as x[f"reference_box_{k}"]:
                i[f"reference_{k}"] = gr.Dropdown(choices=_NONE_FIRST + choices, value="", label=f"Reference {k}",
                                                  allow_custom_value=True, elem_id=elem_id(f"reference_{k}"))
                x[f"refresh_{k}"] = gr.Button("🔄", elem_id=elem_id(f"refresh_{k}"), scale=0, min_width=40)
            i[f"image_{k}"] = _image_input(f"Picture {k}", elem_id(f"image_{k}"), visible=shown[f"image_{k}"])
            with gr.Accordion(f"Subject mask {k}", open=False, elem_id=elem_id(f"mask_box_{k}")) as x[
                    f"mask_box_{k}"]:
                i[f"mask_{k}"], x[f"mask_paint_{k}"] = _mask_input(f"Subject mask {k}", elem_id, f"_{k}")


def build(
    elem_id: Callable[[str], str] = lambda item: f"refdrop_{item}",
    get_store: Callable | None = None,
    input_accordion=None,
    default_rfg: float = DEFAULT_RFG,
    default_overwrite: bool = False,
    get_status: Callable[[], str] | None = None,
    label: str = "RefDrop",
) -> Controls:
    """Create the panel inside the current gradio Blocks context; return its components."""
    get_status = get_status or (lambda: "")
    choices, store_problem = _safe_choices(get_store) if get_store else ([], "")
    shown = layout_visibility(*(FIELD_OF[arg].default for arg in LAYOUT_ARGS))
    use_visible, save_visible = shown["use_box"], shown["save_box"]
    c = Controls()
    i, x = c.inputs, c.extras

    with _enabled_section(input_accordion, label, elem_id("enabled")) as enabled:
        i["enabled"] = enabled
        i["mode"] = gr.Radio(list(MODES), value=FIELD_OF["mode"].default, label="Mode", elem_id=elem_id("mode"))
        with gr.Column(visible=use_visible) as x["use_box"]:
            i["rfg"] = _slider("rfg", "RFG coefficient", elem_id("rfg"), value=default_rfg)
            i["source"] = _source_radio("source", "Source", elem_id("source"))
            x["batch_hint"] = gr.Markdown(BATCH_HINT, visible=shown["batch_hint"], elem_id=elem_id("batch_hint"))
            with gr.Column(visible=shown["reference_box"]) as x["reference_box"]:
                _library(c, elem_id, choices)
        with gr.Column(visible=save_visible) as x["save_box"]:
            i["save_name"] = gr.Textbox(value="", label="Save as", placeholder=SAVE_NAME_PLACEHOLDER,
                                        elem_id=elem_id("save_name"))
            i["save_from"] = gr.Radio([(SAVE_FROM_LABELS[v], v) for v in SAVE_FROM],
                                      value=FIELD_OF["save_from"].default, label="Save from",
                                      elem_id=elem_id("save_from"))
        with gr.Column(visible=shown["image_box"]) as x["image_box"]:
            i["image"] = _image_input("Picture", elem_id("image"))
        with gr.Column(visible=shown["prompt_box"]) as x["prompt_box"]:
            i["image_prompt"] = gr.Textbox(value="", label="Image prompt", placeholder=IMAGE_PROMPT_PLACEHOLDER,
                                           elem_id=elem_id("image_prompt"))
        with gr.Column(visible=use_visible) as x["use_more"]:
            with gr.Accordion("Subject mask", open=False, elem_id=elem_id("mask_box")) as x["mask_box"]:
                i["mask"], x["mask_paint"] = _mask_input("Subject mask", elem_id, "")
                with gr.Row() as x["mask_keep_box"]:
                    x["mask_keep"] = gr.Button("Keep with the reference", size="sm", elem_id=elem_id("mask_keep"))
                    x["mask_forget"] = gr.Button("Remove its kept mask", size="sm", elem_id=elem_id("mask_forget"))
            with gr.Accordion(MORE_LABEL, open=False, elem_id=elem_id("more")) as x["more"]:
                for k in MORE_SLOTS:
                    _more_slot(c, elem_id, choices, k, shown)
        status = get_status()
        x["status"] = gr.Markdown(store_problem or status_shown(FIELD_OF["mode"].default, status),
                                  elem_id=elem_id("status"))
        # Clicked by javascript/refdrop.js while a Save is written; its label counts the answers (see ``poll``).
        x["poll"] = gr.Button("0", visible=False, elem_id=elem_id("poll"))
        x["tooltips"] = gr.HTML(tooltips_html(), visible=False, elem_id=elem_id("tooltips"))
        x["shown"] = gr.State({"choices": choices, "status": status, "polls": 0})
        with gr.Accordion("Advanced", open=False, elem_id=elem_id("advanced")):
            with gr.Column(visible=use_visible) as x["use_advanced"]:
                i["disabled_groups"] = gr.CheckboxGroup(list(BLOCK_GROUPS), value=[], label="Disabled block groups",
                                                        elem_id=elem_id("disabled_groups"))
                i["disabled_blocks"] = gr.CheckboxGroup(list(BLOCK_CHOICES), value=[], label="Disabled blocks",
                                                        info=BLOCKS_INFO, elem_id=elem_id("disabled_blocks"))
                i["skip_first_up"] = _checkbox("skip_first_up", "Skip first up-sampling block",
                                               elem_id("skip_first_up"))
                with gr.Row():
                    i["step_start"] = _slider("step_start", "Start at (fraction of steps)", elem_id("step_start"))
                    i["step_end"] = _slider("step_end", "End at (fraction of steps)", elem_id("step_end"))
                i["apply_hires"] = _checkbox("apply_hires", "Apply in hires fix pass", elem_id("apply_hires"))
            with gr.Column(visible=save_visible) as x["save_advanced"]:
                i["overwrite"] = gr.Checkbox(default_overwrite, label="Overwrite a reference of the same name",
                                             elem_id=elem_id("overwrite"))
                i["profile"] = gr.Dropdown(choices=_NONE_FIRST + list(PROFILES), value="", label="Storage profile",
                                           info=PROFILE_INFO,
                                           allow_custom_value=True, elem_id=elem_id("profile"))

    _wire(c, get_store, get_status)
    return c


def _wire(c: Controls, get_store, get_status) -> None:
    i, x = c.inputs, c.extras

    def on_layout(*values):
        shown = layout_visibility(*values)
        return [gr.update(visible=shown[box]) for box in LAYOUT_BOXES]

    def on_more(*rfgs):
        title, on = more_title(*rfgs)
        return gr.update(label=title, open=True) if on else gr.update(label=title)  # never closes it

    parts = {**i, **x}
    layout = [i[arg] for arg in LAYOUT_ARGS]
    for control in layout:
        control.change(on_layout, inputs=layout, outputs=[parts[box] for box in LAYOUT_BOXES], show_progress=False)
    rfgs = [i[f"rfg_{k}"] for k in MORE_SLOTS]
    for control in rfgs:
        control.change(on_more, inputs=rfgs, outputs=[x["more"]], show_progress=False)
    i["mode"].change(lambda mode: status_shown(mode, get_status()), inputs=[i["mode"]], outputs=[x["status"]],
                     show_progress=False)
    if get_store is None:
        return

    def on_refresh(current, shown, mode):
        choices, value = refresh(get_store(), current)
        status = get_status()
        return (gr.update(choices=_NONE_FIRST + choices, value=value), status_shown(mode, status),
                {**shown, "choices": choices, "status": status})

    def on_select(name):
        preview, text = describe(get_store(), name)
        return preview, text

    def library_outputs(shown, message, choices, value):
        hidden = gr.update(visible=False)
        return (gr.update(choices=_NONE_FIRST + choices, value=value), message, hidden, hidden,
                {**shown, "choices": choices})

    def on_delete(name, shown):
        return library_outputs(shown, *delete(get_store(), name))

    def on_rename(old, new, shown):
        return library_outputs(shown, *rename(get_store(), old, new))

    def on_poll(shown):
        return poll_updates(get_store, get_status, shown)

    def on_export(name):
        path, message = export_file(get_store(), name)
        return gr.update(value=path), message

    def on_import(upload, shown):
        message, choices, name = import_file(get_store(), upload)
        value = gr.update(choices=_NONE_FIRST + choices, value=name) if name else gr.update(
            choices=_NONE_FIRST + choices)
        return value, message, {**shown, "choices": choices}, gr.update(value=None)

    def ask_confirmation(name):
        if not name:
            return gr.update(visible=False), gr.update(visible=False), "Select a reference to delete."
        return gr.update(visible=True), gr.update(visible=True), f"Delete **{name}** for good? Confirm or cancel."

    confirm_outputs = [x["delete_confirm"], x["delete_cancel"]]
    shown = x["shown"]
    library = [i["reference"], x["status"], *confirm_outputs, shown]
    x["refresh"].click(on_refresh, inputs=[i["reference"], shown, i["mode"]],
                       outputs=[i["reference"], x["status"], shown], show_progress=False)
    i["reference"].change(on_select, inputs=[i["reference"]], outputs=[x["preview"], x["info"]], show_progress=False)
    x["delete"].click(ask_confirmation, inputs=[i["reference"]], outputs=[*confirm_outputs, x["status"]],
                      show_progress=False)
    x["delete_cancel"].click(lambda: (gr.update(visible=False), gr.update(visible=False), ""), inputs=[],
                             outputs=[*confirm_outputs, x["status"]], show_progress=False)
    x["delete_confirm"].click(on_delete, inputs=[i["reference"], shown], outputs=library, show_progress=False)
    x["rename"].click(on_rename, inputs=[i["reference"], x["rename_to"], shown], outputs=library,
                      show_progress=False)
    x["poll"].click(on_poll, inputs=[shown], outputs=[i["reference"], x["status"], x["poll"], shown],
                    show_progress=False)
    x["export"].click(on_export, inputs=[i["reference"]], outputs=[x["export_file"], x["status"]])
    x["import_file"].upload(on_import, inputs=[x["import_file"], shown],
                            outputs=[i["reference"], x["status"], shown, x["import_file"]])
    _wire_slots(c, get_store)  # after slot 1's: tests/test_save_status_poll.py reads each button's first callback


def _wire_slots(c: Controls, get_store) -> None:
    """Slots 2 and 3: each dropdown's 🔄, and the 🖌️ buttons that put a slot's picture in its mask to paint on;
    keeping slot 1's mask with its saved reference. Slot 1's 🔄, delete and rename refresh the lists of slots 2 and
    3 too (the page's poll after a Save updates slot 1's only)."""
    i, x = c.inputs, c.extras

    def on_refresh(current):
        choices, value = refresh(get_store(), current)
        return gr.update(choices=_NONE_FIRST + choices, value=value)

    def on_library_change(*currents):
        choices = _NONE_FIRST + reference_choices(get_store())
        return [gr.update(choices=choices) for _ in currents]

    def on_paint(source, reference, image):
        picture = mask_canvas(get_store(), source, reference, image)
        return gr.update() if picture is None else gr.update(value=picture)

    others = [i[f"reference_{k}"] for k in MORE_SLOTS]
    for k in MORE_SLOTS:
        x[f"refresh_{k}"].click(on_refresh, inputs=[i[f"reference_{k}"]], outputs=[i[f"reference_{k}"]],
                                show_progress=False)
    for button in ("refresh", "delete_confirm", "rename"):
        x[button].click(on_library_change, inputs=others, outputs=others, show_progress=False)
    x["import_file"].upload(on_library_change, inputs=others, outputs=others, show_progress=False)
    def on_keep(name, mask):
        return keep_mask(get_store(), name, mask), describe(get_store(), name)[1]

    def on_forget(name):
        return forget_mask(get_store(), name), describe(get_store(), name)[1]

    x["mask_keep"].click(on_keep, inputs=[i["reference"], i["mask"]], outputs=[x["status"], x["info"]],
                         show_progress=False)
    x["mask_forget"].click(on_forget, inputs=[i["reference"]], outputs=[x["status"], x["info"]], show_progress=False)
    for suffix in ("", *(f"_{k}" for k in MORE_SLOTS)):
        x[f"mask_paint{suffix}"].click(on_paint, inputs=[i[f"source{suffix}"], i[f"reference{suffix}"],
                                                         i[f"image{suffix}"]],
                                       outputs=[i[f"mask{suffix}"]], show_progress=False)


def poll_updates(get_store, get_status, shown: dict) -> tuple:
    """The poll button's answer: (reference dropdown, status line, poll button, shown), each ``gr.update()``
    (no change) unless it changed. The dropdown gets new choices only: its value is left alone, so a pick made
    while the answer travels is kept (and under gradio 4 a dropdown that allows custom values keeps its value
    when its choices change)."""
    try:
        store = get_store()
        choices, status, now = poll(store, get_status(), shown)
    except (OSError, RefDropError):  # the folder went away: the status line keeps what it says
        choices, status, now = None, None, {**shown, "polls": shown.get("polls", 0) + 1}
    return (
        gr.update() if choices is None else gr.update(choices=_NONE_FIRST + choices),
        gr.update() if status is None else gr.update(value=status),
        gr.update(value=str(now["polls"])),
        now,
    )
