"""Forge Neo ``backend.attention.attention_function`` stand-in (SDPA; Neo's takes ``transformer_options`` and
ignores them)."""


def attention_function(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, **kwargs):
    from tests.support.hostsim import sdpa_attention

    return sdpa_attention(q, k, v, heads, mask=mask, skip_reshape=skip_reshape)
