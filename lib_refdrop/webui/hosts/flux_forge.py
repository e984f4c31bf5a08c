"""Flux on Forge (``backend/nn/flux.py``): RefDrop reaches the blocks through the patcher's object patches.

Forge's ``IntegratedFluxTransformer2DModel.inner_forward`` calls ``block(img=, txt=, vec=, pe=)`` for each
double-stream block and ``block(img, vec=, pe=)`` for each single-stream one, with no ``transformer_options`` patch
point. ``ModelPatcher.add_object_patch(name, obj)`` (``backend/patcher/base.py``) sets ``name`` on the model when
the clone is loaded (``forge_patch_model``) and puts back what was there when it is unloaded
(``forge_unpatch_model``, which ``load_models_gpu`` runs before the next clone of the model is loaded). The patched
names are ``diffusion_model.double_blocks.<i>.forward``: an attribute of that one block object, so no class or
module attribute changes, the module tree (LoRA keys, device moves) is untouched, and the clone the host gave is
unchanged.
"""

from __future__ import annotations

from ...dit.blocks import FluxOps


def flux_ops() -> FluxOps:
    from backend.attention import attention_function  # the kernel Forge's flux ``attention`` calls

    def joint_attention(q, k, v, attn_mask):
        return attention_function(q, k, v, q.shape[1], mask=attn_mask, skip_reshape=True)

    return FluxOps(joint_attention=joint_attention)


def object_name(kind: str, index: int) -> str:
    return f"diffusion_model.{kind}_blocks.{index}.forward"


def earlier_block_patches(unet) -> list[str]:
    """Object patches another extension already put on a Flux block (RefDrop's own, on a clone Forge's hires pass
    hands back before it resets ``forge_objects``, are replaced)."""
    return sorted(name for name, obj in getattr(unet, "object_patches", {}).items()
                  if name.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks."))
                  and not getattr(obj, "__name__", "").startswith("refdrop_"))


def install_blocks(unet, dit) -> None:
    """Every block of the clone ``unet`` computed by ``dit`` (``dit/guide.py`` ``FluxRefDrop``)."""
    model = unet.model.diffusion_model
    for index, block in enumerate(model.double_blocks):
        unet.add_object_patch(object_name("double", index), _double(dit, block, index))
    for index, block in enumerate(model.single_blocks):
        unet.add_object_patch(object_name("single", index), _single(dit, block, index))


def _double(dit, block, index):
    def refdrop_double_block(img, txt, vec, pe, attn_mask=None):
        return dit.double(block, index, img, txt, vec, pe, attn_mask)

    return refdrop_double_block


def _single(dit, block, index):
    def refdrop_single_block(x, vec, pe, attn_mask=None):
        return dit.single(block, index, x, vec, pe, attn_mask)

    return refdrop_single_block
