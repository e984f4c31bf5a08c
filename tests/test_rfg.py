"""The RFG blend against the paper's formula, computed directly from Q, K, V (Fan et al. 2024, eq. 5)."""

from __future__ import annotations

import pytest
import torch

from lib_refdrop.attn.blend import expand_reference, rfg_blend


def softmax_attention(q, k, v, heads):
    """Attention written out: softmax(Q Kᵀ / √d) V per head, no fused kernel."""
    b, n, c = q.shape
    d = c // heads
    qh, kh, vh = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2).double() for t in (q, k, v))
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / d**0.5, dim=-1)
    return (weights @ vh).transpose(1, 2).reshape(b, n, c)


@pytest.mark.parametrize("c", [-1.0, -0.3, 0.0, 0.25, 0.6, 1.0])
def test_blend_matches_the_paper_formula(c):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 64, 40, generator=gen) for _ in range(3))
    k_ref, v_ref = (torch.randn(1, 48, 40, generator=gen) for _ in range(2))  # other token count: allowed
    own = softmax_attention(q, k, v, heads=4)
    ref = softmax_attention(q, k_ref.expand(2, -1, -1), v_ref.expand(2, -1, -1), heads=4)
    expected = c * ref + (1 - c) * own
    torch.testing.assert_close(rfg_blend(own, ref, c), expected, rtol=1e-12, atol=1e-12)


def test_identical_features_give_back_the_own_attention_bit_for_bit():
    own = torch.randn(3, 16, 8)
    for c in (-0.5, 0.3, 0.5, 0.7, 1.0):
        assert torch.equal(rfg_blend(own, own.clone(), c), own)


def test_c0_ignores_the_reference():
    own = torch.randn(2, 16, 8)
    assert torch.equal(rfg_blend(own, torch.randn(2, 16, 8), 0.0), own)


def test_expand_reference_gives_every_image_of_a_chunk_the_whole_reference_row():
    uncond, cond = torch.randn(5, 4), torch.randn(5, 4)
    stacked = expand_reference([uncond, cond], rows_per_chunk=3)
    assert stacked.shape == (6, 5, 4)
    assert all(torch.equal(stacked[i], uncond) for i in range(3))
    assert all(torch.equal(stacked[i], cond) for i in range(3, 6))
