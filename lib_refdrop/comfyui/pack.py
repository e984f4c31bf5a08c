"""What ComfyUI loads: the nodes (V3 where the running ComfyUI has ``comfy_api.latest``, else V1) and the routes.

Supported: ComfyUI 0.3.64 and later with the V3 schema (``comfy_api.latest``, ``io.ComfyNode``; checked by hand in
0.3.64); V1 classes (``NODE_CLASS_MAPPINGS``) for a ComfyUI without it. The sampling side needs what 0.3.6x has
had for a long time: ``OUTER_SAMPLE`` wrappers (``comfy/patcher_extension.py``) and the attn1 replace patch.
"""

from __future__ import annotations

import logging

from .folders import comfy_library
from .schema import node_specs, v1_mappings, v3_classes


def has_v3() -> bool:
    try:
        from comfy_api.latest import ComfyExtension, io  # noqa: F401
    except ImportError:
        return False
    return True


def load() -> dict:
    """The module attributes the repository's ``__init__.py`` exports to ComfyUI's loader."""
    lib = comfy_library()
    specs = node_specs(lib)
    try:
        from server import PromptServer

        from .routes import add_routes

        add_routes(PromptServer.instance.routes, lib)
    except Exception as exc:  # noqa: BLE001 - the nodes work without the library routes
        logging.warning("RefDrop: the /refdrop/v1 routes are not available: %s", exc)
    if not has_v3():
        mappings, names = v1_mappings(specs)
        return {"NODE_CLASS_MAPPINGS": mappings, "NODE_DISPLAY_NAME_MAPPINGS": names}
    from comfy_api.latest import ComfyExtension

    classes = v3_classes(specs)

    class RefDropExtension(ComfyExtension):
        async def get_node_list(self):
            return classes

    async def comfy_entrypoint():
        return RefDropExtension()

    return {"comfy_entrypoint": comfy_entrypoint}
