"""One check that every stored tensor passes before Use touches it (the store is untrusted)."""

from __future__ import annotations

import torch


def all_finite(value: torch.Tensor) -> bool:
    """No NaN and no infinity in ``value``: one min/max pass (a NaN or an infinity reaches the extremes), ~16x faster
    than ``isfinite(...).all()`` on a CPU, which matters for the gigabytes of a cold Use."""
    if value.numel() == 0:
        return True
    low, high = torch.aminmax(value.float() if value.element_size() == 1 else value)  # no fp8 kernel
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))
