"""RefDrop on Chroma (docs/flux.md, "Chroma"): Flux's blocks with the modulations handed in as ``vec``, eq. 15 on the
image tokens, through the hosts' ``patches_replace["dit"]`` hook.

A tiny Chroma of the real block structure (``tests/support/tinychroma.py``: approximator, double- and single-stream
blocks without modulation layers, joint attention, RoPE) in each host's convention: ComfyUI 0.3.6x's and reForge's
own block classes (``addcmul`` residuals; ComfyUI passes ``transformer_options``, reForge does not) and Forge Neo's
(Flux's blocks with their modulation off, Neo's modulation and RoPE arithmetic). The ComfyUI pack's Chroma test is in
``test_comfyui_pack.py``.
"""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from lib_refdrop.dit.blocks import double_block, single_block
from lib_refdrop.errors import RefDropError
from lib_refdrop.patcher import dit_blocks
from lib_refdrop.reference.store import ReferenceStore
from tests.support import fakehost
from tests.support import tinychroma as tc
from tests.support import tinyflux as tf
from tests.support.ditpass import blending_blocks, dit_host, model_call, run_pass, save, use

# fake host flavour -> the convention of that host's Chroma
host = dit_host({"reforge": "reforge", "neo": "neo"})


@pytest.fixture
def store(tmp_path):
    return ReferenceStore(tmp_path / "store")


def host_ops(flavour: str, model):
    """The ops the fake host ``flavour`` computes ``model``'s blocks with (as ``Host.dit_ops`` gives them)."""
    with fakehost.activated(flavour):
        from lib_refdrop.webui import hosts

        return dit_blocks.block_ops(model, hosts.detect().flux_ops())


def _inputs(model, batch=2, img_tokens=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, img_tokens, tf.HIDDEN, generator=g)
    txt = torch.randn(batch, tf.TEXT_TOKENS, tf.HIDDEN, generator=g)
    mods = model.modulations(torch.rand(batch, generator=g), torch.zeros(batch), img.dtype)
    ids = torch.cat([torch.zeros(batch, tf.TEXT_TOKENS, 3), torch.rand(batch, img_tokens, 3, generator=g) * 4], dim=1)
    return img, txt, mods, tf.EmbedND(10000, tf.AXES)(ids)


# -- the family check ---------------------------------------------------------------------------------------------

def test_chroma_is_a_dit_family_and_the_other_dits_stay_refused_by_name():
    """Chroma (ComfyUI's and reForge's ``Chroma``, Neo's ``IntegratedChromaTransformer2DModel``) is its own DiT family
    with Flux's block names; Chroma Radiance, Lumina and the Qwen-Image and Wan relatives with other blocks (Nunchaku's
    Qwen-Image, Wan VACE; test_qwen_image.py, test_wan.py) are still refused with a message, never treated as a
    U-Net."""
    from types import SimpleNamespace

    from lib_refdrop import families

    for convention in ("comfyui", "reforge", "neo"):
        model = tc.make_patcher(convention).model.diffusion_model
        assert dit_blocks.dit_family(model) == "chroma" and not dit_blocks.is_flux(model)
        assert dit_blocks.unsupported(model) is None
    assert dit_blocks.dit_family(tf.make_patcher("reforge").model.diffusion_model) == "flux"
    assert families.FAMILY_BLOCKS["chroma"] == families.FAMILY_BLOCKS["flux"] and "chroma" in families.DIT_FAMILIES
    blocks = SimpleNamespace(double_blocks=[], single_blocks=[])
    for name, lists in [("ChromaRadiance", blocks), ("NunchakuQwenImageTransformer2DModel", {"transformer_blocks": []}),
                        ("VaceWanModel", {"blocks": []}), ("NextDiT", {"layers": []})]:
        other = type(name, (), dict(vars(blocks)) if name == "ChromaRadiance" else lists)()
        assert dit_blocks.dit_family(other) is None
        assert f"this model ({name}) is not supported yet" in dit_blocks.unsupported(other)


def test_only_chromas_own_blocks_add_their_residuals_with_addcmul():
    """ComfyUI 0.3.6x's and reForge's Chroma blocks add each gated residual with ``addcmul_``; Neo's (Flux's blocks)
    with ``+ y * gate``, as Flux's own do."""
    own = tc.make_patcher("comfyui").model.diffusion_model
    neo = tc.make_patcher("neo").model.diffusion_model
    flux = tf.make_patcher("reforge").model.diffusion_model
    ops = host_ops("reforge", own)
    assert ops.gated_add is torch.addcmul
    assert host_ops("reforge", neo).gated_add is not torch.addcmul
    assert host_ops("reforge", flux).gated_add is not torch.addcmul


# -- the block math -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("convention, flavour", [("comfyui", "reforge"), ("reforge", "reforge"), ("neo", "neo")])
def test_block_math_is_the_models_blocks_bit_for_bit(convention, flavour):
    """Each convention's blocks, with the modulations read from ``vec`` and the host's ops (ComfyUI's kernels are
    reForge's), computed by lib_refdrop/dit: the model's own output, bit for bit; with the other convention's ops they
    are not (the arithmetic matters)."""
    model = tc.Chroma(seed=1, convention=convention)
    ops = host_ops(flavour, model)
    img, txt, mods, pe = _inputs(model)
    for i, block in enumerate(model.double_blocks):
        vec = model.double_mod(mods, i)
        ours = double_block(block, img, txt, vec, pe, None, ops)
        theirs = block(img=img.clone(), txt=txt.clone(), vec=vec, pe=pe)  # Chroma's own blocks add in place
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]), i
    x = torch.cat((txt, img), 1)
    for i, block in enumerate(model.single_blocks):
        vec = model.single_mod(mods, i)
        assert torch.equal(single_block(block, x, vec, pe, None, txt.shape[1], ops), block(x.clone(), vec=vec, pe=pe))
    other = host_ops("neo" if flavour == "reforge" else "reforge", model)
    block, vec = model.double_blocks[0], model.double_mod(mods, 0)
    assert not torch.equal(double_block(block, img, txt, vec, pe, None, other)[0],
                           block(img=img.clone(), txt=txt.clone(), vec=vec, pe=pe)[0])


@pytest.mark.parametrize("convention, flavour", [("comfyui", "reforge"), ("neo", "neo")])
def test_text_tokens_are_untouched_by_the_guide(convention, flavour):
    """Eq. 15 in both kinds of block: a Use at c = 0.5 changes the image stream and leaves the text stream's output
    (a double block's ``txt``, a single block's text rows) the plain one, bit for bit."""
    model = tc.Chroma(seed=2, convention=convention)
    img, txt, mods, pe = _inputs(model)
    dit = blending_blocks(host_ops(flavour, model))
    options = {"cond_or_uncond": [0, 0], "sigmas": torch.tensor([0.5, 0.5])}
    block, vec = model.double_blocks[0], model.double_mod(mods, 0)
    with model_call(dit, options):
        guided = dit.double(block, 0, img, txt, vec, pe)
    plain = block(img=img.clone(), txt=txt.clone(), vec=vec, pe=pe)
    assert torch.equal(guided[1], plain[1]) and (guided[0] - plain[0]).abs().max() > 1e-3
    x, text = torch.cat((txt, img), 1), txt.shape[1]
    block, vec = model.single_blocks[0], model.single_mod(mods, 0)
    with model_call(dit, options, text_tokens=text):
        guided = dit.single(block, 0, x, vec, pe)
    plain = block(x.clone(), vec=vec, pe=pe)
    assert torch.equal(guided[:, :text], plain[:, :text]) and (guided[:, text:] - plain[:, text:]).abs().max() > 1e-3


# -- through each host's dit hook ---------------------------------------------------------------------------------

def test_save_is_plain_use_at_its_settings_is_the_save_and_c0_is_plain(host, store):
    """Through reForge's and Neo's ``patches_replace["dit"]`` on a fake patcher: a Save is the plain image and records
    every block's image tokens under the family "chroma"; a Use at the Save's settings reproduces it at any c; c = 0
    installs nothing; at another seed a Use changes the image, and with every block group disabled it does not."""
    host, convention = host
    unet = tc.make_patcher(convention)
    plain = tf.sample(unet, seed=1)
    out, run, p = run_pass(host, unet, {"mode": "Save", "save_name": "fox", "profile": "exact"}, store, seed=1)
    clone = p.sd_model.forge_objects.unet
    dit = clone.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(dit) == sorted([("double_block", i) for i in range(tf.DOUBLE_BLOCKS)]
                                 + [("single_block", i) for i in range(tf.SINGLE_BLOCKS)])
    assert not clone.object_patches and unet.model_options == {"transformer_options": {}}
    assert torch.equal(out, plain)
    run.finish_save({"seed": 1}, None)
    assert run.writer.wait(60) and run.writer.status.state == "saved", run.writer.status.message
    manifest = store.manifest("fox")
    assert manifest["family"] == "chroma" and manifest["chunks"] == ["cond0"]
    assert set(manifest["layers"]) == ({f"double{i}.0" for i in range(tf.DOUBLE_BLOCKS)}
                                       | {f"single{i}.0" for i in range(tf.SINGLE_BLOCKS)})
    for rfg in (-0.5, 0.3, 1.0):
        assert torch.equal(use(host, unet, store, rfg, seed=1)[0], out), rfg
    zero, p = use(host, unet, store, 0.0, seed=2)
    assert p.sd_model.forge_objects.unet is unet and torch.equal(zero, tf.sample(unet, seed=2))
    other = tf.sample(unet, seed=2)
    assert (use(host, unet, store, 0.5, seed=2)[0] - other).abs().mean() > 1e-3
    values = {"mode": "Use", "reference": "fox", "rfg": 0.5, "disabled_groups": ["double", "single"]}
    off, run, _ = run_pass(host, unet, values, store, seed=2)
    run.release()
    assert torch.equal(off, other)


def test_flux_and_chroma_references_do_not_fit_each_other(store):
    """Same block names and widths, different models: a Flux reference is refused on Chroma by name, and back."""
    with fakehost.activated("reforge"):
        from lib_refdrop.webui import hosts

        host = hosts.detect()
        save(host, tf.make_patcher("reforge"), store, name="flux-ref")
        chroma = tc.make_patcher("reforge")
        save(host, chroma, store, name="chroma-ref")
        for name, unet, saved, current in [("flux-ref", chroma, "a Flux", "Chroma"),
                                           ("chroma-ref", tf.make_patcher("reforge"), "a Chroma", "Flux")]:
            with pytest.raises(RefDropError, match=f"'{name}' was saved with {saved} model, but the current model is "
                                                   f"{current}"):
                run_pass(host, unet, {"mode": "Use", "reference": name, "rfg": 0.3}, store)


def test_a_trajectory_reference_on_chroma_is_the_exact_one(store):
    """Chroma is conditioned on T5 and the distilled guidance alone: its trajectory reference keeps those and gives
    the Save bit for bit at the Save's settings, and the exact reference's image at another seed."""
    with fakehost.activated("neo"):
        from lib_refdrop.webui import hosts

        host = hosts.detect()
        unet = tc.make_patcher("neo")
        saved = save(host, unet, store, name="path", profile="trajectory")
        manifest = store.manifest("path")
        first = min(manifest["slots"], key=lambda slot: slot["index"])
        names = {name for entry in first["files"]
                 for name in safetensors.torch.load_file(str(store.path("path") / entry["file"]))}
        assert names == {"latent", "conditioning/cond0/c_crossattn", "conditioning/cond0/guidance"}
        save(host, unet, store, name="exact")
        assert torch.equal(use(host, unet, store, 0.5, name="path")[0], saved)
        assert torch.equal(use(host, unet, store, 0.5, name="path", seed=5)[0],
                           use(host, unet, store, 0.5, name="exact", seed=5)[0])
