"""The attn1 replace patches: Save records, Use blends, and a failing patch carries errors to the user.

A host calls ``patch(q, k, v, extra_options)`` for every self-attention layer with projected, un-split q/k/v
(``[rows, tokens, heads * dim_head]``) and expects the attention output before ``to_out``. ``attention`` is the
host's own attention function (same kernel and precision as a plain generation), ``inner`` the attention
this layer would compute without RefDrop (the host's, or another extension's patch that was there first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import RefDropError, RefDropInternalError
from ..reference.address import OccurrenceCounter, block_group, block_label, chunk_names, current_sigma, layer_id
from .blend import expand_reference, rfg_blend_many
from .masks import KeyMask, select_tokens
from .refpass import PASS_KEY
from .sources import LayerCall, PassRows, Source, layer_call

if TYPE_CHECKING:  # what a Save records into; attn itself never touches the disk
    from ..reference.recorder import Recorder

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]
Patch = Attention


class UsePlan:
    """Which layers and sigmas RefDrop applies to (resolved from the settings), the same for every reference slot.

    "Skip the first up-sampling block" needs the model's first output block with attention: a stored reference's
    manifest names its layers; a live reference (an image, the batch's first image) learns it from the calls, since
    a U-Net runs its output blocks in order.
    """

    def __init__(self, disabled_blocks=(), disabled_groups=(), skip_first_up: bool = False,
                 sigma_window: tuple[float, float] = (float("inf"), 0.0), layers=None):
        self.disabled_blocks = set(disabled_blocks)
        self.disabled_groups = set(disabled_groups)
        self.skip_first_up = skip_first_up
        self.sigma_max, self.sigma_min = sigma_window
        self.first_up = _first_up(layers) if layers is not None else None

    def applies(self, lid: str, sigma: float) -> bool:
        if not self.sigma_min <= sigma <= self.sigma_max:
            return False
        group, label = block_group(lid), block_label(lid)
        if self.skip_first_up and self.first_up is None and group == "output":
            self.first_up = label
        if self.skip_first_up and label == self.first_up:
            return False
        return group not in self.disabled_groups and label not in self.disabled_blocks


def _first_up(layers) -> str | None:
    return min((block_label(lid) for lid in layers if block_group(lid) == "output"), default=None,
               key=lambda label: int(label[3:]))


def plan_use(settings, sigma_window: tuple[float, float], layers=None) -> UsePlan:
    """The plan of a Use; ``layers``: the layer ids of a stored reference (None: learned from the calls)."""
    return UsePlan(settings.disabled_blocks, settings.disabled_groups, settings.skip_first_up, sigma_window, layers)


@dataclass
class Guide:
    """One reference slot of a Use: where its rows come from, its coefficient, its subject mask."""

    source: Source
    rfg: float
    mask: KeyMask | None = None


def make_save_patch(recorder: Recorder, inner: Attention, from_image: str | None = None) -> Patch:
    """Record every attn1 call of the generation, or (``from_image``) only those of that image's reference pass:
    the generation itself then stays plain."""

    kept = recorder.profile.kept

    def refdrop_save(q, k, v, extra_options):
        out = inner(q, k, v, extra_options)
        if extra_options.get(PASS_KEY) == from_image:
            if kept.recorded_by == "attn1":
                recorder.record({"k": k, "v": v}, extra_options)
            elif kept.evaluated_again:
                recorder.note_layer(k, extra_options)  # what Use checks a model against; the rows are evaluated again
        return out

    return refdrop_save


InputPatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], tuple]
# In the extra_options of a DiT block's input call (dit/guide.py): the RoPE rotations of its image tokens, which its
# keys are turned by after the projection (a U-Net's attn1 has none)
POSITIONS_OPTION = "refdrop_positions"


def make_input_save_patch(recorder: Recorder, from_image: str | None = None) -> InputPatch:
    """For a profile that stores each layer's input (``Kept.projected``): an ``attn1_patch``, which the hosts run on
    the normed hidden states just before ``to_q``/``to_k``/``to_v`` (docs/hosts.md), records what ``to_k`` and
    ``to_v`` are about to project, and changes nothing. A DiT block calls it with its image tokens' attention input
    and their RoPE rotations (``POSITIONS_OPTION``), which are recorded with it."""

    def refdrop_save_input(n, context, value, extra_options):
        if extra_options.get(PASS_KEY) == from_image:
            if value is not context and not torch.equal(value, context):
                raise RefDropError("RefDrop: another extension gives this layer's K and V different inputs; save "
                                   "with a profile that stores K and V (exact)")
            recorder.record({"x": context}, extra_options, extra_options.get(POSITIONS_OPTION))
        return n, context, value

    return refdrop_save_input


def make_use_patch(guides: list[Guide], plan: UsePlan, attention: Attention, inner: Attention,
                   passes: dict[str, PassRows] | None = None) -> Patch:
    """Guide every attn1 call by ``guides`` (eq. 5, or eq. 7 for several); ``passes``: the live images whose
    reference passes record into them."""
    counter = OccurrenceCounter()  # one per sampling pass: the patch is rebuilt for every pass
    passes = passes or {}

    def refdrop_use(q, k, v, extra_options):
        image = extra_options.get(PASS_KEY)
        lid = layer_id(extra_options)
        if image is not None:
            passes[image].record(lid, k, v, chunk_names(extra_options["cond_or_uncond"]))
            return inner(q, k, v, extra_options)
        own = inner(q, k, v, extra_options)
        sigma = current_sigma(extra_options)
        cond_or_uncond = extra_options["cond_or_uncond"]
        occurrences = [counter.next(lid, chunk, sigma) for chunk in chunk_names(cond_or_uncond)]
        if not plan.applies(lid, sigma):
            return own
        call = layer_call(lid, sigma, cond_or_uncond, occurrences, q, k, v)
        try:
            refs = [(guide.rfg, ref) for guide in guides
                    if (ref := _guided_attention(guide, call, own, attention, extra_options)) is not None]
        except torch.OutOfMemoryError:
            names = ", ".join(f"'{guide.source.name}'" for guide in guides)
            raise RefDropError(
                f"RefDrop: out of GPU memory while using reference {names}; lower the resolution or "
                "batch size, or save the reference with a smaller storage profile"
            ) from None
        return rfg_blend_many(own, refs)

    return refdrop_use


def _guided_attention(guide: Guide, call: LayerCall, own, attention: Attention, extra_options):
    """``Attn(Q, K_ref, V_ref)`` of one reference, or None where it has nothing to attend to at this layer (its
    mask keeps no token there)."""
    guide.source.check_layer(call.lid, call.q.shape[-1])
    pairs = [guide.source.rows(call, i) for i in range(len(call.chunks))]
    if guide.mask is not None:
        kept = guide.mask.kept_tokens(pairs[0][0].shape[0])
        if kept is not None and kept.numel() == 0:
            return None
        pairs = [(select_tokens(k, kept), select_tokens(v, kept)) for k, v in pairs]
    own_rows = [i * call.rows + r for i, chunk in enumerate(call.chunks)
                for r in (guide.source.own_rows if guide.source.guides(chunk) else range(call.rows))]
    if len(own_rows) == call.q.shape[0]:
        return None  # every image here is the reference itself, or a chunk the reference leaves plain
    ref_k = expand_reference([k for k, _ in pairs], call.rows)
    ref_v = expand_reference([v for _, v in pairs], call.rows)
    ref = attention(call.q, ref_k, ref_v, extra_options)
    if own_rows:
        ref[own_rows] = own[own_rows].to(ref.dtype)  # these rows stay plain, bit for bit
    return ref


def make_failing_patch(message: str) -> Patch:
    """Hosts swallow exceptions raised in script hooks but abort the generation with the message of one raised
    inside a patch, so a problem found while planning is raised here, at the first attn1 call."""

    def refdrop_error(q, k, v, extra_options):
        raise RefDropError(message)

    return refdrop_error


def make_internal_error_patch(exc: BaseException) -> Patch:
    """An attn1 patch that stops the generation for a bug found while planning: raised as
    ``RefDropInternalError`` from ``exc``, so the host prints the traceback of the cause and answers 500."""
    message = f"RefDrop: internal error: {exc!r}"

    def refdrop_internal_error(q, k, v, extra_options):
        raise RefDropInternalError(message) from exc

    return refdrop_internal_error

