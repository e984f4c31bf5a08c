"""Flux on reForge (``ldm_patched/ldm/flux/model.py``): RefDrop replaces the blocks through ``patches_replace``.

``Flux.forward_orig`` looks up ``transformer_options["patches_replace"]["dit"][("double_block", i)]`` (and
``("single_block", i)``) and calls it as ``replace(args, {"original_block": ...})`` with ``args`` = ``{"img",
"txt", "vec", "pe", "attn_mask"}`` (``{"img", "vec", "pe", "attn_mask"}`` for a single-stream block, whose ``img``
is ``[txt; img]``); it returns ``{"img", "txt"}`` (``{"img"}``). ``set_model_patch_replace(patch, "dit",
block_name, i)`` registers one on the clone's ``model_options`` only.
"""

from __future__ import annotations

import torch

from ...dit.blocks import FluxOps


def flux_ops() -> FluxOps:
    from ldm_patched.ldm.modules.attention import optimized_attention  # the kernel reForge's flux ``attention`` calls

    def joint_attention(q, k, v, attn_mask):
        return optimized_attention(q, k, v, q.shape[1], skip_reshape=True, mask=attn_mask)

    def modulate(x, shift, scale):  # ``apply_mod`` in ldm_patched/ldm/flux/layers.py
        return torch.addcmul(shift, x, 1 + scale)

    return FluxOps(joint_attention=joint_attention, modulate=modulate)


def earlier_block_patches(unet) -> list[str]:
    """Block replacements another extension already registered on this Flux model."""
    options = getattr(unet, "model_options", None) or {}
    dit = options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    return sorted(f"{key[0]} {key[1]}" for key, patch in dit.items()
                  if not getattr(patch, "__name__", "").startswith("refdrop_"))


def install_blocks(unet, dit) -> None:
    """Every block of the clone ``unet`` computed by ``dit`` (``dit/guide.py`` ``FluxRefDrop``)."""
    model = unet.model.diffusion_model
    for index, block in enumerate(model.double_blocks):
        unet.set_model_patch_replace(_double(dit, block, index), "dit", "double_block", index)
    for index, block in enumerate(model.single_blocks):
        unet.set_model_patch_replace(_single(dit, block, index), "dit", "single_block", index)


def _double(dit, block, index):
    def refdrop_double_block(args, extra):
        img, txt = dit.double(block, index, args["img"], args["txt"], args["vec"], args["pe"], args.get("attn_mask"))
        return {"img": img, "txt": txt}

    return refdrop_double_block


def _single(dit, block, index):
    def refdrop_single_block(args, extra):
        return {"img": dit.single(block, index, args["img"], args["vec"], args["pe"], args.get("attn_mask"))}

    return refdrop_single_block
