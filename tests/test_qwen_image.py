"""RefDrop on Qwen-Image (docs/dit.md): its 60 double-stream blocks, eq. 15 on the image tokens of each joint attention,
through the hosts' ``patches_replace["dit"]`` hook.

A tiny Qwen-Image of the real block structure (``tests/support/tinyqwen.py``: per-stream modulation, separate image
and text projections, per-head QK-norm, joint attention with RoPE) in each host's convention: ComfyUI 0.3.6x's
(``transformer_options`` in the hook's ``args``; its kernel is the one reForge's stand-in has) and Forge Neo's. The
ComfyUI pack's Qwen-Image test is in ``test_comfyui_pack.py``.
"""

from __future__ import annotations

import pytest
import torch

from lib_refdrop.dit.layers import layer_widths_of
from lib_refdrop.dit.qwen import qwen_block
from lib_refdrop.errors import RefDropError
from lib_refdrop.patcher import dit_blocks
from lib_refdrop.reference.store import ReferenceStore
from tests.support import fakehost
from tests.support import tinyflux as tf
from tests.support import tinyqwen as tq
from tests.support.ditpass import blending_blocks, dit_host, model_call, run_pass, save, use
from tests.support.hostsim import sdpa_attention

# fake host flavour -> the convention of the Qwen-Image it runs (ComfyUI's kernel is reForge's stand-in's)
host = dit_host({"reforge": "comfyui", "neo": "neo"})


@pytest.fixture
def store(tmp_path):
    return ReferenceStore(tmp_path / "store")


def _inputs(batch=2, img_tokens=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, img_tokens, tf.HIDDEN, generator=g)
    txt = torch.randn(batch, tf.TEXT_TOKENS, tf.HIDDEN, generator=g)
    temb = torch.randn(batch, tf.HIDDEN, generator=g)
    ids = torch.cat([torch.rand(batch, tf.TEXT_TOKENS, 3, generator=g), torch.rand(batch, img_tokens, 3, generator=g)],
                    dim=1) * 4
    return img, txt, temb, tf.EmbedND(10000, tf.AXES)(ids).squeeze(1).unsqueeze(2)


def test_qwen_image_is_a_dit_family_with_60_double_stream_blocks():
    """``QwenImageTransformer2DModel`` (ComfyUI's and Neo's) is the family "qwen_image"; its blocks are the
    double-stream ones (``double<i>.0``, D00-D59 in Advanced); another class holding ``transformer_blocks``
    (Nunchaku's) is refused by name."""
    from lib_refdrop import families
    from lib_refdrop.params import parse_blocks

    for convention in ("comfyui", "neo"):
        model = tq.make_patcher(convention).model.diffusion_model
        assert dit_blocks.dit_family(model) == "qwen_image" and dit_blocks.unsupported(model) is None
    widths = layer_widths_of(model)
    assert (widths("double0.0"), widths("double2.0"), widths("double3.0"), widths("single0.0")) == (
        tf.HIDDEN, tf.HIDDEN, None, None)
    assert families.FAMILY_BLOCKS["qwen_image"][-1] == "D59" and parse_blocks(["D59"]) == ("D59",)
    other = type("NunchakuQwenImageTransformer2DModel", (), {"transformer_blocks": []})()
    assert dit_blocks.dit_family(other) is None
    assert "this model (NunchakuQwenImageTransformer2DModel) is not supported yet" in dit_blocks.unsupported(other)


@pytest.mark.parametrize("convention", ["comfyui", "neo"])
def test_block_math_is_the_models_block_bit_for_bit(convention):
    """lib_refdrop/dit computes each block as the model does: image and text streams bit for bit."""
    model = tq.QwenImage(seed=1, convention=convention)
    img, txt, temb, pe = _inputs()
    for block in model.transformer_blocks:
        ours = qwen_block(block, img, txt, temb, pe, lambda q, k, v: sdpa_attention(q, k, v, tf.HEADS))
        txt_out, img_out = block(img, txt, None, temb, pe)
        assert torch.equal(ours[0], img_out) and torch.equal(ours[1], txt_out)


def test_text_tokens_are_untouched_by_the_guide():
    """Eq. 15: a Use at c = 0.5 changes a block's image stream and leaves its text stream the plain one, bit for
    bit."""
    model = tq.QwenImage(seed=2)
    img, txt, temb, pe = _inputs()
    dit = blending_blocks(None)
    block = model.transformer_blocks[0]
    with model_call(dit, {"cond_or_uncond": [0, 0], "sigmas": torch.tensor([0.5, 0.5])}):
        guided = dit.qwen(block, 0, img, txt, temb, pe)
    plain_txt, plain_img = block(img, txt, None, temb, pe)
    assert torch.equal(guided[1], plain_txt) and (guided[0] - plain_img).abs().max() > 1e-3


def test_save_is_plain_use_at_its_settings_is_the_save_and_c0_is_plain(host, store):
    """Through ComfyUI's (reForge's kernel) and Neo's ``patches_replace["dit"]`` on a fake patcher: a Save is the plain
    image and records every block's image tokens under the family "qwen_image"; a Use at the Save's settings
    reproduces it at any c; c = 0 installs nothing; at another seed a Use changes the image, and with the block group
    disabled it does not."""
    host, convention = host
    unet = tq.make_patcher(convention)
    plain = tf.sample(unet, seed=1)
    out, run, p = run_pass(host, unet, {"mode": "Save", "save_name": "fox", "profile": "exact"}, store, seed=1)
    dit = p.sd_model.forge_objects.unet.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(dit) == [("double_block", i) for i in range(tq.BLOCKS)]
    assert unet.model_options == {"transformer_options": {}} and torch.equal(out, plain)
    run.finish_save({"seed": 1}, None)
    assert run.writer.wait(60) and run.writer.status.state == "saved", run.writer.status.message
    manifest = store.manifest("fox")
    assert manifest["family"] == "qwen_image" and set(manifest["layers"]) == {f"double{i}.0" for i in range(tq.BLOCKS)}
    for rfg in (-0.5, 0.3, 1.0):
        assert torch.equal(use(host, unet, store, rfg, seed=1)[0], out), rfg
    zero, p = use(host, unet, store, 0.0, seed=2)
    other = tf.sample(unet, seed=2)
    assert p.sd_model.forge_objects.unet is unet and torch.equal(zero, other)
    assert (use(host, unet, store, 0.5, seed=2)[0] - other).abs().mean() > 1e-3
    off, run, _ = run_pass(host, unet, {"mode": "Use", "reference": "fox", "rfg": 0.5, "disabled_groups": ["double"]},
                           store, seed=2)
    run.release()
    assert torch.equal(off, other)


def test_a_trajectory_save_and_a_flux_reference_are_refused_by_name(store):
    """A trajectory keeps the text rows alone, and Qwen-Image-Edit is conditioned on its edit images too: refused
    with the family's name. A reference saved on Flux does not fit Qwen-Image."""
    with fakehost.activated("neo"):
        from lib_refdrop.webui import hosts

        host = hosts.detect()
        unet = tq.make_patcher("neo")
        with pytest.raises(RefDropError, match="'trajectory' does not work with Qwen-Image models yet"):
            run_pass(host, unet, {"mode": "Save", "save_name": "path", "profile": "trajectory"}, store)
        save(host, tf.make_patcher("neo"), store, name="flux-ref")
        with pytest.raises(RefDropError, match="saved with a Flux model, but the current model is Qwen-Image"):
            run_pass(host, unet, {"mode": "Use", "reference": "flux-ref", "rfg": 0.3}, store)
