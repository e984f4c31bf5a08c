"""The value checks that every stored tensor, and every row decoded from one, passes before Use touches it (the
store is untrusted)."""

from __future__ import annotations

import torch

# The largest magnitude a decoded row (K, V, a layer's input) or a trajectory's latent and conditioning may hold:
# float16's largest value, so anything a half-precision model computes fits; beyond it, finite values still
# overflow in the projections or the attention scores and give a NaN image.
DECODED_LIMIT = 65504.0


def all_finite(value: torch.Tensor) -> bool:
    """No NaN and no infinity in ``value``: one min/max pass (a NaN or an infinity reaches the extremes), ~16x faster
    than ``isfinite(...).all()`` on a CPU, which matters for the gigabytes of a cold Use."""
    if value.numel() == 0:
        return True
    low, high = torch.aminmax(value.float() if value.element_size() == 1 else value)  # no fp8 kernel
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def beyond_limit(tensors: dict[str, torch.Tensor], limit: float = DECODED_LIMIT) -> str | None:
    """The name of the first tensor holding a NaN, an infinity or a magnitude above ``limit``, else None: one
    min/max pass per tensor, on whichever device they are, and one transfer of the extremes for all of them."""
    names = [name for name, value in tensors.items() if value.numel()]
    if not names:
        return None
    extremes = torch.stack([torch.stack(torch.aminmax(tensors[name])).float() for name in names])
    largest = extremes.abs().amax(dim=1).tolist()  # a NaN propagates through aminmax, abs and amax
    return next((name for name, value in zip(names, largest, strict=True) if not value <= limit), None)
