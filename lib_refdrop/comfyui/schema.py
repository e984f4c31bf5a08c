"""The RefDrop nodes as ComfyUI nodes: one table (``node_specs``), made into V3 classes (``io.ComfyNode``, registered
by ``comfy_entrypoint``) where the running ComfyUI has ``comfy_api.latest``, else into V1 classes
(``NODE_CLASS_MAPPINGS``). The V1 classes need nothing from ComfyUI, which is how the tests drive them.

Caching (ComfyUI re-runs a node when its inputs or its fingerprint change): a Save runs every time it is queued
(a NaN fingerprint never equals itself), a Use and a Reference re-run when a reference they read changes on disk
(``folders.Library.fingerprint``: folder, manifest seal, mask), so an overwritten reference is never served from the
cache. The reference lists are read from the ``refdrop`` folders each time ComfyUI asks for the node definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import RefDropError
from ..params import DEFAULT_RFG
from ..reference.names import validate_name
from . import nodes
from .folders import Library

CATEGORY = "RefDrop"
REFS = "REFDROP_REFS"
SAVE = "REFDROP_SAVE"


@dataclass(frozen=True)
class Inp:
    id: str
    type: str                       # MODEL, FLOAT, BOOLEAN, STRING, COMBO, IMAGE, MASK, VAE, CONDITIONING, REFS...
    tooltip: str = ""
    optional: bool = False
    default: object = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: Callable[[], list] | None = None  # COMBO: read on every schema request


@dataclass(frozen=True)
class NodeSpec:
    id: str
    display: str
    description: str
    inputs: tuple[Inp, ...]
    outputs: tuple[tuple[str, str], ...]       # (type, name)
    run: Callable[..., tuple]
    output_node: bool = False
    fingerprint: Callable[..., object] | None = None
    validates_reference: bool = False          # the "reference" combo is checked by us (a new name is no error)
    extra: dict = field(default_factory=dict)


def _fraction(id_, default, tooltip):
    return Inp(id_, "FLOAT", tooltip, default=default, min=0.0, max=1.0, step=0.01)


def node_specs(library: Library, kernels=None) -> list[NodeSpec]:
    refs = lambda: [nodes.NONE, *nodes.reference_choices(library)]  # noqa: E731
    names = lambda: nodes.reference_choices(library) or [""]  # noqa: E731
    window = (_fraction("step_start", 0.0, "Where guidance starts, as a fraction of the schedule (0 = first step)"),
              _fraction("step_end", 1.0, "Where guidance ends, as a fraction of the schedule (1 = last step)"))
    return [
        NodeSpec(
            "SDRefDropSave", "RefDrop Save",
            "Records the first sampling run of this MODEL (or an image, when one is connected) as a named reference "
            "in the refdrop folder; the image itself is exactly what the model makes without RefDrop.",
            (Inp("model", "MODEL"),
             Inp("name", "STRING", "The reference's name (empty: ref-<seed>-<time>)", default="character"),
             Inp("overwrite", "BOOLEAN", "Replace a reference of that name", default=False),
             Inp("profile", "COMBO", "Storage profile: lean (default, small), exact (bit-exact Use), balanced, "
                 "compact, trajectory", default=nodes.DEFAULT, options=nodes.profile_choices),
             _fraction("step_start", 0.0, "Record from this fraction of the schedule"),
             _fraction("step_end", 1.0, "Record up to this fraction of the schedule"),
             Inp("image", "IMAGE", "Bake this image into the reference instead of the generation", optional=True),
             Inp("vae", "VAE", "The image's VAE (with image)", optional=True),
             Inp("conditioning", "CONDITIONING", "The image's prompt (with image)", optional=True)),
            (("MODEL", "model"), (SAVE, "save")),
            lambda **kw: nodes.save(library, kernels=kernels, **kw),
            fingerprint=lambda **kw: float("nan")),
        NodeSpec(
            "SDRefDropSavePreview", "RefDrop Save Preview",
            "Attaches the decoded image as the preview of the reference the RefDrop Save node saved.",
            (Inp("images", "IMAGE"), Inp("save", SAVE)),
            (),
            lambda images, save: _no_outputs(nodes.save_preview(images, save)),
            output_node=True, fingerprint=lambda **kw: float("nan")),
        NodeSpec(
            "SDRefDropReference", "RefDrop Reference",
            "One more reference for a RefDrop Use: a saved reference, the batch's first image, or an image; chain "
            "up to three.",
            (Inp("source", "COMBO", "reference: a saved reference; batch: the first image of the batch; image: the "
                 "IMAGE input", default="reference", options=lambda: list(nodes.SOURCES)),
             Inp("reference", "COMBO", "The saved reference (source reference)", options=names),
             Inp("rfg", "FLOAT", "RFG coefficient c: > 0 pulls toward the reference, < 0 away",
                 default=DEFAULT_RFG, min=-1.0, max=1.0, step=0.01),
             Inp("mask", "MASK", "Subject mask: the generation attends only to the reference's masked part",
                 optional=True),
             Inp("image", "IMAGE", "The image (source image)", optional=True),
             Inp("previous", REFS, "Earlier references of the chain", optional=True)),
            ((REFS, "references"),),
            lambda source, reference, rfg, mask=None, image=None, previous=None: (
                nodes.reference(library, source, reference, rfg, mask, image, previous),),
            fingerprint=lambda source="reference", reference="", **kw: (
                nodes.fingerprint_refs(library, [reference]) if source == "reference" else source),
            validates_reference=True),
        NodeSpec(
            "SDRefDropUse", "RefDrop Use",
            "Guides every self-attention layer of this MODEL by saved references (RefDrop's reference feature "
            "guidance): the subject, style or layout of the reference carry over to new prompts.",
            (Inp("model", "MODEL"),
             Inp("reference", "COMBO", "The saved reference; (none): only the connected references",
                 options=refs),
             Inp("rfg", "FLOAT", "RFG coefficient c: > 0 pulls toward the reference, < 0 away (0 = plain)",
                 default=DEFAULT_RFG, min=-1.0, max=1.0, step=0.01),
             *window,
             Inp("disabled_groups", "STRING", "Block groups without RefDrop: input, middle, output (Flux, Chroma: "
                 "double, single), comma-separated", default=""),
             Inp("disabled_blocks", "STRING", "Blocks without RefDrop: IN00-IN11, M00, OUT00-OUT11, D00-D59, "
                 "S00-S39, comma-separated", default=""),
             Inp("skip_first_up", "BOOLEAN", "Skip the first up-sampling block (less pose and background copied)",
                 default=False),
             Inp("mask", "MASK", "Subject mask of this node's reference", optional=True),
             Inp("references", REFS, "More references (RefDrop Reference nodes)", optional=True),
             Inp("vae", "VAE", "For image references: the VAE that encodes them", optional=True),
             Inp("image_conditioning", "CONDITIONING", "For image references: the prompt they are evaluated with",
                 optional=True)),
            (("MODEL", "model"),),
            lambda **kw: (nodes.use(library, kernels=kernels, reference_name=kw.pop("reference"), **kw),),
            fingerprint=lambda reference="", **kw: nodes.fingerprint_refs(library, [reference]),
            validates_reference=True),
    ]


def _no_outputs(_done) -> tuple:
    return ()


def check_reference_name(reference) -> bool | str:
    """The reference combo's check at queue time: any valid name passes (one saved since the list was loaded, or
    by a Save in this same prompt); its existence is checked when the node runs."""
    if reference in ("", nodes.NONE):
        return True
    try:
        validate_name(reference)
    except RefDropError as exc:
        return str(exc)
    return True


# -- V1 ------------------------------------------------------------------------------------------------------------

def _v1_input(inp: Inp):
    options = {"tooltip": inp.tooltip} if inp.tooltip else {}
    if inp.type == "COMBO":
        return (inp.options(), {**options, **({"default": inp.default} if inp.default is not None else {})})
    for key in ("default", "min", "max", "step"):
        if getattr(inp, key) is not None:
            options[key] = getattr(inp, key)
    if inp.type == "STRING":
        options.setdefault("multiline", False)
    return (inp.type, options)


def v1_class(spec: NodeSpec) -> type:
    def input_types(cls):
        required = {i.id: _v1_input(i) for i in spec.inputs if not i.optional}
        optional = {i.id: _v1_input(i) for i in spec.inputs if i.optional}
        return {"required": required, "optional": optional}

    def run(self, **kwargs):
        return spec.run(**kwargs)

    attrs = {
        "INPUT_TYPES": classmethod(input_types), "RETURN_TYPES": tuple(t for t, _ in spec.outputs),
        "RETURN_NAMES": tuple(n for _, n in spec.outputs), "FUNCTION": "run", "CATEGORY": CATEGORY,
        "DESCRIPTION": spec.description, "OUTPUT_NODE": spec.output_node, "run": run, "SPEC": spec,
    }
    if spec.fingerprint is not None:
        attrs["IS_CHANGED"] = classmethod(lambda cls, **kw: spec.fingerprint(**kw))
    if spec.validates_reference:
        def VALIDATE_INPUTS(cls, reference):  # noqa: N802 - ComfyUI's name
            return check_reference_name(reference)

        attrs["VALIDATE_INPUTS"] = classmethod(VALIDATE_INPUTS)
    return type(spec.id, (), attrs)


def v1_mappings(specs: list[NodeSpec]) -> tuple[dict, dict]:
    return {s.id: v1_class(s) for s in specs}, {s.id: s.display for s in specs}


# -- V3 ------------------------------------------------------------------------------------------------------------

def v3_classes(specs: list[NodeSpec]) -> list[type]:
    from comfy_api.latest import io

    custom = {REFS: io.Custom(REFS), SAVE: io.Custom(SAVE)}
    plain = {"MODEL": io.Model, "IMAGE": io.Image, "MASK": io.Mask, "VAE": io.Vae, "CONDITIONING": io.Conditioning,
             **custom}

    def make_input(inp: Inp):
        common = {"tooltip": inp.tooltip or None, "optional": inp.optional}
        if inp.type == "FLOAT":
            return io.Float.Input(inp.id, default=inp.default, min=inp.min, max=inp.max, step=inp.step, **common)
        if inp.type == "BOOLEAN":
            return io.Boolean.Input(inp.id, default=inp.default, **common)
        if inp.type == "STRING":
            return io.String.Input(inp.id, default=inp.default, **common)
        if inp.type == "COMBO":
            return io.Combo.Input(inp.id, options=inp.options(), default=inp.default, **common)
        return plain[inp.type].Input(inp.id, **common)

    def make_output(kind: str, name: str):
        return plain[kind].Output(display_name=name)

    def make(spec: NodeSpec) -> type:
        def define_schema(cls):
            return io.Schema(node_id=spec.id, display_name=spec.display, category=CATEGORY,
                             description=spec.description, inputs=[make_input(i) for i in spec.inputs],
                             outputs=[make_output(*o) for o in spec.outputs], is_output_node=spec.output_node)

        def execute(cls, **kwargs):
            return io.NodeOutput(*spec.run(**kwargs))

        attrs = {"define_schema": classmethod(define_schema), "execute": classmethod(execute), "SPEC": spec}
        if spec.fingerprint is not None:
            attrs["fingerprint_inputs"] = classmethod(lambda cls, **kw: spec.fingerprint(**kw))
        if spec.validates_reference:
            def validate_inputs(cls, reference):
                return check_reference_name(reference)

            attrs["validate_inputs"] = classmethod(validate_inputs)
        return type(spec.id, (io.ComfyNode,), attrs)

    return [make(s) for s in specs]
