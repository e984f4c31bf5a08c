"""The WebUI hosts: one adapter per family (``forge``, ``reforge``) makes the ``Host`` value that does everything
host-specific for the script (pass context, install, interruption, error reporting).

Host modules are imported lazily, when a host is detected, so ``lib_refdrop`` imports and tests run without a host.
"""

from __future__ import annotations

import functools

from . import forge, reforge
from .host import Host, first_image, generation_info

__all__ = ["ADAPTERS", "Host", "detect", "first_image", "generation_info"]

ADAPTERS = (forge, reforge)  # Forge first: reForge newmain_newforge has backend/ too


@functools.cache
def detect() -> Host:
    """The running host, detected at the first call and the same for the life of the process."""
    for adapter in ADAPTERS:
        if adapter.available():
            return adapter.host()
    raise RuntimeError("RefDrop: neither Forge (backend.attention) nor reForge (ldm_patched) was found")
