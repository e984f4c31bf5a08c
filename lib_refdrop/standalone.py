"""A Save and a Use outside the WebUI: the library's small public entry point.

Any sampler that calls a self-attention (attn1) replace patch as ``patch(q, k, v, extra_options)``, the way Forge
and reForge do (docs/hosts.md), can run RefDrop. The caller describes its sampling pass with ``context`` and
installs the patch it is given on every attn1 layer for one generation::

    ctx = context("sd15", attention, schedule.percent_to_sigma, seed=1)
    with start_save(store, "fox", ctx) as save:
        image = sample(attn1_patch=save.patch)
        save.finish({"seed": 1}, image)          # returns once the reference is complete on disk

    patch = use_patch(store, "fox", 0.3, context("sd15", attention, schedule.percent_to_sigma, seed=2))
    image = sample(attn1_patch=patch)            # None: nothing to change (c = 0), sample plainly

A Use with several references, an image or the batch's first image, and a Save from an image, need more than an
attn1 patch: ``start_use`` gives, for each sampling pass, the attn1 patch and the model function wrapper to install
(``PassPatches``; the wrapper runs an image's reference pass, attn/refpass.py), and ``context`` then takes
``encode_image`` / ``encode_prompt`` (and the batch's index and count for the batch's first image)::

    use = start_use(store, reference="fox", rfg=0.3, reference_2="owl", rfg_2=0.2)
    patches = use.for_pass(context("sd15", attention, schedule.percent_to_sigma, seed=2))
    image = sample(attn1_patch=patches.attn1, model_wrapper=patches.model_wrapper)
    use.close()

Problems raise RefDropError here, at once. The WebUI wiring drives the same ``RefDropRun.for_pass`` but installs
``run.failing_pass`` instead of raising, since the WebUIs swallow exceptions raised in their hooks.
"""

from __future__ import annotations

from collections.abc import Callable

from .attn.patches import Patch
from .errors import RefDropError
from .params import build
from .reference.bundle import export_reference, import_reference
from .reference.manifest import SEAL
from .reference.names import validate_name
from .reference.profiles import profile_to_save
from .reference.store import ReferenceStore
from .reference.writer import SaveStatus, png_bytes
from .run import PassContext, PassPatches, RefDropRun

DEFAULT_SAVE_TIMEOUT_S = 300.0
_SET_BY_USE_PATCH = ("enabled", "mode", "reference")

__all__ = ["PassContext", "PassPatches", "SaveSession", "UseSession", "context", "export_reference", "identity",
           "import_reference", "save_session", "start_save", "start_use", "use_patch"]


def context(family: str, attention: Callable, percent_to_sigma: Callable[[float], float], seed: int | None = None,
            *, is_hr_pass: bool = False, encode_image: Callable | None = None, encode_prompt: Callable | None = None,
            batch_index: int = 0, batch_count: int = 1, projections=None, layer_widths=None,
            earlier: Patch | None = None, dit_ops=None, earlier_blocks: tuple[str, ...] = (),
            size: tuple[int, int] | None = None) -> PassContext:
    """One sampling pass, as the caller describes it.

    ``family``: the model family ("sd15", "sdxl", ...), kept in a Save and checked by a Use; ``attention``:
    ``(q, k, v, extra_options) -> out``, what attn1 computes without RefDrop; ``percent_to_sigma``: the schedule's
    sigma at a fraction of the steps (0 -> the highest sigma, 1 -> 0), for a Use's step window; ``seed``: names a
    Save made without a name, and seeds an image reference's noise; ``encode_image`` (image -> latent
    ``[1, C, h, w]``) and ``encode_prompt`` (text -> the model's conditioning keyword arguments for one row): for
    image references; ``batch_index`` / ``batch_count``: for the batch's first image as the reference;
    ``projections`` (layer id -> ``project(x, positions) -> (k, v)``, that layer's K and V of a stored input: a
    U-Net's ``attn.sources.LinearKV(to_k, to_v)``, a DiT's ``dit.layers.projections_of(model, dit_ops)``): for a
    reference whose profile keeps each layer's input (a Save left on the default uses ``exact`` without them);
    ``layer_widths`` (layer id -> that self-attention layer's width, None where the model has none):
    a Use then checks a reference's layers before it reads any of its files, and bounds what they may hold by them.
    ``earlier``: an attn1 patch that was there before RefDrop (another node's or extension's), kept
    running underneath RefDrop's (default: ``attention``; ``patcher/chain.py`` ``chain`` makes one of a patcher's
    per-layer patches); ``dit_ops`` (``dit/blocks.py`` ``FluxOps``, the host's kernels inside a block) for a DiT
    model, whose ``PassPatches.blocks`` then replace the model's blocks, and ``earlier_blocks``: block patches
    another extension already put there (RefDrop refuses to run with them).
    ``size``: the (width, height) of the pass's images, the aspect ratio a subject mask of the batch's first image
    is cut to (None: the mask's own).
    """
    return PassContext(family=family, is_hr_pass=is_hr_pass, percent_to_sigma=percent_to_sigma,
                       attention=attention, inner=earlier or attention, seed=seed, encode_image=encode_image,
                       encode_prompt=encode_prompt, batch_index=batch_index, batch_count=batch_count,
                       projections=projections, layer_widths=layer_widths, dit_ops=dit_ops,
                       earlier_blocks=tuple(earlier_blocks), size=size)


def identity(store: ReferenceStore, name: str) -> str:
    """A reference's identity: its manifest's seal, which changes whenever the reference does (an overwrite, a
    rename). Cheap (one small file read): a graph host's output cache can key on it."""
    return store.manifest(name)[SEAL]


class SaveSession:
    """One Save: ``for_pass`` before the sampling run it is saved from, then ``finish`` writes it (``set_preview``
    may follow). ``start_save`` plans the first pass at once: ``patch`` (on every attn1 layer), ``input_patch`` and
    ``model_wrapper`` are that pass's ``patches``.

    As a context manager, a block left without ``finish`` (the generation failed) drops the half reference.
    """

    def __init__(self, run: RefDropRun):
        self._run = run
        self.patches = PassPatches()  # the planned pass the reference is saved from

    def for_pass(self, ctx: PassContext) -> PassPatches:
        """What to install for a sampling run: the first one is recorded, later ones (a hires pass, the next batch)
        are left plain (empty). RefDropError for a name that was taken meanwhile or a bad profile."""
        patches = self._run.for_pass(ctx)
        if self.patches.empty:
            self.patches = patches
        return patches

    @property
    def patch(self) -> Patch | None:
        return self.patches.attn1

    @property
    def model_wrapper(self):
        """A Save from an image or with a trajectory profile: runs around the model."""
        return self.patches.model_wrapper

    @property
    def input_patch(self):
        """A profile that keeps each layer's input: an attn1_patch (``(n, context, value, extra_options)`` -> the
        same, run before the projections) for every attn1 layer too."""
        return self.patches.attn1_input

    @property
    def name(self) -> str:
        """The reference's name: the one asked for, or the automatic ``ref-<seed>-<time>`` once planned."""
        return self._run.save_name or self._run.settings.save_name

    def finish(self, generation: dict, preview=None, timeout: float = DEFAULT_SAVE_TIMEOUT_S) -> SaveStatus:
        """The generation is done: write the rest and wait until the reference is complete on disk.

        ``generation``: what the manifest keeps about the generation (JSON values: seed, prompt, ...; its ``width``
        and ``height``, or the context's ``size``, put a Use's subject mask on the reference's tokens); ``preview``:
        PNG bytes or a PIL image. RefDropError, with the reason, when the reference was not saved or is still
        being written after ``timeout`` seconds.
        """
        writer = self._run.writer
        if writer is None:
            raise RefDropError(f"RefDrop: reference '{self.name}' was not saved: no sampling run was planned "
                               "(call for_pass first)")
        self._run.finish_save(generation, preview)
        if not writer.wait(timeout):
            raise RefDropError(f"RefDrop: reference '{self.name}' is still being written after {timeout:g} s")
        if writer.status.state != "saved":
            raise RefDropError(writer.status.message)
        return writer.status

    def set_preview(self, image) -> None:
        """Give the saved reference its preview (PNG bytes or a PIL image), e.g. once a graph host has decoded the
        image after sampling."""
        writer = self._run.writer
        if writer is None or writer.status.state != "saved":
            raise RefDropError(f"RefDrop: reference '{self.name}' is not saved yet; finish it before its preview")
        self._run.store.set_preview(self.name, png_bytes(image))

    def abort(self, reason: str = "the generation did not finish") -> None:
        """Drop the Save: nothing of it reaches the store."""
        writer = self._run.writer
        if writer is not None and not writer.ended:
            writer.abort(reason)

    def __enter__(self) -> SaveSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        reason = "the generation did not finish" if exc_type is None else f"the generation failed ({exc_type.__name__})"
        self.abort(reason)


def save_session(store: ReferenceStore, name: str = "", profile: str = "", overwrite: bool = False, image=None,
                 image_prompt: str = "") -> SaveSession:
    """A Save of reference ``name`` ("" = automatic, from the seed) from settings alone; each sampling run is planned
    with ``SaveSession.for_pass`` once the seed, the schedule and the model are known.

    ``profile``: the storage profile ("" = the default: ``lean``, or ``exact`` for a caller that gives no
    ``projections``); ``overwrite``: replace a reference of that name;
    ``image``: bake this image (PIL) instead, evaluated with ``image_prompt`` at every sigma of the generation (the
    generation itself stays plain; install ``model_wrapper`` too). RefDropError here, at once, for a bad name or
    profile or a name that is taken.
    """
    values = {"enabled": True, "mode": "Save", "save_name": name, "profile": profile, "overwrite": overwrite}
    if image is not None:
        values.update(save_from="image", image=image, image_prompt=image_prompt)
    settings = build(values)
    if settings.profile:
        profile_to_save(settings.profile)
    if settings.save_name:
        checked = validate_name(settings.save_name)
        if not overwrite and store.exists(checked):
            raise RefDropError(f"RefDrop: a reference named '{checked}' already exists; choose another name or "
                               "allow overwriting")
    return SaveSession(RefDropRun(settings, store))


def start_save(store: ReferenceStore, name: str, ctx: PassContext, profile: str = "",
               overwrite: bool = False, image=None, image_prompt: str = "") -> SaveSession:
    """``save_session`` planned at once for the generation ``ctx`` describes: ``patch`` (and ``input_patch``,
    ``model_wrapper``) are ready to install. RefDropError also for a hires pass (a reference is the first pass)."""
    save = save_session(store, name, profile, overwrite, image, image_prompt)
    if save.for_pass(ctx).empty:
        raise RefDropError("RefDrop: a reference is saved from the first sampling pass, not from a hires pass")
    return save


def use_patch(store: ReferenceStore, name: str, rfg: float, ctx: PassContext, **settings) -> Patch | None:
    """The attn1 patch that guides the generation ``ctx`` describes by reference ``name`` at strength ``rfg``.

    ``settings``: the other Use arguments by their names in lib_refdrop/params.py (``step_start``,
    ``disabled_blocks``, ``apply_hires``, ...). None when RefDrop changes nothing (``rfg`` 0, a hires pass without
    ``apply_hires``). Waits for a Save of ``name`` that this process is still writing. RefDropError for bad
    settings, a missing reference or one saved with another model family.
    """
    fixed = sorted(set(settings) & set(_SET_BY_USE_PATCH))
    if fixed:
        raise RefDropError(f"RefDrop: use_patch sets {', '.join(fixed)} itself; pass only the other Use arguments")
    patches = start_use(store, **settings, reference=name, rfg=rfg).for_pass(ctx)
    if patches.blocks is not None:
        raise RefDropError("RefDrop: on a DiT model RefDrop replaces its blocks, not attn1: use start_use")
    if patches.model_wrapper is not None:
        raise RefDropError("RefDrop: an image reference needs its model function wrapper too: use start_use")
    return patches.attn1


class UseSession:
    """One generation's Use: ``for_pass`` before every sampling pass (every batch, the hires pass), ``close`` at the
    end, which closes the references' files. Install every part of ``PassPatches``: its ``attn1_input`` records the
    rows a trajectory reference's first Use bakes (lib_refdrop/bake.py)."""

    def __init__(self, run: RefDropRun):
        self._run = run

    def for_pass(self, ctx: PassContext) -> PassPatches:
        return self._run.for_pass(ctx)

    def close(self, generation_finished: bool = True) -> None:
        """The generation is over; ``generation_finished``: False where it failed or was interrupted (nothing it
        began baking is kept)."""
        self._run.release(generation_finished)

    def __enter__(self) -> UseSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(generation_finished=exc_type is None)


def start_use(store: ReferenceStore, *, bake_trajectories: bool = True, default_profile: str = "",
              **settings) -> UseSession:
    """A Use with the arguments of lib_refdrop/params.py by name: ``reference``, ``rfg``, ``source``, ``image``,
    ``mask``, ``reference_2``, ``rfg_2``, ... RefDropError for bad settings. A trajectory reference's first Use bakes
    the rows its reference pass computes into ``default_profile`` ("": ``lean``) and later Uses read them instead
    (lib_refdrop/bake.py); ``bake_trajectories=False`` evaluates it again at every Use, exactly, and bakes nothing."""
    fixed = sorted(set(settings) & {"enabled", "mode"})
    if fixed:
        raise RefDropError(f"RefDrop: start_use sets {', '.join(fixed)} itself")
    settings = build({**settings, "enabled": True, "mode": "Use"})
    return UseSession(RefDropRun(settings, store, default_profile, bake_trajectories=bake_trajectories))
