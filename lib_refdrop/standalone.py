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

Problems raise RefDropError here, at once. The WebUI wiring drives the same ``RefDropRun`` through
``patch_for_pass`` instead, which turns them into a patch that fails at the first attn1 call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .attn.patches import Patch
from .attn.refpass import Wrapper
from .errors import RefDropError
from .params import build
from .reference.store import ReferenceStore
from .reference.writer import SaveStatus
from .run import PassContext, RefDropRun

DEFAULT_SAVE_TIMEOUT_S = 300.0
_SET_BY_USE_PATCH = ("enabled", "mode", "reference")

__all__ = ["PassContext", "PassPatches", "SaveSession", "UseSession", "context", "start_save", "start_use",
           "use_patch"]


def context(family: str, attention: Callable, percent_to_sigma: Callable[[float], float], seed: int | None = None,
            *, is_hr_pass: bool = False, encode_image: Callable | None = None, encode_prompt: Callable | None = None,
            batch_index: int = 0, batch_count: int = 1, projections=None,
            size: tuple[int, int] | None = None) -> PassContext:
    """One sampling pass of a caller with no earlier attn1 patch to chain: RefDrop wraps ``attention`` itself.

    ``family``: the model family ("sd15", "sdxl", ...), kept in a Save and checked by a Use; ``attention``:
    ``(q, k, v, extra_options) -> out``, what attn1 computes without RefDrop; ``percent_to_sigma``: the schedule's
    sigma at a fraction of the steps (0 -> the highest sigma, 1 -> 0), for a Use's step window; ``seed``: names a
    Save made without a name, and seeds an image reference's noise; ``encode_image`` (image -> latent
    ``[1, C, h, w]``) and ``encode_prompt`` (text -> the model's conditioning keyword arguments for one row): for
    image references; ``batch_index`` / ``batch_count``: for the batch's first image as the reference;
    ``projections`` (layer id -> that attn1 layer's ``(to_k, to_v)``): for a reference whose profile keeps each
    layer's input; ``size``: the (width, height) of the pass's images, the aspect ratio a subject mask of the
    batch's first image is cut to (None: the mask's own).
    """
    return PassContext(family=family, is_hr_pass=is_hr_pass, percent_to_sigma=percent_to_sigma,
                       attention=attention, inner=attention, seed=seed, encode_image=encode_image,
                       encode_prompt=encode_prompt, batch_index=batch_index, batch_count=batch_count,
                       projections=projections, size=size)


@dataclass(frozen=True)
class PassPatches:
    """What to install for one sampling pass: the attn1 patch (None: nothing to change) and the model function
    wrapper (None: none needed), ``wrapper(apply_model, args)`` in the hosts' convention (attn/refpass.py)."""

    attn1: Patch | None
    model_wrapper: Wrapper | None


class SaveSession:
    """One Save in progress: ``patch`` goes on every attn1 layer for one generation, then ``finish`` writes it.

    As a context manager, a block left without ``finish`` (the generation failed) drops the half reference.
    """

    def __init__(self, run: RefDropRun, patch: Patch):
        self._run = run
        self.patch = patch
        self.model_wrapper = run.model_wrapper  # a Save from an image: runs the image's pass
        # A profile that keeps each layer's input: an attn1_patch (``(n, context, value, extra_options)`` -> the
        # same, run before the projections) for every attn1 layer too.
        self.input_patch = run.input_patch

    @property
    def name(self) -> str:
        """The reference's name: the one asked for, or the automatic ``ref-<seed>-<time>``."""
        return self._run.save_name

    def finish(self, generation: dict, preview=None, timeout: float = DEFAULT_SAVE_TIMEOUT_S) -> SaveStatus:
        """The generation is done: write the rest and wait until the reference is complete on disk.

        ``generation``: what the manifest keeps about the generation (JSON values: seed, prompt, ...; its ``width``
        and ``height``, or the context's ``size``, put a Use's subject mask on the reference's tokens); ``preview``:
        PNG bytes or a PIL image. RefDropError, with the reason, when the reference was not saved or is still
        being written after ``timeout`` seconds.
        """
        self._run.finish_save(generation, preview)
        writer = self._run.writer
        if not writer.wait(timeout):
            raise RefDropError(f"RefDrop: reference '{self.name}' is still being written after {timeout:g} s")
        if writer.status.state != "saved":
            raise RefDropError(writer.status.message)
        return writer.status

    def abort(self, reason: str = "the generation did not finish") -> None:
        """Drop the Save: nothing of it reaches the store."""
        if not self._run.writer.ended:
            self._run.writer.abort(reason)

    def __enter__(self) -> SaveSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        reason = "the generation did not finish" if exc_type is None else f"the generation failed ({exc_type.__name__})"
        self.abort(reason)


def start_save(store: ReferenceStore, name: str, ctx: PassContext, profile: str = "",
               overwrite: bool = False, image=None, image_prompt: str = "") -> SaveSession:
    """Start saving reference ``name`` ("" = automatic) from the generation ``ctx`` describes, or from ``image``.

    ``profile``: the storage profile ("" = the default, exact); ``overwrite``: replace a reference of that name;
    ``image``: bake this image (PIL) instead, evaluated with ``image_prompt`` at every sigma of the generation (the
    generation itself stays plain; install ``model_wrapper`` too). RefDropError for a bad name or profile, a name that
    is taken, or a hires pass (a reference is the first pass).
    """
    values = {"enabled": True, "mode": "Save", "save_name": name, "profile": profile, "overwrite": overwrite}
    if image is not None:
        values.update(save_from="image", image=image, image_prompt=image_prompt)
    run = RefDropRun(build(values), store)
    patch = run.plan_patch(ctx)
    if patch is None:
        raise RefDropError("RefDrop: a reference is saved from the first sampling pass, not from a hires pass")
    return SaveSession(run, patch)


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
    if patches.model_wrapper is not None:
        raise RefDropError("RefDrop: an image reference needs its model function wrapper too: use start_use")
    return patches.attn1


class UseSession:
    """One generation's Use: ``for_pass`` before every sampling pass (every batch, the hires pass), ``close`` at the
    end, which closes the references' files."""

    def __init__(self, run: RefDropRun):
        self._run = run

    def for_pass(self, ctx: PassContext) -> PassPatches:
        patch = self._run.plan_patch(ctx)
        return PassPatches(patch, self._run.model_wrapper)

    def close(self) -> None:
        self._run.release()

    def __enter__(self) -> UseSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_use(store: ReferenceStore, **settings) -> UseSession:
    """A Use with the arguments of lib_refdrop/params.py by name: ``reference``, ``rfg``, ``source``, ``image``,
    ``mask``, ``reference_2``, ``rfg_2``, ... RefDropError for bad settings."""
    fixed = sorted(set(settings) & {"enabled", "mode"})
    if fixed:
        raise RefDropError(f"RefDrop: start_use sets {', '.join(fixed)} itself")
    return UseSession(RefDropRun(build({**settings, "enabled": True, "mode": "Use"}), store))
