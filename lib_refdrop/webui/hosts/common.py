"""What the host adapters share: recognising a host without importing it."""

from __future__ import annotations

import importlib.util
import sys


def importable(module: str) -> bool:
    """Whether ``module`` exists in this process (how an adapter recognises its host), without importing it."""
    if module in sys.modules:  # also a stand-in module, whose __spec__ may be None
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False
