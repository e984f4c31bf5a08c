"""The limit every Use is timed against: plain sampling whose attn1 computes its attention a second time.

Imports nothing, so that a benchmark running inside a host (``comfyui_speed.py``) uses the same limit as the ones on
the dev models (``common.py``)."""


def limit_patch(attention):
    """A plain generation's attn1 that computes its attention (``attention(q, k, v, extra_options)``) a second time,
    the one extra attention per layer a Use cannot avoid (Attn(Q, K_ref, V_ref) with a reference as long as the
    image). The second result is added with weight 0, so it must be computed (0 * NaN is NaN) while the image stays
    plain: every value is the plain one (a -0.0 may become +0.0)."""

    def limit(q, k, v, extra_options):
        own = attention(q, k, v, extra_options)
        return own.add(attention(q, k, v, extra_options), alpha=0.0)

    return limit
