"""Forge ``backend.attention.attention_function`` stand-in (SDPA, as with --attention-pytorch)."""
CALLS = {"n": 0}


def attention_function(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    from tests.support.hostsim import sdpa_attention

    CALLS["n"] += 1
    return sdpa_attention(q, k, v, heads, mask=mask, skip_reshape=skip_reshape)
