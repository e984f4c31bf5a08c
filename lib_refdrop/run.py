"""RefDrop's part in one generation: from validated settings to the patch of each sampling pass.

A host creates one ``RefDropRun`` per generation and asks it, before every sampling pass, for the ``PassPatches``
of that pass: one value with everything to install (``patcher/install.py`` installs it on a ModelPatcher).
Everything host-specific reaches it as plain values and callables, so this module is driven directly by the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from . import families
from .attn.masks import KeyMask, mask_tensor
from .attn.patches import (
    Guide,
    InputPatch,
    Patch,
    make_failing_patch,
    make_input_save_patch,
    make_internal_error_patch,
    make_save_patch,
    make_use_patch,
    plan_use,
)
from .attn.refpass import ImageLatent, Wrapper, fixed_noise, reference_pass_wrapper
from .attn.sources import BatchRows, KeptRows, PassRows, Projections, StoredRows
from .attn.trajectory import TrajectoryInput, trajectory_save_wrapper
from .bake import Bakes, recording_patches
from .crop import centre_box, same_aspect
from .dit.blocks import FluxOps
from .dit.guide import FluxRefDrop
from .dit.wan import WanOps
from .errors import RefDropError
from .images import mask_from_file
from .params import RefDropSettings
from .reference import compression
from .reference.address import CONDITIONING_KEYS
from .reference.manifest import reference_info
from .reference.names import automatic_name
from .reference.pinned import ToHost
from .reference.profiles import COMPACT, DEFAULT_PROFILE, EXACT, get_profile, profile_to_save
from .reference.reader import ReferenceReader
from .reference.recorder import Recorder
from .reference.store import ReferenceStore
from .reference.writer import ReferenceWriter, abandon_unfinished, pending_write

WAIT_FOR_PENDING_SAVE_S = 300.0
# How every message about a Save still being written begins (the text under the images, the panel's status line);
# javascript/refdrop.js polls the panel while it sees it.
SAVING = "RefDrop: saving reference"


@dataclass
class PassContext:
    """What the host tells RefDrop about one sampling pass."""

    family: str
    is_hr_pass: bool
    percent_to_sigma: Callable[[float], float]
    attention: Callable            # the host attention function (q, k, v, extra_options) -> out
    inner: Callable                # what attn1 computes without RefDrop (host attention or an earlier patch)
    seed: int | None = None
    # An image reference: image -> latent [1, C, h, w] of this pass; text -> the model's conditioning keyword
    # arguments for one row (attn/refpass.py). None where the caller cannot evaluate images.
    encode_image: Callable | None = None
    encode_prompt: Callable | None = None
    batch_index: int = 0           # which batch of the batch count this pass belongs to
    batch_count: int = 1
    # Layer id -> that attn1 layer's (to_k, to_v) in the model of this pass: for a reference that keeps each
    # layer's input (attn/sources.py StoredRows). None where the caller cannot reach the model's layers.
    projections: Projections | None = None
    # (width, height) of this pass's images: where the batch's first image is the reference, its mask is cut to
    # this aspect ratio. None where the caller does not say (the mask's own aspect ratio is then taken).
    size: tuple[int, int] | None = None
    # Layer id -> the width (heads × head size) of that self-attention layer of this pass's model, None where it has
    # none: a reference is checked against it before its first slot is read. None where the caller cannot tell.
    layer_widths: Callable[[str], int | None] | None = None
    # A DiT model (Flux, Chroma, Qwen-Image: FluxOps; Wan: WanOps): the host's kernels inside its blocks; RefDrop
    # then works in each block's attention of the image tokens (dit/guide.py) instead of on attn1 layers. None for a
    # U-Net.
    dit_ops: FluxOps | WanOps | None = None
    # Block patches another extension already put on this DiT model (names for the message): RefDrop cannot run
    # together with them.
    earlier_blocks: tuple[str, ...] = ()


@dataclass(frozen=True)
class PassPatches:
    """Everything RefDrop installs for one sampling pass; None: nothing of that kind. Nothing at all (``empty``):
    leave the model as it is (c = 0 is a plain generation, exactly)."""

    attn1: Patch | None = None            # replaces every attn1 layer: ``patch(q, k, v, extra_options)``
    model_wrapper: Wrapper | None = None   # ``wrapper(apply_model, args)`` around every model call
    attn1_input: InputPatch | None = None  # an attn1_patch, run before the projections (a Save that keeps inputs)
    blocks: FluxRefDrop | None = None      # a DiT model: computes every block, the patch in its joint attention

    @property
    def empty(self) -> bool:
        return self.attn1 is None and self.attn1_input is None and self.model_wrapper is None and self.blocks is None


def failing_patch(exc: BaseException) -> Patch:
    """For a host that swallows the exceptions raised in its hooks (the WebUIs): ``exc`` raised from the first
    attention call instead, which stops the generation with it. A RefDropError keeps its message; anything else is
    a bug, raised as RefDropInternalError from ``exc`` so the host prints where it came from."""
    if isinstance(exc, RefDropError):
        return make_failing_patch(str(exc))
    return make_internal_error_patch(exc)


def failing_pass(patch: Patch, attention: Callable, dit_ops: FluxOps | WanOps | None = None) -> PassPatches:
    """``patch`` (a ``failing_patch``) where this pass's model calls attention: on every attn1 layer, or in every
    block of a DiT model (``dit_ops``, ``attention``: as in ``PassContext``). Without ``dit_ops`` it is raised at
    the first model call too: a transformer RefDrop refuses by name (Lumina, Z-Image, Flux.2, Chroma Radiance, Wan
    VACE in Forge Neo or ComfyUI) calls no attn1 layer, and would otherwise generate plainly without a word."""
    if dit_ops is None:
        return PassPatches(attn1=patch, model_wrapper=_raised_at_model_call(patch))
    blocks = FluxRefDrop(patch, attention, dit_ops, own_needed=False)
    return PassPatches(model_wrapper=blocks.model_function(), blocks=blocks)


def _raised_at_model_call(patch: Patch) -> Wrapper:
    """A model function wrapper that raises the error of ``patch`` (a failing patch raises whatever it is called
    with) before the model runs: every host calls every model through it."""

    def refdrop_error_at_model_call(apply_model, args):
        x = args["input"]
        return patch(x, x, x, args["c"].get("transformer_options", {}))

    return refdrop_error_at_model_call


class RefDropRun:
    def __init__(self, settings: RefDropSettings, store: ReferenceStore, default_profile: str = "",
                 bake_trajectories: bool = True):
        """``default_profile``: the storage profile of a Save that asks for none, and what a trajectory reference's
        first Use bakes its rows into; ``bake_trajectories``: False, a trajectory reference is evaluated again at
        every Use (exactly) and nothing is baked (bake.py)."""
        self.settings = settings
        self.store = store
        self.default_profile = default_profile
        self._bakes = Bakes(store, default_profile, bake_trajectories)
        self.recorder: Recorder | None = None
        self.writer: ReferenceWriter | None = None
        self.save_name: str | None = None
        self.save_size: tuple[int, int] | None = None  # the Save's pass size, where its caller says it
        self.family = "unknown"
        self._readers: list[ReferenceReader] = []  # Use: one per sampling pass, closed by ``release``
        self._first_images: dict[bool, KeptRows] = {}  # the batch's first image, kept per kind of pass (hires)
        self._images: dict[tuple[str, bool], ImageLatent] = {}  # encoded once per kind of pass, not every batch
        self._host_copies = _HostCopies()

    def for_pass(self, ctx: PassContext) -> PassPatches:
        """Everything to install for this sampling pass (empty: leave the model plain); RefDropError when it cannot
        be planned. A host that swallows hook exceptions installs ``failing_pass(failing_patch(exc), ...)``
        instead."""
        if ctx.dit_ops is not None:
            return self._dit_pass(ctx)
        return self._plan(ctx)

    def _plan(self, ctx: PassContext) -> PassPatches:
        if self.settings.saving:
            return self._save_patches(ctx)
        if self.settings.using:
            return self._use_patches(ctx)
        return PassPatches()

    def _dit_pass(self, ctx: PassContext) -> PassPatches:
        """The same plan computed inside every block's joint attention, on the image tokens (dit/guide.py); the
        model function wrapper keeps each model call's options for the blocks."""
        problem = dit_unsupported(self.settings, self.save_profile(ctx.projections is not None, ctx.family), ctx.family)
        if problem:
            raise RefDropError(problem)
        blocks = FluxRefDrop(None, ctx.attention, ctx.dit_ops, own_needed=not self.settings.saving)
        planned = self._plan(replace(ctx, inner=blocks.inner))
        if planned.attn1 is None:  # c = 0 (an image's pass comes with a patch, and DiT refuses images anyway)
            return PassPatches()
        if ctx.earlier_blocks:
            message = (f"RefDrop: another extension already replaces blocks of this {families.label(ctx.family)} model "
                       f"({', '.join(ctx.earlier_blocks[:3])}); RefDrop cannot run together with it")
            if self.writer is not None and not self.writer.ended:  # the Save this pass began never runs
                self.writer.abort(message)
            raise RefDropError(message)
        blocks.patch, blocks.input_patch = planned.attn1, planned.attn1_input
        return PassPatches(model_wrapper=blocks.model_function(planned.model_wrapper), blocks=blocks)

    def _save_patches(self, ctx: PassContext) -> PassPatches:
        if ctx.is_hr_pass or self.writer is not None:
            return PassPatches()  # the reference is the first pass of the first batch
        self.save_name = self.settings.save_name or self._free_automatic_name(ctx.seed)
        profile = profile_to_save(self.save_profile(ctx.projections is not None, ctx.family))
        encoding, note = profile.file_encoding, ""
        if encoding == compression.ZSTD and not compression.available():  # zstd is lossless: the same reference
            encoding, note = "raw", f"its files are not compressed: pip install {compression.PACKAGE} to compress them"
        self.writer = ReferenceWriter(self.store, self.save_name, self.settings.overwrite, encoding, note)
        self.recorder = Recorder(self.writer, profile)
        self.family = ctx.family
        self.save_size = ctx.size
        from_image = wrapper = input_patch = None
        if self.settings.save_from == "image":
            image = self._image_latent("image", self.settings.image, ctx)
            wrapper = reference_pass_wrapper([image])
            from_image = image.name
        if profile.kept.projected:
            input_patch = make_input_save_patch(self.recorder, from_image)
        if profile.kept.evaluated_again:
            if from_image is not None:
                raise RefDropError(f"RefDrop: profile '{profile.name}' keeps a generation's latents; an image is "
                                   "saved with a profile that stores the layers' rows")
            wrapper = trajectory_save_wrapper(self.recorder)
        return PassPatches(make_save_patch(self.recorder, ctx.inner, from_image), wrapper, input_patch)

    def save_profile(self, can_project: bool = True, family: str = "") -> str:
        """The storage profile of this run's Save: the one asked for, else the Settings default. A default that keeps
        each layer's input cannot be used where that input cannot be projected again (``PassContext.projections``
        None): on a DiT model that has no input projection (Qwen-Image, Wan) it is ``compact``; for a caller that
        gives no projections (e.g. a sampler that installs only the attn1 patch) it is ``exact``."""
        if self.settings.profile:
            return self.settings.profile
        default = self.default_profile or DEFAULT_PROFILE
        if can_project or not get_profile(default).kept.projected:
            return default
        return COMPACT.name if family in families.DIT_FAMILIES else EXACT.name

    def _free_automatic_name(self, seed) -> str:
        """``ref-<seed>-<time>``, with a counter when that is taken (X/Y/Z Save cells within one second)."""
        base = automatic_name(seed)
        name, n = base, 1
        while self.store.exists(name) or pending_write(self.store, name) is not None:
            n += 1
            name = f"{base}-{n}"
        return name

    def _use_patches(self, ctx: PassContext) -> PassPatches:
        if ctx.is_hr_pass and not self.settings.apply_hires:
            return PassPatches()
        guides, images, layers, bakes = [], [], None, []
        for slot in self.settings.slots:
            mask = slot.mask
            if slot.source == "reference":
                reader = self._open_reference(slot, ctx)
                if reader is None:
                    continue
                layers = layers if layers is not None else list(reader.manifest["layers"])
                if reader.profile.kept.evaluated_again:  # evaluated again from its latents, like an image
                    trajectory = TrajectoryInput(f"reference '{reader.name}' (slot {slot.index})", reader)
                    images.append(trajectory)
                    source = PassRows(trajectory.name)
                    bakes.append(self._bakes.plan(reader, trajectory.name, ctx, self.settings))
                else:
                    source = StoredRows(reader)
                mask = mask if mask is not None else self._stored_mask(slot.reference)
                key_mask = _key_mask(mask, _recorded_size(reader.manifest))
            elif slot.rfg == 0:
                continue
            elif slot.source == "batch":
                source = self._first_image_rows(ctx)
                key_mask = _key_mask(mask, ctx.size)
            else:
                image = self._image_latent(f"the image of slot {slot.index}", slot.image, ctx)
                images.append(image)
                source = PassRows(image.name)
                _check_mask_fits_image(mask, slot.image, slot.index)
                key_mask = _key_mask(mask, image.size)
            if key_mask is not None and ctx.family in _WITHOUT_MASKS:
                raise RefDropError(f"RefDrop: a subject mask does not work with {families.label(ctx.family)} models "
                                   f"yet (slot {slot.index}); a clip's tokens are frames × rows × columns")
            guides.append(Guide(source, slot.rfg, key_mask))
        if not guides:  # every coefficient is 0: a plain generation, exactly: no patch at all
            return PassPatches()
        window = (ctx.percent_to_sigma(self.settings.step_start), ctx.percent_to_sigma(self.settings.step_end))
        passes = {g.source.name: g.source for g in guides if isinstance(g.source, PassRows)}
        wrapper = None
        if images:
            wrapper = reference_pass_wrapper(images, lambda sigma: window[1] <= sigma <= window[0])
        patch = make_use_patch(guides, plan_use(self.settings, window, layers), ctx.attention, ctx.inner, passes)
        patch, input_patch = recording_patches([bake for bake in bakes if bake is not None], patch)
        return PassPatches(attn1=patch, model_wrapper=wrapper, attn1_input=input_patch)

    def _open_reference(self, slot, ctx: PassContext) -> ReferenceReader | None:
        """The reader of a slot's saved reference; None when its coefficient is 0 (checked all the same)."""
        name = slot.reference
        if not name:
            where = "" if slot.index == 1 else f" in slot {slot.index}"
            raise RefDropError(f"RefDrop: Use is on but no reference is selected{where}")
        writer = pending_write(self.store, name)
        if writer is not None and not writer.wait(WAIT_FOR_PENDING_SAVE_S):
            raise RefDropError(f"RefDrop: reference '{name}' is still being written; try again when it is saved")
        opened = self.store.open(name)  # one version, whatever another client writes meanwhile; not found: raises
        problem = families.mismatch(name, opened.manifest["family"], ctx.family)
        if problem or slot.rfg == 0:
            opened.close()
            if problem:
                raise RefDropError(problem)
            return None
        baked = self._bakes.reader(opened, ctx)
        if baked is not None:  # its rows, as its first Use computed them: no reference pass
            opened.close()
            self._readers.append(baked)
            return baked
        reader = ReferenceReader(opened, projections=ctx.projections, layer_widths=ctx.layer_widths)
        self._readers.append(reader)
        return reader

    def _stored_mask(self, name: str):
        """The subject mask saved with a reference (the library's), decoded as the untrusted image it is."""
        png = self.store.read_mask(name)
        if png is None:
            return None
        return mask_from_file(png, f"the mask of reference '{name}'")

    def _first_image_rows(self, ctx: PassContext) -> BatchRows:
        kept = self._first_images.setdefault(ctx.is_hr_pass, KeptRows(self._host_copies))
        if ctx.batch_index > 0:
            self._host_copies.wait()  # the first batch's copies off the device are done long before
        return BatchRows(kept, first_batch=ctx.batch_index == 0, keep=ctx.batch_count > 1)

    def _image_latent(self, name: str, image, ctx: PassContext) -> ImageLatent:
        """The image as the U-Net sees it in this kind of pass (the first pass, or the hires pass at its size),
        encoded at its first batch: every batch then attends to the same latent, noise and prompt."""
        key = (name, ctx.is_hr_pass)
        if key not in self._images:
            self._images[key] = self._encode_image(name, image, ctx)
        return self._images[key]

    def _encode_image(self, name: str, image, ctx: PassContext) -> ImageLatent:
        if image is None:
            raise RefDropError(f"RefDrop: {name} is missing: give an image")
        if ctx.encode_image is None or ctx.encode_prompt is None:
            raise RefDropError("RefDrop: this host cannot evaluate an image as a reference")
        latent = ctx.encode_image(image)
        seed = ctx.seed if ctx.seed is not None else 0
        return ImageLatent(name, latent, fixed_noise(latent, seed), ctx.encode_prompt(self.settings.image_prompt))

    def release(self, generation_finished: bool = True) -> None:
        """The generation is over: close the references Use opened (their files stay open until then), and commit
        the rows a trajectory reference's first Use baked (in the background), unless the generation did not
        finish."""
        self._bakes.finish(generation_finished)
        for reader in self._readers:
            reader.close()
        self._readers.clear()
        self._first_images.clear()
        self._images.clear()
        self._host_copies.release()

    def finish_save(self, generation: dict, preview) -> str:
        """End of the generation: hand the rest of the recording and the manifest to the writer."""
        if self.writer is None:
            return ""
        self.recorder.flush()
        if not self.recorder.recorded_anything:
            self.writer.abort(self.recorder.profile.kept.nothing_recorded)
        else:
            if self.settings.save_from == "image":  # the reference is the image, not what was generated
                generation = {**generation, "source": "image", "image_prompt": self.settings.image_prompt}
                preview = self.settings.image
            if self.save_size is not None:  # where a Use puts a subject mask on this reference's tokens
                width, height = self.save_size
                generation = {"width": width, "height": height, **generation}
            self.writer.finish(self.family, generation, self.recorder.recording(), preview)
        return f"{SAVING} '{self.save_name}' in the background"


def dit_unsupported(settings, profile: str = "", family: str = "flux") -> str | None:
    """What a pass on a DiT model of ``family`` cannot do (yet), or None; ``profile``: the Save's storage profile
    (``RefDropRun.save_profile``)."""
    name = families.label(family)
    if settings.saving:
        problem = _dit_profile_problem(settings.profile or profile, name) or _trajectory_problem(
            settings.profile or profile, family)
        if problem:
            return problem
    if settings.saving and settings.save_from == "image":
        return (f"RefDrop: a Save from an image does not work with {name} models yet; save a reference from a "
                "generation instead")
    if settings.using and any(slot.source == "image" and slot.rfg != 0 for slot in settings.slots):
        return (f"RefDrop: an image as the reference does not work with {name} models yet; use a saved reference "
                "or the first image of the batch")  # the pass would need the model's own prompt conditioning
    return None


def _dit_profile_problem(profile: str, name: str) -> str | None:
    """A trajectory works on a DiT model once it keeps the distilled guidance the model is evaluated with (without it
    the reference would be evaluated wrongly)."""
    kept = get_profile(profile).kept
    if kept.evaluated_again and "guidance" not in CONDITIONING_KEYS:
        return (f"RefDrop: the storage profile '{profile}' does not keep {name}'s guidance yet; choose exact, "
                "balanced or compact")
    return None


# DiT families a trajectory reference can be evaluated again for: it keeps the text rows, the pooled text and the
# distilled guidance, all these models are conditioned on. Qwen-Image (Edit: its edit images) and Wan (image-to-video:
# the image latents, CLIP-vision features) can be conditioned on more.
_TRAJECTORY_FAMILIES = ("flux", "chroma")
# DiT families whose blocks a stored input is projected again for (``dit/layers.projections_of``)
_INPUT_FAMILIES = ("flux", "chroma")
# DiT families whose references a subject mask cannot be laid on yet: the mask is resized to a 2-D grid of tokens,
# and a Wan clip's are frames × rows × columns
_WITHOUT_MASKS = ("wan",)


def _trajectory_problem(profile: str, family: str) -> str | None:
    kept = get_profile(profile).kept
    if family in families.DIT_FAMILIES and (kept.evaluated_again and family not in _TRAJECTORY_FAMILIES
                                            or kept.projected and family not in _INPUT_FAMILIES):
        return (f"RefDrop: the storage profile '{profile}' does not work with {families.label(family)} models yet; "
                "choose exact, balanced or compact")
    return None


def _key_mask(mask, frame: tuple[int, int] | None) -> KeyMask | None:
    """A slot's mask (PIL "L") on the reference's token grids: cut to the aspect ratio of ``frame`` (the (width,
    height) of the picture the reference's tokens come from) exactly as an image is cut to a pass; a ``frame`` of
    None (not known) takes the mask's own aspect ratio."""
    if mask is None:
        return None
    width, height = frame if frame is not None else mask.size
    return KeyMask(mask_tensor(mask.crop(centre_box(mask.width, mask.height, width, height))), width / height)


def _check_mask_fits_image(mask, image, slot: int) -> None:
    """An image slot's image is cut to the generation's aspect ratio and its mask by the same box, so both must
    have one aspect ratio: a mask of another is not on the image's pixels."""
    if mask is not None and image is not None and not same_aspect(mask.size, image.size):
        raise RefDropError(
            f"RefDrop: the mask of slot {slot} is {mask.width}×{mask.height} pixels but its image is "
            f"{image.width}×{image.height}: a mask is drawn on its image, with the image's aspect ratio"
        )


def _recorded_size(manifest: dict) -> tuple[int, int] | None:
    """The (width, height) a reference's generation records (what its tokens saw), None where it records none."""
    info = reference_info(manifest)
    if info.width is None or info.height is None or info.width < 1 or info.height < 1:
        return None
    return info.width, info.height


class _HostCopies:
    """Copies the batch's first image off the device as it is generated (asynchronous on CUDA, into page-locked
    memory), for the batches after it."""

    def __init__(self):
        self._to_host: ToHost | None = None
        self._arena = None

    def __call__(self, tensor):
        if self._to_host is None:
            self._to_host = ToHost(tensor.device)
            self._arena = self._to_host.new_arena()
        return self._to_host.copy(tensor, self._arena)

    def wait(self) -> None:
        if self._to_host is not None:
            self._to_host.fence()()

    def release(self) -> None:
        if self._arena is not None:
            self._arena.release()
        self._to_host = self._arena = None


def abandon_unfinished_saves() -> None:
    """A generation that failed or was interrupted never reaches postprocess; drop its half reference."""
    abandon_unfinished()
