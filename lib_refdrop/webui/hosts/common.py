"""What the host adapters share: recognising a host, and chaining RefDrop's patch over an earlier one.

Both hosts look an attn1 replace patch up by ``(block_name, number, block_index)`` first, then by
``(block_name, number)``, and ``set_model_replace_all`` overwrites every 3-tuple key (docs/hosts.md, "The attn1
replace patch"): a patch another extension registered before RefDrop would silently stop working, so ``chain``
keeps calling it underneath RefDrop instead.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

Attention = Callable  # (q, k, v, extra_options) -> out


def importable(module: str) -> bool:
    """Whether ``module`` exists in this process (how an adapter recognises its host), without importing it."""
    if module in sys.modules:  # also a stand-in module, whose __spec__ may be None
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False


def chain(earlier: dict, attention: Attention) -> Attention:
    """What attn1 computes without RefDrop: the ``earlier`` patch registered for this layer (by the hosts' key
    lookup), else ``attention``."""
    if not earlier:
        return attention

    def inner(q, k, v, extra_options):
        block = extra_options.get("block")
        patch = None
        if block is not None:
            key = (block[0], block[1])
            patch = earlier.get((*key, extra_options.get("block_index", 0))) or earlier.get(key)
        if patch is None:
            return attention(q, k, v, extra_options)
        return patch(q, k, v, extra_options)

    return inner
