"""What each RefDrop node does, as plain functions of the node's inputs (``schema.py`` makes ComfyUI nodes of them).

Every node that patches returns a clone of its MODEL with an ``OUTER_SAMPLE`` wrapper (``sampling.py``) around a
``standalone`` session made from the node's settings; the node itself checks everything it can (settings, names,
the reference on disk and its model family), so a problem is reported on the node that caused it, as one
``RefDrop: ...`` line. What only a sampling run knows (the seed, the schedule, the latent's size) is checked there
and reported on the sampling node.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import families, standalone
from ..errors import RefDropError
from ..params import SLOTS, build
from ..reference.profiles import PROFILES
from . import model as host
from .folders import Folders, Library
from .images import mask_to_pil, to_pil
from .sampling import HostKernels, RunSpec, add_to

NONE = "(none)"            # the Use node's reference list: only the chained references
DEFAULT = "default"        # the Save node's profile list: ``profiles.DEFAULT_PROFILE``
SOURCES = ("reference", "batch", "image")
MAX_REFERENCES = len(SLOTS)


def profile_choices() -> list[str]:
    return [DEFAULT, *PROFILES]


def reference_choices(library: Library) -> list[str]:
    try:
        return library.names()
    except (RefDropError, OSError):
        return []


# -- Save ------------------------------------------------------------------------------------------------------

def save(library: Library, model, name: str, overwrite: bool, profile: str, step_start: float, step_end: float,
         image=None, vae=None, conditioning=None, kernels: HostKernels | None = None):
    """RefDrop Save: ``(MODEL, REFDROP_SAVE)``. The first sampling run of the returned MODEL is recorded into
    reference ``name`` ("" = ``ref-<seed>-<time>``) in the first ``refdrop`` folder; with ``image`` the run stays
    plain and the image, evaluated with ``conditioning`` at every sigma of the run, is what is saved."""
    if image is not None and (vae is None or conditioning is None):
        raise RefDropError("RefDrop: saving an image needs its vae and conditioning inputs too")
    build({"step_start": step_start, "step_end": step_end})  # the window: RefDropError naming it when empty
    session = standalone.save_session(library.save_store(), name, "" if profile in ("", DEFAULT) else profile,
                                      overwrite, image=None if image is None else to_pil(image))
    spec = RunSpec(session, vae=vae, conditioning=conditioning, save_window=(step_start, step_end), kernels=kernels)
    return add_to(model, spec), session


def save_preview(images, save) -> str:
    """RefDrop Save Preview: the first image becomes the preview of the reference the Save saved in this prompt."""
    if not isinstance(save, standalone.SaveSession):
        raise RefDropError("RefDrop: connect the 'save' output of a RefDrop Save node")
    if save.patches.empty:
        raise RefDropError("RefDrop: the RefDrop Save node has not saved a reference in this prompt (its MODEL was "
                           "not sampled before this node ran)")
    save.set_preview(to_pil(images))
    return save.name


# -- references ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ref:
    """One reference of a Use, from a RefDrop Reference node or the Use's own widgets."""

    source: str
    reference: str
    rfg: float
    mask: object = None
    image: object = None


def reference(library: Library, source: str, reference_name: str, rfg: float, mask=None, image=None,
              previous=None) -> tuple:
    """RefDrop Reference: the chain ``previous`` + this reference (``REFDROP_REFS``)."""
    if source not in SOURCES:
        raise RefDropError(f"RefDrop: source must be one of {', '.join(SOURCES)}, got {source!r}")
    chain = tuple(previous or ())
    if len(chain) + 1 > MAX_REFERENCES:
        raise RefDropError(f"RefDrop: a Use takes at most {MAX_REFERENCES} references; this chain has "
                           f"{len(chain) + 1}")
    if source == "reference":
        if reference_name in ("", NONE):
            raise RefDropError("RefDrop: choose a reference, or another source")
        library.store_of(reference_name)  # exists: else the message lists what there is
    if source == "image" and image is None:
        raise RefDropError("RefDrop: source 'image' needs an IMAGE input")
    ref = Ref(source, reference_name if source == "reference" else "", float(rfg),
              None if mask is None else mask_to_pil(mask), None if image is None else to_pil(image))
    return (*chain, ref)


def fingerprint_refs(library: Library, names) -> str:
    return "|".join(library.fingerprint(n) if n not in ("", NONE) else "-" for n in names)


# -- Use ---------------------------------------------------------------------------------------------------------

def use(library: Library, model, reference_name: str, rfg: float, step_start: float, step_end: float,
        disabled_groups: str = "", disabled_blocks: str = "", skip_first_up: bool = False, mask=None,
        references=None, vae=None, image_conditioning=None, kernels: HostKernels | None = None):
    """RefDrop Use: the MODEL guided by its own reference (unless ``(none)``) and the chained ``references``."""
    refs = []
    if reference_name not in ("", NONE):
        refs.append(Ref("reference", reference_name, float(rfg), None if mask is None else mask_to_pil(mask)))
    elif mask is not None:
        raise RefDropError("RefDrop: a mask is given but no reference is chosen on the Use node")
    refs += list(references or ())
    if not refs:
        raise RefDropError("RefDrop: choose a reference, or connect RefDrop Reference nodes")
    if len(refs) > MAX_REFERENCES:
        raise RefDropError(f"RefDrop: a Use takes at most {MAX_REFERENCES} references, got {len(refs)}")
    values = {"step_start": step_start, "step_end": step_end, "disabled_groups": disabled_groups,
              "disabled_blocks": disabled_blocks, "skip_first_up": skip_first_up}
    for k, ref in zip(SLOTS, refs, strict=False):
        suffix = "" if k == 1 else f"_{k}"
        values.update({f"source{suffix}": ref.source, f"reference{suffix}": ref.reference, f"rfg{suffix}": ref.rfg,
                       f"image{suffix}": ref.image, f"mask{suffix}": ref.mask})
    if any(ref.source == "image" and ref.rfg != 0 for ref in refs) and (vae is None or image_conditioning is None):
        raise RefDropError("RefDrop: an image reference needs the Use node's vae and image_conditioning inputs")
    family = host.family_of(model)
    for ref in refs:
        if ref.source != "reference":
            continue
        manifest = library.store_of(ref.reference).manifest(ref.reference)  # every file there, with its size
        problem = families.mismatch(ref.reference, manifest["family"], family)
        if problem:
            raise RefDropError(problem)
    store = Folders(library)  # each reference read from the folder that holds it
    session = standalone.start_use(store, **values)  # the settings: RefDropError naming the bad one
    return add_to(model, RunSpec(session, vae=vae, conditioning=image_conditioning, kernels=kernels))
