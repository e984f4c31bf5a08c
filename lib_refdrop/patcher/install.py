"""RefDrop's patches of one sampling pass on a clone of a ModelPatcher: the convention ComfyUI, reForge
``ldm_patched``, Forge ``backend`` and Forge Neo share.

An attn1 patch goes on every attn1 layer: with ``set_model_replace_all`` where the patcher has it (Forge, reForge),
else with one ``set_model_attn1_replace`` per layer key (ComfyUI); an input patch with ``set_model_attn1_patch``; a
DiT model's blocks the way that model lets them be reached (``dit_blocks.py``); the model function wrapper inside the
one already there (``chain.py``). Everything goes on a clone, so the patcher the host gave is unchanged and nothing
outlives the pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import dit_blocks, unet_layers
from .chain import CompleteExtraCall, install_model_function, no_completion

if TYPE_CHECKING:  # the value a run plans; this package only installs it
    from ..run import PassPatches


def install(unet, patches: PassPatches, complete_extra_call: CompleteExtraCall = no_completion, layers=None):
    """A clone of the patcher ``unet`` with ``patches`` on it, or ``unet`` itself when there is nothing to install
    (c = 0: a plain generation, exactly). ``complete_extra_call``: the ``transformer_options`` keys the host derives
    per call, redone for a call RefDrop makes itself (``chain.py``); ``layers``: the attn1 layer keys
    ``(block_name, number, transformer_index)`` for a patcher without ``set_model_replace_all`` (default: the
    U-Net's, ``unet_layers.attn1_layer_keys``)."""
    if patches.empty:
        return unet
    patched = unet.clone()
    if patches.attn1 is not None:
        install_attn1(patched, patches.attn1, layers)
    if patches.attn1_input is not None:
        patched.set_model_attn1_patch(patches.attn1_input)
    if patches.blocks is not None:
        dit_blocks.install_blocks(patched, patches.blocks)
    if patches.model_wrapper is not None:
        install_model_function(patched, patches.model_wrapper, complete_extra_call)
    return patched


def install_attn1(unet, patch, layers=None) -> None:
    """``patch`` on every attn1 layer of the patcher ``unet``."""
    replace_all = getattr(unet, "set_model_replace_all", None)
    if replace_all is not None:
        replace_all(patch, "attn1")
        return
    keys = layers if layers is not None else unet_layers.attn1_layer_keys(unet.model.diffusion_model)
    for block_name, number, index in keys:
        unet.set_model_attn1_replace(patch, block_name, number, index)
