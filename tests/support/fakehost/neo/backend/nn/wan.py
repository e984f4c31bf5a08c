"""Forge Neo ``backend/nn/wan.py`` stand-in: the RoPE of its Wan blocks that RefDrop's Forge adapter reads from it
(comfy_kitchen's ``apply_rope1``), as the tiny Neo Wan computes it (``tests/support/tinywan.py``)."""

from tests.support.tinywan import apply_rope1  # noqa: F401
