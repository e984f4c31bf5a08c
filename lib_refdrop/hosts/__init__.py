"""Host adapters: the few places where Forge and reForge differ for RefDrop (attention kernel, sigma schedule,
the API's error body).

Host modules are imported lazily inside functions, so ``lib_refdrop`` imports and tests run without a host.
"""

from __future__ import annotations

from types import ModuleType

from . import forge, reforge
from .common import earlier_attn1_patches, install, make_inner, percent_to_sigma
from .reporting import DEFAULT_MESSAGE_KEY

__all__ = ["api_error_message_key", "attention", "detect", "earlier_attn1_patches", "install", "make_inner",
           "percent_to_sigma"]

ADAPTERS: tuple[ModuleType, ...] = (forge, reforge)  # Forge first: reForge newmain_newforge has backend/ too


def detect() -> ModuleType | None:
    """The adapter of the running host, or None outside a host."""
    for adapter in ADAPTERS:
        if adapter.available():
            return adapter
    return None


def attention():
    """The running host's attention as ``(q, k, v, extra_options) -> out``."""
    adapter = detect()
    if adapter is None:
        raise RuntimeError("RefDrop: neither Forge (backend.attention) nor reForge (ldm_patched) was found")
    return adapter.attention()


def api_error_message_key() -> str:
    """Where the running host's API error body carries the exception's message (``errors`` or ``message``)."""
    adapter = detect()
    return getattr(adapter, "API_ERROR_MESSAGE_KEY", DEFAULT_MESSAGE_KEY)
