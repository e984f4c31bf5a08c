"""Forge Neo ``backend/nn/flux.py`` stand-in: the two pieces of its (ComfyUI's) Flux arithmetic that RefDrop's Forge
adapter reads from it, as the tiny Neo models compute them (``tests/support/tinyflux.py``)."""

from tests.support.tinyflux import neo_apply_mod as apply_mod  # noqa: F401
from tests.support.tinyflux import neo_apply_rope as apply_rope  # noqa: F401
