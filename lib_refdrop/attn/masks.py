"""Subject masks: which of a reference's tokens a Use attends to, at each layer's token grid.

A mask is drawn on the reference image (1 = subject) and cut to the picture the reference's tokens come from, as
that image was (``lib_refdrop/crop.py``). A layer of ``n`` tokens sees that picture on a grid of ``h x w`` tokens
(``h * w = n``, the picture's aspect ratio, which the caller gives: a mask's own size says nothing about the
reference's grid); each token is kept when the subject covers at least half of its area.
Masking the key side keeps what eq. 6 of the RefDrop paper wants (no reference background) without its ambiguity:
eq. 6 multiplies the *output* rows of the new image by a mask drawn on the *reference*, whose positions need not
match; here image i attends only to the reference's subject tokens, wherever its own subject is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KEEP_COVERAGE = 0.5


def token_grid(tokens: int, aspect: float) -> tuple[int, int]:
    """``(h, w)`` with ``h * w == tokens`` whose ``w / h`` is closest to ``aspect`` (latent grids are exact)."""
    grids = [(rows, tokens // rows) for rows in range(1, tokens + 1) if tokens % rows == 0]
    return min(grids, key=lambda grid: abs(math.log(grid[1] / grid[0] / aspect)))


class KeyMask:
    """A reference image's subject mask, resized on demand to each layer's token grid."""

    def __init__(self, mask: torch.Tensor, aspect: float):
        """``mask``: ``[H, W]``, values in [0, 1] (1 = subject), covering the reference's picture; ``aspect``: that
        picture's width / height, the aspect ratio of the reference's token grids."""
        if mask.ndim != 2 or mask.numel() == 0:
            raise ValueError("a mask is one [H, W] image")
        if not aspect > 0:
            raise ValueError("a token grid's aspect ratio is positive")
        self.mask = mask.to(torch.float32).clamp(0, 1)
        self.aspect = float(aspect)
        self.full = bool((self.mask >= KEEP_COVERAGE).all())   # every token kept at every grid: no mask at all
        self.empty = bool((self.mask < KEEP_COVERAGE).all())
        self._kept: dict[int, torch.Tensor | None] = {}

    def kept_tokens(self, tokens: int) -> torch.Tensor | None:
        """Indices of the reference tokens to attend to at a layer of ``tokens`` tokens (None: all of them)."""
        if tokens not in self._kept:
            self._kept[tokens] = None if self.full else self._indices(tokens)
        return self._kept[tokens]

    def _indices(self, tokens: int) -> torch.Tensor:
        h, w = token_grid(tokens, self.aspect)
        coverage = F.adaptive_avg_pool2d(self.mask[None, None], (h, w)).flatten()
        return torch.nonzero(coverage >= KEEP_COVERAGE).flatten()


def select_tokens(row: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """The kept tokens of a reference row ``[tokens, C]``."""
    if kept is None:
        return row
    return row.index_select(0, kept.to(row.device))


def mask_tensor(mask) -> torch.Tensor:
    """A grayscale mask image (PIL "L", or an ``[H, W]`` array of 0..255) as ``[H, W]`` floats in [0, 1]."""
    import numpy as np

    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)
