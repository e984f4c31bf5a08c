"""reForge ``ldm_patched.ldm.modules.attention.optimized_attention`` stand-in; records ``attn_precision``."""
CALLS = {"n": 0, "attn_precision": []}


def optimized_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False):
    from tests.support.hostsim import sdpa_attention

    CALLS["n"] += 1
    CALLS["attn_precision"].append(attn_precision)
    return sdpa_attention(q, k, v, heads, mask=mask, skip_reshape=skip_reshape)
