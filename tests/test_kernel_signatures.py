"""A kernel's signature is read, not assumed: Forge Classic (Forge v1, ``ldm_patched``) names its kernel
``optimized_attention`` like reForge ``main``, but every Classic kernel is ``(q, k, v, heads, mask=None)``
(shared/research/forge-neo-classic.md, 1.4): passing reForge's ``attn_precision`` there raised at the first attn1 call
of every Save and Use."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lib_refdrop.patcher import kernels
from tests.support.hostsim import sdpa_attention


def _module(name: str, kernel) -> str:
    module = types.ModuleType(name)
    module.optimized_attention = kernel
    sys.modules[name] = module
    return name


@pytest.fixture
def qkv():
    torch.manual_seed(0)
    return [torch.randn(2, 16, 32) for _ in range(3)]


def test_a_classic_kernel_gets_no_attn_precision(qkv):
    calls = []

    def attention_sub_quad(query, key, value, heads, mask=None):  # Forge Classic's signature
        calls.append(heads)
        return sdpa_attention(query, key, value, heads, mask=mask)

    attention = kernels.optimized_attention(_module("classic_kernel_standin", attention_sub_quad))
    out = attention(*qkv, {"n_heads": 4, "attn_precision": torch.float32})
    assert calls == [4] and torch.equal(out, sdpa_attention(*qkv, 4))


def test_a_reforge_kernel_gets_the_layer_precision(qkv):
    seen = []

    def optimized_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):  # reForge main
        seen.append(attn_precision)
        return sdpa_attention(q, k, v, heads)

    attention = kernels.optimized_attention(_module("reforge_kernel_standin", optimized_attention))
    attention(*qkv, {"n_heads": 4, "attn_precision": torch.float32})
    assert seen == [torch.float32]


def test_a_kernel_that_takes_any_keyword_gets_the_precision_too(qkv):
    seen = []

    def attention_pytorch(q, k, v, heads, mask=None, **kwargs):  # Forge Neo's backend kernels take **kwargs
        seen.append(kwargs.get("attn_precision"))
        return sdpa_attention(q, k, v, heads)

    attention = kernels.optimized_attention(_module("neo_kernel_standin", attention_pytorch))
    attention(*qkv, {"n_heads": 4, "attn_precision": torch.float16})
    assert seen == [torch.float16]
