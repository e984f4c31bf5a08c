"""Low-rank factors of one K or V row ``[N, C]``: ``u @ w`` with ``u`` ``[N, r]`` and ``w`` ``[r, C]``.

The rank is the smallest that keeps ``energy`` of the row's squared singular values, at most ``cap``. The top
singular values come from a randomized range finder (Halko et al. 2011, as ``torch.svd_lowrank``) with its own
seeded generator: ``torch.svd_lowrank`` draws from the global generator, which would change the noise an
ancestral sampler draws after a Save and so the Save's own image.
"""

from __future__ import annotations

import torch

OVERSAMPLE = 8   # extra columns of the random sketch: the top singular values come out accurate to ~1e-3
POWER_STEPS = 2  # subspace iterations: enough where the spectrum decays slowly (random weights)
SEED = 0


def factor(row: torch.Tensor, energy: float, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, w) in fp32 with ``u @ w ≈ row``; ``sqrt`` of the singular values goes into each factor, so both
    have the same range (which per-channel 8-bit codes of either factor keep well)."""
    x = row.float()
    n, c = x.shape
    cap = max(1, min(cap, n, c))
    basis, singular, right = _top_singular(x, min(cap + OVERSAMPLE, n, c))
    rank = rank_for_energy(singular, x.pow(2).sum(), energy, cap)
    root = singular[:rank].sqrt()
    return basis[:, :rank] * root, (right[:, :rank] * root).T.contiguous()


def rank_for_energy(singular: torch.Tensor, total: torch.Tensor, energy: float, cap: int) -> int:
    """The fewest leading singular values whose squares reach ``energy`` of ``total``, between 1 and ``cap``."""
    if total <= 0:
        return 1
    kept = torch.cumsum(singular.double().pow(2), 0) / total.double()
    reached = int(torch.searchsorted(kept, torch.tensor([energy], dtype=kept.dtype)).item()) + 1
    return max(1, min(reached, cap, singular.numel()))


def _top_singular(x: torch.Tensor, q: int):
    """(U [N, q], S [q], V [C, q]) of the leading singular triplets of ``x``."""
    generator = torch.Generator(device=x.device).manual_seed(SEED)
    sketch = torch.randn(x.shape[1], q, generator=generator, device=x.device, dtype=x.dtype)
    basis = torch.linalg.qr(x @ sketch).Q
    for _ in range(POWER_STEPS):
        basis = torch.linalg.qr(x @ torch.linalg.qr(x.T @ basis).Q).Q
    small_u, singular, right_t = torch.linalg.svd(basis.T @ x, full_matrices=False)
    return basis @ small_u, singular, right_t.T


def expand(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return u.float() @ w.float()
