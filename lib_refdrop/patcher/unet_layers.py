"""The attn1 layers of a host's U-Net: their keys (for a patcher without ``set_model_replace_all``), and one layer by
RefDrop's layer id, for a profile that keeps each layer's input.

The hosts' U-Nets (ComfyUI ``comfy/ldm/modules/diffusionmodules/openaimodel.py``, reForge
``ldm_patched/ldm/modules/diffusionmodules/openaimodel.py``, Forge ``backend/nn/unet.py``) hold their blocks as
``input_blocks[n]``, ``middle_block`` and ``output_blocks[n]``; the block with attention has one module with
``transformer_blocks``, whose ``[block_index].attn1`` is the layer an attn1 patch of ``(block_name, n, block_index)``
runs in (docs/hosts.md). Its ``to_k``/``to_v`` are called as modules, so whatever
the host does in a module's forward (LoRA applied on the fly, casts of low-precision weights) happens to the
reference's rows too.
"""

from __future__ import annotations

from ..attn.sources import LinearKV
from ..errors import RefDropError
from ..reference.address import split_layer_id


def attn1_layer_keys(diffusion_model) -> list[tuple[str, int, int]]:
    """``(block_name, number, transformer_index)`` of every attn1 layer, the key an attn1 replace patch is set by."""
    blocks = [("input", n, b) for n, b in enumerate(getattr(diffusion_model, "input_blocks", ()))]
    if getattr(diffusion_model, "middle_block", None) is not None:
        blocks.append(("middle", 0, diffusion_model.middle_block))
    blocks += [("output", n, b) for n, b in enumerate(getattr(diffusion_model, "output_blocks", ()))]
    keys = []
    for name, number, block in blocks:
        for module in block:
            keys += [(name, number, index) for index in range(len(getattr(module, "transformer_blocks", ())))]
    return keys


def attn1_module(diffusion_model, lid: str):
    name, number, index = split_layer_id(lid)
    try:
        block = diffusion_model.middle_block if name == "middle" else getattr(diffusion_model, f"{name}_blocks")[number]
        transformer = next(module for module in block if hasattr(module, "transformer_blocks"))
        return transformer.transformer_blocks[index].attn1
    except (AttributeError, IndexError, StopIteration, TypeError):
        raise RefDropError(f"RefDrop: the current model has no self-attention layer {lid}") from None


def layer_widths_of(unet):
    """Layer id -> the width (heads × head size) of that attn1 layer of the model ``unet`` (a patcher) patches, None
    where it has no such layer: a Use checks a reference's layers against it before reading any slot. None where the
    model holds no U-Net blocks to look in (a stand-in without layers): then the layers are checked as they run."""
    model = getattr(getattr(unet, "model", None), "diffusion_model", None)
    if not all(hasattr(model, blocks) for blocks in ("input_blocks", "middle_block", "output_blocks")):
        return None

    def width(lid: str) -> int | None:
        try:
            to_q = attn1_module(unet.model.diffusion_model, lid).to_q
        except (RefDropError, AttributeError):
            return None
        return int(getattr(to_q, "out_features", None) or to_q.weight.shape[0])  # q's width: the layer's

    return width


def projections_of(unet):
    """Layer id -> the ``LinearKV`` (``to_k``, ``to_v``) of the model ``unet`` (a patcher) patches, looked up once per
    layer."""
    found: dict[str, LinearKV] = {}

    def projections(lid: str) -> LinearKV:
        if lid not in found:
            attn1 = attn1_module(unet.model.diffusion_model, lid)
            found[lid] = LinearKV(attn1.to_k, attn1.to_v)
        return found[lid]

    return projections
