"""RefDrop on Wan 2.1 / 2.2 (docs/dit.md): its single-stream blocks, whose self-attention over the video's tokens is
RefDrop's attn1 patch itself (no text token takes part), through the hosts' ``patches_replace["dit"]`` hook; a
picture (one frame) or a clip.

A tiny Wan of the real block structure (``tests/support/tinywan.py``: 3-D patches, self-attention with QK-norm over
the width and 3-axis RoPE, cross-attention to the text and in the image-to-video model to CLIP-vision features, the
timestep modulation) in each host's convention: ComfyUI 0.3.6x's (``addcmul``; ``transformer_options`` in ``args``
and on to the cross-attention), Forge Neo's and reForge's (``*`` and ``+``; Neo's comfy_kitchen RoPE, reForge's the
design's). The ComfyUI pack's Wan test is in ``test_comfyui_pack.py``.
"""

from __future__ import annotations

import sys

import pytest
import torch

from lib_refdrop.dit.layers import layer_widths_of
from lib_refdrop.dit.wan import WanOps, wan_block
from lib_refdrop.errors import RefDropError
from lib_refdrop.patcher import dit_blocks
from lib_refdrop.reference.store import ReferenceStore
from tests.support import fakehost
from tests.support import tinyflux as tf
from tests.support import tinywan as tw
from tests.support.ditpass import dit_host, model_call, run_pass, save, use
from tests.support.hostsim import sdpa_attention

# fake host flavour -> the convention of the Wan it runs
host = dit_host({"reforge": "reforge", "neo": "neo"})


@pytest.fixture
def store(tmp_path):
    return ReferenceStore(tmp_path / "store")


@pytest.fixture
def comfy_wan(monkeypatch):
    """ComfyUI's ``comfy.ldm.wan.model`` (``tinywan.comfy_modules``) for ``lib_refdrop.comfyui.model.wan_ops``."""
    for name, module in tw.comfy_modules().items():
        monkeypatch.setitem(sys.modules, name, module)


def host_ops(convention: str) -> WanOps:
    """The ops each host's adapter gives a Wan block."""
    if convention == "comfyui":
        from lib_refdrop.comfyui.model import wan_ops

        return wan_ops()
    with fakehost.activated(convention):
        from lib_refdrop.webui import hosts

        return hosts.detect().wan_ops()


def _inputs(model, batch=2, frames=2, seed=3, rows=1):
    """A block's input: tokens of a ``frames`` x 4 x 4 clip, ``e0`` as the model makes it (``rows`` modulation rows
    per sample: per-frame timesteps), RoPE frequencies, the context (CLIP-vision tokens first where the model has
    them) and how many CLIP-vision tokens head it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames * 16, tf.HIDDEN, generator=g)
    e0 = torch.randn(batch, rows, 6, tf.HIDDEN, generator=g) * 0.5
    if model.convention == "reforge":
        e0 = e0[:, 0]
    ids = torch.stack(torch.meshgrid(torch.arange(frames), torch.arange(4), torch.arange(4), indexing="ij"), -1)
    freqs = model.rope_embedder(ids.reshape(1, -1, 3).float()).movedim(1, 2)
    clip = tf.CLIP_TOKENS if hasattr(model, "img_emb") else 0
    context = torch.randn(batch, clip + tf.TEXT_TOKENS, tf.HIDDEN, generator=g)
    return x, e0, freqs, context, clip or None


def _attend(q, k, v):
    return sdpa_attention(q, k, v, tf.HEADS)


def test_wan_is_a_dit_family_with_single_stream_blocks():
    """``WanModel`` (ComfyUI's, Neo's, reForge's) is the family "wan"; its blocks are single-stream (``single<i>.0``,
    S00-S39 in Advanced); the Wan models with other blocks or more around them (VACE, S2V, ...) are refused by
    name."""
    from lib_refdrop import families
    from lib_refdrop.params import parse_blocks

    for convention in ("comfyui", "neo", "reforge"):
        model = tw.make_patcher(convention).model.diffusion_model
        assert dit_blocks.dit_family(model) == "wan" and dit_blocks.unsupported(model) is None
    widths = layer_widths_of(model)
    assert (widths("single0.0"), widths("single2.0"), widths("single3.0"), widths("double0.0")) == (
        tf.HIDDEN, tf.HIDDEN, None, None)
    assert families.FAMILY_BLOCKS["wan"][-1] == "S39" and parse_blocks(["S39"]) == ("S39",)
    for name in ("VaceWanModel", "WanModel_S2V"):
        other = type(name, (), {"blocks": []})()
        assert dit_blocks.dit_family(other) is None
        assert f"this model ({name}) is not supported yet" in dit_blocks.unsupported(other)


@pytest.mark.parametrize("image_to_video", [False, True])
@pytest.mark.parametrize("convention", ["comfyui", "neo", "reforge"])
def test_block_math_is_the_models_block_bit_for_bit(convention, image_to_video, comfy_wan):
    """Each convention's blocks computed by lib_refdrop/dit with the ops that host's adapter gives: the model's own
    output, bit for bit (a clip of 2 frames; the image-to-video model's CLIP-vision tokens counted as the model
    counts them); with another host's ops they are not (the arithmetic matters)."""
    model = tw.WanModel(seed=1, convention=convention, image_to_video=image_to_video)
    ops = host_ops(convention)
    x, e0, freqs, context, clip = _inputs(model)
    for block in model.blocks:
        theirs = block(x, e=e0, freqs=freqs, context=context, context_img_len=clip, transformer_options={})
        assert torch.equal(wan_block(block, x, e0, freqs, context, clip, ops, _attend, {}), theirs)
    other = host_ops("neo" if convention == "comfyui" else "comfyui")
    assert not torch.equal(wan_block(block, x, e0, freqs, context, clip, other, _attend, {}), theirs)


def test_per_frame_modulation_is_stretched_over_each_frames_tokens(comfy_wan):
    """Wan 2.2 5B's per-frame timesteps: ``e0`` has one row per frame, each covering that frame's tokens, as the
    model's ``repeat_e`` does."""
    model = tw.WanModel(seed=2, convention="comfyui")
    x, e0, freqs, context, _ = _inputs(model, frames=3, rows=3)
    block = model.blocks[0]
    theirs = block(x, e=e0, freqs=freqs, context=context, transformer_options={})
    assert torch.equal(wan_block(block, x, e0, freqs, context, None, host_ops("comfyui"), _attend, {}), theirs)
    assert not torch.equal(theirs, block(x, e=e0[:, :1], freqs=freqs, context=context, transformer_options={}))


def test_the_self_attention_is_the_patch_and_the_cross_attention_is_left_alone():
    """The patch gets the block's roped q, k, v in the attn1 layout with the block's address, and its output is the
    self-attention: a patch that returns its ``inner`` gives the plain block."""
    model = tw.WanModel(seed=3, convention="reforge")
    x, e0, freqs, context, _ = _inputs(model)
    seen = []

    def patch(q, k, v, extra_options):
        seen.append((q.shape, extra_options["block"], extra_options["n_heads"], extra_options["dim_head"]))
        return dit.inner(q, k, v, extra_options)

    from lib_refdrop.dit.guide import FluxRefDrop

    dit = FluxRefDrop(patch, lambda q, k, v, eo: sdpa_attention(q, k, v, eo["n_heads"]), WanOps())
    block = model.blocks[1]
    with model_call(dit, {"cond_or_uncond": [0, 0], "sigmas": torch.tensor([0.5, 0.5])}):
        out = dit.wan(block, 1, x, context, e0, freqs)
    assert seen == [(x.shape, ("single", 1), tf.HEADS, tf.HIDDEN // tf.HEADS)]
    assert torch.equal(out, block(x, e=e0, freqs=freqs, context=context))


@pytest.mark.parametrize("frames", [0, 3])
def test_save_is_plain_use_at_its_settings_is_the_save_and_c0_is_plain(host, store, frames):
    """Through reForge's and Neo's ``patches_replace["dit"]`` on a fake patcher, for a picture and a 3-frame clip: a
    Save is the plain image and records every block's tokens (a clip's: all its frames') under the family "wan"; a Use
    at the Save's settings reproduces it at any c; c = 0 installs nothing; at another seed a Use changes the output,
    and with the block group disabled it does not."""
    host, convention = host
    unet = tw.make_patcher(convention)
    plain = tf.sample(unet, seed=1, frames=frames)
    out, run, p = run_pass(host, unet, {"mode": "Save", "save_name": "fox", "profile": "exact"}, store, seed=1,
                           frames=frames)
    dit = p.sd_model.forge_objects.unet.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(dit) == [("double_block", i) for i in range(tw.BLOCKS)]
    assert torch.equal(out, plain)
    run.finish_save({"seed": 1}, None)
    assert run.writer.wait(60) and run.writer.status.state == "saved", run.writer.status.message
    manifest = store.manifest("fox")
    assert manifest["family"] == "wan" and set(manifest["layers"]) == {f"single{i}.0" for i in range(tw.BLOCKS)}
    for rfg in (-0.5, 1.0):
        assert torch.equal(use(host, unet, store, rfg, seed=1, frames=frames)[0], out), rfg
    zero, p = use(host, unet, store, 0.0, seed=2, frames=frames)
    other = tf.sample(unet, seed=2, frames=frames)
    assert p.sd_model.forge_objects.unet is unet and torch.equal(zero, other)
    assert (use(host, unet, store, 0.5, seed=2, frames=frames)[0] - other).abs().mean() > 1e-3
    off, run, _ = run_pass(host, unet, {"mode": "Use", "reference": "fox", "rfg": 0.5, "disabled_groups": ["single"]},
                           store, seed=2, frames=frames)
    run.release()
    assert torch.equal(off, other)


def test_image_to_video_blocks_count_the_clip_tokens_of_each_model_call(store):
    """Wan 2.1 image-to-video: the block hook's ``args`` do not say how many CLIP-vision tokens head the context; the
    count comes from the model call's ``clip_fea``, so a Save is plain and a Use at its settings is the Save."""
    with fakehost.activated("reforge"):
        from lib_refdrop.webui import hosts

        host = hosts.detect()
        unet = tw.make_patcher("reforge", image_to_video=True)
        saved = save(host, unet, store, name="i2v", seed=1)
        assert torch.equal(saved, tf.sample(unet, seed=1))
        assert torch.equal(use(host, unet, store, 0.7, name="i2v", seed=1)[0], saved)


def test_masks_and_a_trajectory_are_refused_by_name(store):
    """A subject mask is laid on a 2-D token grid, and a clip's tokens are frames × rows × columns; a trajectory keeps
    the text rows alone, and image-to-video Wan is conditioned on more: both refused with the family's name."""
    from PIL import Image

    with fakehost.activated("neo"):
        from lib_refdrop.webui import hosts

        host = hosts.detect()
        unet = tw.make_patcher("neo")
        with pytest.raises(RefDropError, match="'trajectory' does not work with Wan models yet"):
            run_pass(host, unet, {"mode": "Save", "save_name": "path", "profile": "trajectory"}, store)
        save(host, unet, store, name="fox")
        mask = Image.new("L", (64, 64), 255)
        with pytest.raises(RefDropError, match="a subject mask does not work with Wan models yet"):
            run_pass(host, unet, {"mode": "Use", "reference": "fox", "rfg": 0.3, "mask": mask}, store)
