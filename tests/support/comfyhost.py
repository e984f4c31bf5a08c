"""A ComfyUI-style host for RefDrop in one adapter module, as a node pack would write it: a node takes a ``MODEL``
(a ``ModelPatcher``) and returns a patched clone (``m = model.clone(); m.set_...; return (m,)``).

It reaches RefDrop through ``lib_refdrop.standalone`` (the session) and ``lib_refdrop.patcher`` (the install) only:
no ``lib_refdrop.webui``, no ``p``. ComfyUI's patcher has no ``set_model_replace_all``, so the attn1 patch goes on
each layer key; its kernels are ``comfy.ldm.modules.attention``; a Flux or Chroma model's blocks are reached through
``patches_replace["dit"]``.
"""

from __future__ import annotations

from lib_refdrop import standalone
from lib_refdrop.patcher import dit_blocks, kernels
from lib_refdrop.patcher.chain import chain, earlier_attn1_patches
from lib_refdrop.patcher.install import install

KERNELS = "comfy.ldm.modules.attention"


def pass_context(model, family: str, seed: int):
    """The sampling run ``model`` is about to make, described for RefDrop (a U-Net or a DiT model)."""
    attention = kernels.optimized_attention(KERNELS)
    diffusion_model = dit_blocks.diffusion_model(model)
    dit = dit_blocks.dit_family(diffusion_model)
    return standalone.context(
        dit or family, attention, model.model.model_sampling.percent_to_sigma, seed,
        earlier=chain(earlier_attn1_patches(model), attention),
        dit_ops=dit_blocks.block_ops(diffusion_model, kernels.optimized_flux_ops(KERNELS)) if dit else None,
        earlier_blocks=tuple(dit_blocks.earlier_block_patches(model)) if dit else ())


def save_node(model, store, name: str, family: str, seed: int, profile: str = "", layers=None):
    """RefDrop Save: ``(patched model, the session)``; the session's ``finish`` runs once the image is made."""
    session = standalone.save_session(store, name, profile)
    patches = session.for_pass(pass_context(model, family, seed))
    return install(model, patches, layers=layers), session


def use_node(model, store, name: str, rfg: float, family: str, seed: int, layers=None):
    """RefDrop Use: ``(patched model, the session)``; the session is closed once sampling is done."""
    session = standalone.start_use(store, reference=name, rfg=rfg)
    patches = session.for_pass(pass_context(model, family, seed))
    return install(model, patches, layers=layers), session
