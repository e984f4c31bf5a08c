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

from ..errors import RefDropError
from .address import OccurrenceCounter, block_group, block_label, chunk_names, current_sigma, layer_id, rows_per_chunk
from .blend import expand_reference, rfg_blend

if TYPE_CHECKING:  # what the patches read from and record into; attn itself never touches the disk
    from ..reference.reader import ReferenceReader
    from ..reference.recorder import Recorder

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]
Patch = Attention


@dataclass(frozen=True)
class UsePlan:
    """Which layers and sigmas RefDrop applies to, and how strongly (resolved from the settings)."""

    rfg: float
    disabled_layers: frozenset[str]     # layer ids of the reference that stay plain
    sigma_max: float = float("inf")     # RFG runs for sigma_min <= sigma <= sigma_max
    sigma_min: float = 0.0

    def applies(self, lid: str, sigma: float) -> bool:
        return lid not in self.disabled_layers and self.sigma_min <= sigma <= self.sigma_max


def plan_use(manifest: dict, settings, sigma_window: tuple[float, float]) -> UsePlan:
    """Resolve block/group names and the step window against the reference's layers."""
    layers = list(manifest["layers"])
    first_up = min((block_label(lid) for lid in layers if block_group(lid) == "output"), default=None,
                   key=lambda label: int(label[3:]))
    disabled_blocks = set(settings.disabled_blocks)
    if settings.skip_first_up and first_up:
        disabled_blocks.add(first_up)
    disabled = frozenset(
        lid for lid in layers if block_group(lid) in settings.disabled_groups or block_label(lid) in disabled_blocks
    )
    return UsePlan(rfg=settings.rfg, disabled_layers=disabled, sigma_max=sigma_window[0], sigma_min=sigma_window[1])


def make_save_patch(recorder: Recorder, inner: Attention) -> Patch:
    def refdrop_save(q, k, v, extra_options):
        out = inner(q, k, v, extra_options)
        recorder.record(k, v, extra_options)
        return out

    return refdrop_save


def make_use_patch(reader: ReferenceReader, plan: UsePlan, attention: Attention, inner: Attention) -> Patch:
    counter = OccurrenceCounter()  # one per sampling pass: the patch is rebuilt for every pass

    def refdrop_use(q, k, v, extra_options):
        own = inner(q, k, v, extra_options)
        lid = layer_id(extra_options)
        sigma = current_sigma(extra_options)
        if not plan.applies(lid, sigma):
            return own
        reader.check_layer(lid, q.shape[-1])
        cond_or_uncond = extra_options["cond_or_uncond"]
        rows = rows_per_chunk(q.shape[0], cond_or_uncond)
        ref_k, ref_v = [], []
        try:
            for chunk in chunk_names(cond_or_uncond):
                row_k, row_v = reader.rows(lid, chunk, sigma, counter.next(lid, chunk, sigma), q)
                ref_k.append(row_k)
                ref_v.append(row_v)
            ref = attention(q, expand_reference(ref_k, rows), expand_reference(ref_v, rows), extra_options)
        except torch.OutOfMemoryError:
            raise RefDropError(
                f"RefDrop: out of GPU memory while using reference '{reader.name}'; lower the resolution or "
                "batch size, or save the reference with a smaller storage profile"
            ) from None
        return rfg_blend(own, ref, plan.rfg)

    return refdrop_use


def make_failing_patch(message: str) -> Patch:
    """Hosts swallow exceptions raised in script hooks but abort the generation with the message of one raised
    inside a patch, so a problem found while planning is raised here, at the first attn1 call."""

    def refdrop_error(q, k, v, extra_options):
        raise RefDropError(message)

    return refdrop_error


# Both hosts look an attn1 replace patch up by ``(block_name, number, block_index)`` first, then by
# ``(block_name, number)``, and ``set_model_replace_all`` overwrites every 3-tuple key (docs/hosts.md, "The attn1
# replace patch"): a patch another extension registered before RefDrop would silently stop working, so ``chain``
# keeps calling it underneath RefDrop instead.
def chain(earlier: dict, attention: Attention) -> Attention:
    """What attn1 computes without RefDrop: the ``earlier`` patch registered for this layer (by the hosts' key
    lookup), else ``attention``."""
    if not earlier:
        return attention

    def inner(q, k, v, extra_options):
        block = extra_options.get("block")
        patch = None
        if block is not None:
            key = (block[0], block[1])
            patch = earlier.get((*key, extra_options.get("block_index", 0))) or earlier.get(key)
        if patch is None:
            return attention(q, k, v, extra_options)
        return patch(q, k, v, extra_options)

    return inner
