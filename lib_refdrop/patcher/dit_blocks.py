"""A DiT model's blocks computed by RefDrop (``dit/guide.py`` ``FluxRefDrop``) on a clone of its patcher, the one way
the model lets another module reach its blocks.

**Block replacements** (ComfyUI ``comfy/ldm/flux/model.py``, reForge ``ldm_patched/ldm/flux/model.py``):
``Flux.forward_orig`` looks up ``transformer_options["patches_replace"]["dit"][("double_block", i)]`` (and
``("single_block", i)``) and calls it as ``replace(args, {"original_block": ...})`` with ``args`` = ``{"img",
"txt", "vec", "pe", "attn_mask"}`` (``{"img", "vec", "pe", "attn_mask"}`` for a single-stream block, whose ``img``
is ``[txt; img]``); it returns ``{"img", "txt"}`` (``{"img"}``). ``set_model_patch_replace(patch, "dit",
block_name, i)`` registers one on the clone's ``model_options`` only. ComfyUI (0.3.6x) and Forge Neo add
``"transformer_options"`` to ``args`` and pass it to their blocks; RefDrop reads the model call's options from its
model function wrapper instead, so it needs neither.

**Chroma** (ComfyUI ``comfy/ldm/chroma/model.py`` ``Chroma.forward_orig``, reForge ``ldm_patched/ldm/chroma/``,
Forge Neo ``backend/nn/chroma.py`` ``IntegratedChromaTransformer2DModel``) has Flux's blocks and the same hook, keys
and ``args``, but no conditioning vector: its approximator (``distilled_guidance_layer``) makes every block's
modulations at once, and ``args["vec"]`` is that block's share of them, ``((img_mod1, img_mod2), (txt_mod1,
txt_mod2))`` for a double block and one ``ModulationOut`` for a single one (``dit/blocks.py`` reads them as the
blocks do).

**Qwen-Image** (ComfyUI ``comfy/ldm/qwen_image/model.py`` ``QwenImageTransformer2DModel._forward``, Forge Neo
``backend/nn/qwen.py``) looks up ``("double_block", i)`` for each of its ``transformer_blocks`` with ``args`` =
``{"img", "txt", "vec", "pe"}`` (``vec``: the timestep embedding; ComfyUI adds ``"transformer_options"``) and takes
``{"img", "txt"}`` back. **Wan** (ComfyUI ``comfy/ldm/wan/model.py`` ``WanModel.forward_orig``, Forge Neo
``backend/nn/wan.py``, reForge ``ldm_patched/ldm/wan/model.py``) looks up ``("double_block", i)`` for each of its
``blocks``, single-stream as they are, with ``args`` = ``{"img", "txt", "vec", "pe"}`` (``img``: the video's tokens,
``txt``: the text context, ``vec``: the timestep projection ``e0``, ``pe``: the RoPE frequencies; ComfyUI and Neo add
``"transformer_options"``) and takes ``{"img"}`` back. The count of CLIP-vision tokens at the head of the context
(Wan 2.1 image-to-video) is not in ``args``; ``FluxRefDrop`` reads it from the model call.

**Object patches** (Forge ``backend/nn/flux.py``): ``IntegratedFluxTransformer2DModel.inner_forward`` calls
``block(img=, txt=, vec=, pe=)`` for each double-stream block and ``block(img, vec=, pe=)`` for each single-stream
one, with no ``transformer_options`` patch point. ``ModelPatcher.add_object_patch(name, obj)``
(``backend/patcher/base.py``) sets ``name`` on the model when the clone is loaded (``forge_patch_model``) and puts
back what was there when it is unloaded (``forge_unpatch_model``, which ``load_models_gpu`` runs before the next
clone of the model is loaded). The patched names are ``diffusion_model.double_blocks.<i>.forward``: an attribute of
that one block object, so no class or module attribute changes, the module tree (LoRA keys, device moves) is
untouched, and the clone the host gave is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from ..dit.blocks import FluxOps
from ..dit.wan import WanOps
from .kernels import takes_keyword

FLUX, CHROMA, QWEN_IMAGE, WAN = "flux", "chroma", "qwen_image", "wan"  # families.DIT_FAMILIES
# the class of the diffusion model: ComfyUI ``comfy.ldm.flux.model.Flux`` and reForge
# ``ldm_patched.ldm.flux.model.Flux`` (dev, schnell, their fine-tunes, Kontext), Forge
# ``backend.nn.flux.IntegratedFluxTransformer2DModel``
FLUX_CLASSES = ("Flux", "IntegratedFluxTransformer2DModel")
# ComfyUI ``comfy.ldm.chroma.model.Chroma`` and reForge ``ldm_patched.ldm.chroma.model.Chroma``, Forge Neo
# ``backend.nn.chroma.IntegratedChromaTransformer2DModel``; not ``ChromaRadiance`` (pixel space, another input and
# output): refused by ``unsupported``
CHROMA_CLASSES = ("Chroma", "IntegratedChromaTransformer2DModel")
# ComfyUI ``comfy.ldm.qwen_image.model`` and Forge Neo ``backend.nn.qwen`` (Qwen-Image and Qwen-Image-Edit); not
# another class built on it (Nunchaku's)
QWEN_IMAGE_CLASSES = ("QwenImageTransformer2DModel",)
# ComfyUI ``comfy.ldm.wan.model``, Forge Neo ``backend.nn.wan`` and reForge ``ldm_patched.ldm.wan.model``: Wan 2.1 and
# 2.2 text- and image-to-video; not the models with other blocks or more around them (VACE, camera, S2V, HuMo,
# Animate: ``VaceWanModel`` and the like), refused by ``unsupported``
WAN_CLASSES = ("WanModel",)
OBJECT_PATCHED = ("IntegratedFluxTransformer2DModel",)  # looks up no block replacement: reached by object patches


def diffusion_model(unet):
    """The model the patcher ``unet`` patches, None where it has none."""
    return getattr(getattr(unet, "model", None), "diffusion_model", None)


def dit_family(model) -> str | None:
    """The DiT family of ``model`` (a patcher's ``model.diffusion_model``): ``"flux"`` or ``"chroma"`` where it is
    one with double- and single-stream blocks, ``"qwen_image"`` or ``"wan"`` where it is one of those with its
    blocks; None for a U-Net or any other model."""
    name = type(model).__name__
    if hasattr(model, "double_blocks") and hasattr(model, "single_blocks"):
        if name in FLUX_CLASSES:
            return None if is_flux2(model) else FLUX
        return CHROMA if name in CHROMA_CLASSES else None
    if name in QWEN_IMAGE_CLASSES and hasattr(model, "transformer_blocks"):
        return QWEN_IMAGE
    if name in WAN_CLASSES and hasattr(model, "blocks"):
        return WAN
    return None


def is_flux2(model) -> bool:
    """Whether ``model`` is Flux.2 (Klein) in Flux's own class: Forge Neo builds it from
    ``IntegratedFluxTransformer2DModel`` with ``global_modulation`` (one modulation for every block, a gated SiLU MLP
    in the single-stream blocks), later ComfyUI keeps that flag in ``params``. Its blocks are not Flux.1's."""
    flag = getattr(model, "global_modulation", None)
    if flag is None:
        flag = getattr(getattr(model, "params", None), "global_modulation", False)
    return bool(flag)


def is_flux(model) -> bool:
    """Whether ``model`` is a Flux model (double- and single-stream blocks), not a U-Net."""
    return dit_family(model) == FLUX


def block_ops(model, ops: FluxOps) -> FluxOps:
    """``ops`` (the host's, ``patcher/kernels.py``) as the blocks of ``model`` compute: Chroma's own block classes
    (ComfyUI 0.3.6x ``comfy/ldm/chroma/layers.py``, reForge ``ldm_patched/ldm/chroma/layers.py``: no ``modulation``
    attribute at all) add each gated residual with one ``addcmul_``, which rounds differently from Flux's blocks'
    ``x + y * gate`` (those Forge Neo and later ComfyUI build Chroma from, with ``modulation`` off)."""
    if dit_family(model) == CHROMA and model.double_blocks and not hasattr(model.double_blocks[0], "modulation"):
        return replace(ops, gated_add=torch.addcmul)
    return ops


def host_block_ops(model, flux_ops: Callable[[], FluxOps], wan_ops: Callable[[], WanOps]) -> FluxOps | WanOps | None:
    """The host's arithmetic inside the blocks of the DiT ``model`` (``flux_ops``, ``wan_ops``: the host's, from its
    adapter), None where it is no DiT RefDrop supports. Qwen-Image's blocks compute alike in every host that has them
    and attend with the engine's kernel: they take the Flux ops and use none."""
    family = dit_family(model)
    if family is None:
        return None
    return wan_ops() if family == WAN else block_ops(model, flux_ops())


# What the transformer models RefDrop does not support hold their blocks in (Forge Neo and ComfyUI: Flux.2's and
# Chroma Radiance's ``double_blocks``, other classes' ``transformer_blocks`` (Nunchaku's Qwen-Image) and
# ``blocks`` (Wan VACE, S2V, HuMo, Animate), Lumina's and Z-Image's ``layers``, SD3's ``joint_blocks``): such a model
# has none of a U-Net's block lists.
_TRANSFORMER_BLOCK_LISTS = ("double_blocks", "transformer_blocks", "blocks", "layers", "joint_blocks")
_UNET_BLOCK_LISTS = ("input_blocks", "middle_block", "output_blocks")


def unsupported(model) -> str | None:
    """A message where ``model`` (a patcher's ``model.diffusion_model``) is a transformer RefDrop cannot work in yet,
    which it would otherwise treat as a U-Net and leave unguided without a word; None for a U-Net, a DiT family
    RefDrop supports (``dit_family``), or a stand-in that holds no blocks at all."""
    if model is None or dit_family(model) or any(hasattr(model, name) for name in _UNET_BLOCK_LISTS):
        return None
    if not any(hasattr(model, name) for name in _TRANSFORMER_BLOCK_LISTS):
        return None
    name = "Flux.2" if type(model).__name__ in FLUX_CLASSES else type(model).__name__  # Flux's class: is_flux2
    return (f"RefDrop: this model ({name}) is not supported yet; RefDrop works with SD1.5, SDXL and "
            "other U-Net models, and with Flux, Chroma, Qwen-Image and Wan")


def _object_patched(unet) -> bool:
    """Forge main's Flux looks up no block replacement, so its blocks are reached by object patches. Forge Neo's model
    has the same class name but looks up ``patches_replace["dit"]`` as ComfyUI's does, and calls its blocks with
    ``transformer_options``, which Forge main's blocks do not take: read from the blocks' signature."""
    model = diffusion_model(unet)
    if type(model).__name__ not in OBJECT_PATCHED:
        return False
    blocks = getattr(model, "double_blocks", None)
    return not (blocks and takes_keyword(blocks[0].forward, "transformer_options"))


def earlier_block_patches(unet) -> list[str]:
    """Block patches another extension already put on the DiT model of ``unet`` (RefDrop's own, on a
    clone Forge's hires pass hands back before it resets ``forge_objects``, are replaced)."""
    if _object_patched(unet):
        return sorted(name for name, obj in getattr(unet, "object_patches", {}).items()
                      if name.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks."))
                      and not getattr(obj, "__name__", "").startswith("refdrop_"))
    options = getattr(unet, "model_options", None) or {}
    dit = options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    return sorted(f"{key[0]} {key[1]}" for key, patch in dit.items()
                  if not getattr(patch, "__name__", "").startswith("refdrop_"))


def install_blocks(unet, dit) -> None:
    """Every block of the clone ``unet`` computed by ``dit`` (``dit/guide.py`` ``FluxRefDrop``)."""
    model = unet.model.diffusion_model
    family = dit_family(model)
    if family in (QWEN_IMAGE, WAN):  # one list of blocks, each looked up as a "double_block"
        replacement = _qwen if family == QWEN_IMAGE else _wan
        for index, block in enumerate(model.transformer_blocks if family == QWEN_IMAGE else model.blocks):
            unet.set_model_patch_replace(replacement(dit, block, index), "dit", "double_block", index)
        return
    if _object_patched(unet):
        for index, block in enumerate(model.double_blocks):
            unet.add_object_patch(object_name("double", index), _double_object(dit, block, index))
        for index, block in enumerate(model.single_blocks):
            unet.add_object_patch(object_name("single", index), _single_object(dit, block, index))
        return
    for index, block in enumerate(model.double_blocks):
        unet.set_model_patch_replace(_double(dit, block, index), "dit", "double_block", index)
    for index, block in enumerate(model.single_blocks):
        unet.set_model_patch_replace(_single(dit, block, index), "dit", "single_block", index)


def object_name(kind: str, index: int) -> str:
    return f"diffusion_model.{kind}_blocks.{index}.forward"


def _double(dit, block, index):
    def refdrop_double_block(args, extra):
        img, txt = dit.double(block, index, args["img"], args["txt"], args["vec"], args["pe"], args.get("attn_mask"))
        return {"img": img, "txt": txt}

    return refdrop_double_block


def _single(dit, block, index):
    def refdrop_single_block(args, extra):
        return {"img": dit.single(block, index, args["img"], args["vec"], args["pe"], args.get("attn_mask"))}

    return refdrop_single_block


def _qwen(dit, block, index):
    def refdrop_qwen_block(args, extra):
        img, txt = dit.qwen(block, index, args["img"], args["txt"], args["vec"], args["pe"])
        return {"img": img, "txt": txt}

    return refdrop_qwen_block


def _wan(dit, block, index):
    def refdrop_wan_block(args, extra):
        return {"img": dit.wan(block, index, args["img"], args["txt"], args["vec"], args["pe"],
                               args.get("transformer_options"))}

    return refdrop_wan_block


def _double_object(dit, block, index):
    def refdrop_double_block(img, txt, vec, pe, attn_mask=None):
        return dit.double(block, index, img, txt, vec, pe, attn_mask)

    return refdrop_double_block


def _single_object(dit, block, index):
    def refdrop_single_block(x, vec, pe, attn_mask=None):
        return dit.single(block, index, x, vec, pe, attn_mask)

    return refdrop_single_block
