"""Addressing of reference features: which layer, which chunk (cond/uncond), which sigma, and the names they are
stored under (the on-disk vocabulary: layer ids, chunk names, slot entry names, a trajectory's entries).

The hosts call an attn1 replace patch with ``extra_options`` that name the layer (``block``,
``block_index``), the row layout (``cond_or_uncond``: one entry per chunk, 1 = uncond, 0 = cond) and
the current noise level (``sigmas``, one per latent). Everything here is pure Python so that it can be
tested against the recorded host traces without torch.
"""

from __future__ import annotations

import re
from collections import defaultdict

from ..families import BLOCK_KINDS

UNCOND = 1  # value used in cond_or_uncond for the negative prompt


def layer_id(extra_options: dict) -> str:
    """A stable name for one attn1 layer, e.g. ``input4.1`` or ``middle0.0``."""
    block_name, number = extra_options["block"][0], int(extra_options["block"][1])
    return f"{block_name}{number}.{int(extra_options.get('block_index', 0))}"


def split_layer_id(lid: str) -> tuple[str, int, int]:
    """``"output3.0"`` -> ``("output", 3, 0)``."""
    head, index = lid.split(".")
    name = head.rstrip("0123456789")
    return name, int(head[len(name):]), int(index)


# A layer's block kind -> the prefix of its name in block-weight tools; the layer-id grammar a manifest is checked
# against is made from the same table (families.BLOCK_KINDS).
_BLOCK_PREFIX = {kind.group: kind.prefix for kind in BLOCK_KINDS}
LAYER_ID_RE = re.compile(rf"^({'|'.join(_BLOCK_PREFIX)})\d{{1,3}}\.\d{{1,3}}$")  # input4.1, double18.0
CHUNK_NAME_RE = re.compile(r"^(un)?cond\d{1,3}$")  # chunk_names: uncond0, cond0, cond1...


def block_label(lid: str) -> str:
    """The block name users know from block-weight tools: ``IN04``, ``M00``, ``OUT03``."""
    name, number, _ = split_layer_id(lid)
    return f"{_BLOCK_PREFIX[name]}{number:02d}"


def block_group(lid: str) -> str:
    return split_layer_id(lid)[0]


def chunk_names(cond_or_uncond) -> list[str]:
    """One name per chunk: ``uncond0``, ``cond0``, ``cond1`` ... in row order.

    AND-prompts give several cond chunks; the ordinal keeps them apart.
    """
    seen: dict[str, int] = defaultdict(int)
    names = []
    for flag in cond_or_uncond:
        kind = "uncond" if int(flag) == UNCOND else "cond"
        names.append(f"{kind}{seen[kind]}")
        seen[kind] += 1
    return names


def rows_per_chunk(total_rows: int, cond_or_uncond) -> int:
    chunks = len(cond_or_uncond)
    if chunks == 0 or total_rows % chunks:
        raise ValueError(f"{total_rows} rows cannot be split into {chunks} cond/uncond chunks")
    return total_rows // chunks


def current_sigma(extra_options: dict) -> float:
    sigmas = extra_options["sigmas"]
    return float(sigmas[0].item() if hasattr(sigmas[0], "item") else sigmas[0])


def entry_name(lid: str, chunk: str, tensor: str) -> str:
    """Tensor name inside a slot file: ``input1.0/cond0/k``."""
    return f"{lid}/{chunk}/{tensor}"


class OccurrenceCounter:
    """Counts how often a (layer, chunk, sigma) was evaluated in one sampling pass.

    Second-order samplers evaluate the model twice at the same sigma (Heun: the corrector of step i and
    the predictor of step i+1) with different latents, so sigma alone does not identify an evaluation;
    (sigma, occurrence) does. Counting per layer and chunk makes split cond/uncond calls count alike.
    """

    def __init__(self):
        self._counts: dict[tuple[str, str, float], int] = defaultdict(int)

    def next(self, lid: str, chunk: str, sigma: float) -> int:
        key = (lid, chunk, sigma)
        occurrence = self._counts[key]
        self._counts[key] += 1
        return occurrence


# A trajectory reference's entries (attn/trajectory.py): its latent at each sigma and its conditioning rows.
LATENT = "latent"                  # the slot tensor of the reference's model input at that sigma
TRAJECTORY_LAYER = "trajectory"    # the occurrence counter's key for the latents
CONDITIONING = "conditioning"      # ``conditioning/<chunk>/<key>``: one row of the model's keyword argument <key>
# the text conditioning of a model call, SDXL's pooled/size vector, Flux's distilled guidance (one value per row)
CONDITIONING_KEYS = ("c_crossattn", "y", "guidance")


# A DiT reference that keeps each block's input: every slot file holding block inputs also holds the rotations RoPE
# turns its image tokens' keys by (the blocks' ``pe`` at those tokens, ``[tokens, dim_head / 2, 2, 2]`` float32), which
# Use projects the inputs with (dit/blocks.py ``image_kv``).
POSITIONS = "positions"


def conditioning_key(chunk: str, key: str) -> str:
    return f"{CONDITIONING}/{chunk}/{key}"


def split_conditioning_key(name: str) -> tuple[str, str] | None:
    """``"conditioning/cond0/y"`` -> ``("cond0", "y")``; None for any other name."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != CONDITIONING or parts[2] not in CONDITIONING_KEYS:
        return None
    return parts[1], parts[2]


def stored_chunks(chunks: list[str], stored: dict) -> list[str]:
    """The chunks whose text conditioning a trajectory holds, in the manifest's order."""
    return [chunk for chunk in chunks if conditioning_key(chunk, "c_crossattn") in stored]
