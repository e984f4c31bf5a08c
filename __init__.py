"""sd-refdrop as a ComfyUI custom node pack (ComfyUI imports ``custom_nodes/<this clone>/__init__.py``).

The same clone is a Forge/reForge extension (``scripts/refdrop.py``); the WebUIs never import this file, and it
does nothing unless ComfyUI is what imports it (as a package, with ComfyUI's ``folder_paths`` importable), so pytest
and the WebUIs are not disturbed by it. Everything lives in ``lib_refdrop/comfyui``.
"""

import importlib.util

if __package__ and importlib.util.find_spec("folder_paths") is not None and importlib.util.find_spec("comfy"):
    from .lib_refdrop.comfyui.pack import load as _load

    globals().update(_load())
    del _load
