"""RefDrop as a ComfyUI node pack: MODEL -> MODEL nodes on clones, planned per sampling run.

The repository root's ``__init__.py`` loads this package when ComfyUI imports the clone from ``custom_nodes/``; it is
never imported by the WebUIs, and it imports no WebUI module. What talks to ComfyUI's own modules (``comfy``,
``folder_paths``, ``comfy_api``, ``server``) imports them lazily, inside functions, so that the tests can drive every
node through a fake ``ModelPatcher`` without ComfyUI:

- ``model.py``: what RefDrop reads off a ``ModelPatcher`` (family, attn1 keys, schedule, kernels);
- ``chunks.py``: which prompt each chunk of a model call holds, by ComfyUI's ``uuids``;
- ``sampling.py``: the ``OUTER_SAMPLE`` wrapper that plans and installs one run's patches, and finishes it;
- ``folders.py``: the ``refdrop`` model folder(s) and each reference's identity (the cache fingerprint);
- ``nodes.py``: what each node does; ``schema.py``: the same nodes as V3 (``io.ComfyNode``) or V1 classes;
- ``routes.py``: the reference library over ComfyUI's aiohttp server (``/refdrop/v1``).
"""
