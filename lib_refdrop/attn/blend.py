"""Reference feature guidance, the blend at the heart of RefDrop (Fan et al. 2024, eq. 5).

    out = c * Attn(Q, K_ref, V_ref) + (1 - c) * Attn(Q, K, V)

The blend happens on the attention output before ``to_out``; since ``to_out`` is affine and the weights
sum to one, this equals blending after it.
"""

from __future__ import annotations

import torch


def rfg_blend(own: torch.Tensor, ref: torch.Tensor, c: float) -> torch.Tensor:
    """``c * ref + (1 - c) * own``.

    ``torch.lerp`` returns ``own`` bit for bit when ``ref == own`` (any c) and when c == 0, which is what
    makes Use reproduce the Save image exactly.
    """
    return torch.lerp(own, ref.to(own.dtype), float(c))


def expand_reference(chunks: list[torch.Tensor], rows_per_chunk: int) -> torch.Tensor:
    """Stack one reference row per chunk into the batch layout ``[chunks * B, N, C]``.

    Each of the B images of a chunk attends to the whole reference row of that chunk.
    """
    return torch.cat([row.unsqueeze(0).expand(rows_per_chunk, *row.shape) for row in chunks], dim=0)


def rfg_blend_many(own: torch.Tensor, refs: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """Several references (the paper's eq. 7): ``sum_j c_j * ref_j + (1 - sum_j c_j) * own``.

    One reference is ``rfg_blend`` itself, bit for bit, so a slot at c with the others off (left out of ``refs``)
    is exactly the single-reference result.
    """
    if not refs:
        return own
    if len(refs) == 1:
        (c, ref), = refs
        return rfg_blend(own, ref, c)
    out = own.clone()
    for c, ref in refs:
        out.add_(ref.to(own.dtype) - own, alpha=float(c))
    return out
