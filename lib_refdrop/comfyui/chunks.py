"""Which prompt each chunk of a ComfyUI model call holds, named for RefDrop's patches by ``uuids``, not
``cond_or_uncond``.

ComfyUI's ``cond_or_uncond`` is the index of the cond list in the call that evaluates the model, not "is negative":
CFG evaluates ``[positive, negative]`` (0, 1), but SelfAttentionGuidance's extra pass evaluates ``[negative]`` alone
and says ``[0]`` (shared/host-traces, ``t2i_sag``). ``uuids`` (one per chunk, the uuid of the cond that filled it)
tell which prompt a chunk holds. ``reference.address.chunk_names`` names chunks by ``cond_or_uncond`` (1 = uncond);
RefDrop's own patches therefore get an ``extra_options`` whose ``cond_or_uncond`` says 1 for every chunk of a negative
cond and 0 for every chunk of a positive one, so such a pass is recorded and guided as the negative prompt it is. What
RefDrop calls underneath (ComfyUI's kernel, an earlier node's patch such as SAG's, which reads ``cond_or_uncond``
itself) gets the host's dict unchanged (``ORIGINAL_OPTIONS``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..attn.refpass import PASS_KEY
from .model import ORIGINAL_OPTIONS

NEGATIVE, POSITIVE = 1, 0


def run_uuids(conds: dict) -> tuple[frozenset, frozenset]:
    """The uuids of a sampling run's positive and negative conds (``CFGGuider.conds``)."""

    def ids(name):
        return frozenset(c.get("uuid") for c in conds.get(name, None) or () if c.get("uuid") is not None)

    return ids("positive"), ids("negative")


class ChunkNames:
    """Relabels ``cond_or_uncond`` of one run's calls by their ``uuids``; a chunk whose uuid is neither the run's
    positive nor its negative (another guider's extra conds) keeps ComfyUI's label."""

    def __init__(self, positive: frozenset, negative: frozenset):
        self.positive, self.negative = positive, negative

    def labels(self, options: dict) -> list | None:
        """The engine's ``cond_or_uncond`` for a call, None where ComfyUI's own is right as it is."""
        flags, ids = options.get("cond_or_uncond"), options.get("uuids")
        if flags is None or not isinstance(ids, (list, tuple)) or len(ids) != len(flags) or PASS_KEY in options:
            return None
        labels = [NEGATIVE if u in self.negative else POSITIVE if u in self.positive else f
                  for f, u in zip(flags, ids, strict=True)]
        return None if labels == list(flags) else labels

    def options(self, extra_options: dict) -> dict:
        labels = self.labels(extra_options)
        if labels is None:
            return extra_options
        return {**extra_options, "cond_or_uncond": labels, ORIGINAL_OPTIONS: extra_options}

    def attn1(self, patch: Callable) -> Callable:
        """``patch`` seeing relabelled options."""

        def refdrop_attn1(q, k, v, extra_options):
            return patch(q, k, v, self.options(extra_options))

        return refdrop_attn1

    def attn1_input(self, patch: Callable) -> Callable:
        def refdrop_attn1_input(n, context, value, extra_options):
            return patch(n, context, value, self.options(extra_options))

        return refdrop_attn1_input

    def model_wrapper(self, wrapper: Callable) -> Callable:
        """The engine's model function wrapper seeing relabelled ``args["cond_or_uncond"]``; the model call itself
        (``c``) is passed on unchanged."""

        def refdrop_model_wrapper(apply_model, args):
            options = {**args["c"].get("transformer_options", {}), "cond_or_uncond": args.get("cond_or_uncond")}
            labels = self.labels(options)
            return wrapper(apply_model, args if labels is None else {**args, "cond_or_uncond": labels})

        return refdrop_model_wrapper


def host_options(extra_options: dict) -> dict:
    """The host's own ``extra_options`` of a call (undoing ``ChunkNames.options``)."""
    return extra_options.get(ORIGINAL_OPTIONS, extra_options)


def chained_inner(earlier: Callable) -> Callable:
    """``earlier`` (ComfyUI's kernel or another node's attn1 patch) called with the host's own options."""

    def inner(q, k, v, extra_options):
        return earlier(q, k, v, host_options(extra_options))

    return inner
