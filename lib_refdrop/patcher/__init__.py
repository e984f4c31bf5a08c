"""RefDrop on a ComfyUI-style ``ModelPatcher`` (ComfyUI, reForge ``ldm_patched``, Forge ``backend``, Forge Neo):
everything that speaks the patcher's convention and needs nothing else of the host.

``install``: a pass's ``PassPatches`` on a clone; ``chain``: earlier attn1 patches and model function wrappers;
``unet_layers``: a U-Net's attn1 layers and projections; ``dit_blocks``: a DiT model's blocks; ``kernels``: the hosts'
attention functions. A host adapter (``webui/hosts/`` for the A1111 family) builds the ``PassContext`` from what it
knows and calls ``install.install`` with what the run planned.
"""
