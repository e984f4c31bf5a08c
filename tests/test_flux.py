"""RefDrop on Flux (docs/flux.md): eq. 15 on the image tokens of every block, through each host's way into the blocks.

A tiny Flux-structured model with random weights (``tests/support/tinyflux.py``: double- and single-stream blocks,
joint attention, RoPE, modulation) is sampled through the fake patcher the host adapters install on: reForge's
``patches_replace["dit"]`` block replacements and Forge's object patches on each block's ``forward``.
"""

from __future__ import annotations

import pytest
import torch

from lib_refdrop.dit.blocks import FluxOps, double_block, single_block
from lib_refdrop.dit.guide import FluxRefDrop
from lib_refdrop.errors import RefDropError
from lib_refdrop.params import build
from lib_refdrop.reference.address import LAYER_ID_RE, block_label
from lib_refdrop.reference.profiles import DEFAULT_PROFILE, get_profile
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.run import RefDropRun
from tests.support import fakehost
from tests.support import tinyflux as tf
from tests.support.ditpass import blending_blocks, install_pass, model_call, run_pass, save, use

FLAVOURS = ("reforge", "forge")


def test_the_engine_names_flux_layers_and_blocks():
    """Flux's layer ids in a manifest and a Use's plan, the block names users see, and the guidance a trajectory keeps:
    what every test below stands on, so a regression is a failure here, never a skip."""
    from lib_refdrop.params import parse_blocks
    from lib_refdrop.reference.address import CONDITIONING_KEYS

    assert (block_label("double0.0"), block_label("single37.0")) == ("D00", "S37")
    assert LAYER_ID_RE.match("double18.0") and LAYER_ID_RE.match("single37.0")
    assert parse_blocks(["D18", "S37"]) == ("D18", "S37")
    assert "guidance" in CONDITIONING_KEYS


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=FLAVOURS)
def host(request):
    with fakehost.activated(request.param):
        from lib_refdrop.webui import hosts

        detected = hosts.detect()
        assert detected.name == request.param
        yield detected


@pytest.fixture
def store(tmp_path):
    return ReferenceStore(tmp_path / "store")


# -- the block math -----------------------------------------------------------------------------------------------

def _inputs(batch=2, img_tokens=16, txt_tokens=tf.TEXT_TOKENS, seed=3):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, img_tokens, tf.HIDDEN, generator=g)
    txt = torch.randn(batch, txt_tokens, tf.HIDDEN, generator=g)
    vec = torch.randn(batch, tf.HIDDEN, generator=g)
    ids = torch.cat([torch.zeros(batch, txt_tokens, 3), torch.rand(batch, img_tokens, 3, generator=g) * 4], dim=1)
    return img, txt, vec, tf.EmbedND(10000, tf.AXES)(ids)


def _sdpa_ops(**kwargs) -> FluxOps:
    from tests.support.hostsim import sdpa_attention

    return FluxOps(joint_attention=lambda q, k, v, mask: sdpa_attention(q, k, v, q.shape[1], mask=mask,
                                                                        skip_reshape=True), **kwargs)


@pytest.mark.parametrize("flavour", [*FLAVOURS, "neo"])
def test_block_math_is_the_models_blocks_bit_for_bit(flavour):
    """With each host's ops (reForge modulates with one ``addcmul``; Forge Neo with ComfyUI's ``apply_mod`` and ropes
    with comfy_kitchen's RoPE, read from its ``backend.nn.flux``), the blocks computed by lib_refdrop/dit are the
    model's own, bit for bit."""
    with fakehost.activated(flavour):
        from lib_refdrop.webui import hosts

        ops = hosts.detect().flux_ops()
    model = tf.Flux(seed=1, convention=flavour)
    img, txt, vec, pe = _inputs()
    for block in model.double_blocks:
        ours = double_block(block, img, txt, vec, pe, None, ops)
        theirs = block(img=img, txt=txt, vec=vec, pe=pe)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    x = torch.cat((txt, img), 1)
    for block in model.single_blocks:
        assert torch.equal(single_block(block, x, vec, pe, None, txt.shape[1], ops), block(x, vec=vec, pe=pe))
    other = tf.Flux(seed=1, convention="forge" if flavour == "reforge" else "reforge")
    assert not torch.equal(double_block(other.double_blocks[0], img, txt, vec, pe, None, ops)[0],
                           other.double_blocks[0](img=img, txt=txt, vec=vec, pe=pe)[0])  # the ops do matter


def test_text_tokens_of_a_double_block_are_untouched_by_the_guide():
    """Eq. 15: only the image rows of the joint attention change; the text stream's output is the plain one, bit for
    bit, while the image stream's changes."""
    model = tf.Flux(seed=2, convention="forge")  # the design's modulation, as _sdpa_ops computes it
    img, txt, vec, pe = _inputs()
    dit = blending_blocks(_sdpa_ops())
    with model_call(dit, {"cond_or_uncond": [0, 0], "sigmas": torch.tensor([0.5, 0.5])}):
        guided = dit.double(model.double_blocks[0], 0, img, txt, vec, pe)
    plain = model.double_blocks[0](img=img, txt=txt, vec=vec, pe=pe)
    assert torch.equal(guided[1], plain[1])
    assert (guided[0] - plain[0]).abs().max() > 1e-3


def test_a_block_outside_a_model_call_is_a_clear_internal_error():
    from lib_refdrop.errors import RefDropInternalError

    model = tf.Flux(seed=2)
    img, txt, vec, pe = _inputs()
    dit = FluxRefDrop(lambda q, k, v, eo: q, None, _sdpa_ops())
    with pytest.raises(RefDropInternalError, match="outside the sampler's model function"):
        dit.double(model.double_blocks[0], 0, img, txt, vec, pe)


# -- through each host's way into the blocks ----------------------------------------------------------------------

def test_zero_coefficient_installs_nothing(host, store):
    unet = tf.make_patcher(host.name)
    save(host, unet, store)
    run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": "fox", "rfg": 0.0}), store)
    p = tf.make_p(unet)
    install_pass(host, p, run)
    assert p.sd_model.forge_objects.unet is unet  # no clone, no patch: a plain generation
    assert unet.object_patches == {} and unet.model_options == {"transformer_options": {}}


def test_save_installs_on_a_clone_and_leaves_the_model_as_it_was(host, store):
    unet = tf.make_patcher(host.name)
    plain = tf.sample(unet, seed=3)
    blocks = list(unet.model.diffusion_model.double_blocks) + list(unet.model.diffusion_model.single_blocks)
    out, run, p = run_pass(host, unet, {"mode": "Save", "save_name": "fox", "profile": "exact"}, store, seed=3)
    patched = p.sd_model.forge_objects.unet
    assert patched is not unet and unet.object_patches == {} and unet.model_options["transformer_options"] == {}
    if host.name == "forge":
        assert len(patched.object_patches) == tf.DOUBLE_BLOCKS + tf.SINGLE_BLOCKS
    else:
        dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
        assert sorted(dit) == sorted([("double_block", i) for i in range(tf.DOUBLE_BLOCKS)]
                                     + [("single_block", i) for i in range(tf.SINGLE_BLOCKS)])
    # object patches are put back after the load (as Forge does: the bound method it found, on the block)
    assert all(getattr(block.forward, "__func__", None) is type(block).forward for block in blocks)
    assert torch.equal(out, plain)  # a Save records; the image is the plain one
    assert torch.equal(tf.sample(unet, seed=3), plain)
    run.writer.abort("test")


@pytest.mark.parametrize("rfg", [-0.5, 0.3, 1.0])
def test_use_at_the_saves_settings_reproduces_the_save(host, store, rfg):
    unet = tf.make_patcher(host.name)
    saved = save(host, unet, store)
    used, _ = use(host, unet, store, rfg)
    assert torch.equal(used, saved)


def test_the_change_grows_with_the_coefficient(host, store):
    unet = tf.make_patcher(host.name)
    save(host, unet, store, seed=1)
    plain = tf.sample(unet, seed=5)
    change = {rfg: float((use(host, unet, store, rfg, seed=5)[0] - plain).abs().mean()) for rfg in (0.15, 0.3, 0.6)}
    assert 0 < change[0.15] < change[0.3] < change[0.6]
    away = float((use(host, unet, store, -0.3, seed=5)[0] - plain).abs().mean())
    assert away > 0 and away == pytest.approx(change[0.3], rel=0.5)


def test_the_reference_holds_the_image_tokens_of_every_block(host, store):
    unet = tf.make_patcher(host.name)
    save(host, unet, store)
    manifest = store.manifest("fox")
    assert manifest["family"] == "flux" and manifest["chunks"] == ["cond0"]
    expected = {f"double{i}.0" for i in range(tf.DOUBLE_BLOCKS)} | {f"single{i}.0" for i in range(tf.SINGLE_BLOCKS)}
    assert set(manifest["layers"]) == expected
    tokens = (64 // 16) ** 2  # a 64 px image: an 8x8 latent in 2x2 patches; the text tokens are not stored
    assert all(layer == {"n_heads": tf.HEADS, "dim_head": tf.HIDDEN // tf.HEADS, "tokens": tokens}
               for layer in manifest["layers"].values())


@pytest.mark.parametrize("split", [False, True])
def test_real_cfg_layouts(host, store, split):
    """Real CFG: uncond and cond rows in one call ([1, 0]) or two; each chunk is saved apart and Use pairs them.
    A reference saved at CFG 1 guides a real-CFG generation too (its uncond rows take the cond rows)."""
    unet = tf.make_patcher(host.name)
    saved = save(host, unet, store, name="cfg", cfg=3.0, split=split)
    assert store.manifest("cfg")["chunks"] == ["uncond0", "cond0"]
    assert torch.equal(use(host, unet, store, 0.4, name="cfg", cfg=3.0, split=split)[0], saved)
    save(host, unet, store, name="distilled")
    plain = tf.sample(unet, seed=4, cfg=3.0, split=split)
    guided = use(host, unet, store, 0.4, name="distilled", seed=4, cfg=3.0, split=split)[0]
    assert (guided - plain).abs().mean() > 1e-3


def test_first_image_of_the_batch(host, store):
    """Source "batch": image 0 is generated plainly (bit for bit the batch's plain first image), the others attend
    to it."""
    unet = tf.make_patcher(host.name)
    plain = tf.sample(unet, seed=6, batch=2)
    out, run, _ = run_pass(host, unet, {"mode": "Use", "source": "batch", "rfg": 0.5}, store, seed=6, batch=2)
    run.release()
    assert torch.equal(out[0], plain[0])
    assert (out[1] - plain[1]).abs().mean() > 1e-3


def test_unet_reference_is_refused_on_flux_and_flux_reference_on_a_unet(host, store):
    from tests.support.refdrop_harness import save_synthetic

    save_synthetic(store, "sd15-ref", {"seed": 1})
    unet = tf.make_patcher(host.name)
    run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": "sd15-ref", "rfg": 0.3}), store)
    p = tf.make_p(unet)
    install_pass(host, p, run)
    with pytest.raises(RefDropError, match="'sd15-ref' was saved with an SD1.5 model, but the current model is Flux"):
        tf.sample(p.sd_model.forge_objects.unet)
    save(host, unet, store, name="flux-ref")
    from lib_refdrop.standalone import context, use_patch

    with pytest.raises(RefDropError, match="'flux-ref' was saved with a Flux model, but the current model is SD1.5"):
        use_patch(store, "flux-ref", 0.3, context("sd15", lambda q, k, v, eo: q, lambda percent: 1.0 - percent))


def test_what_flux_cannot_do_yet_stops_the_generation_with_a_message(host, store):
    from PIL import Image

    unet = tf.make_patcher(host.name)
    image = Image.new("RGB", (64, 64), "red")
    cases = [({"mode": "Use", "source": "image", "image": image, "rfg": 0.3}, "an image as the reference"),
             ({"mode": "Save", "save_from": "image", "image": image}, "a Save from an image")]
    for values, message in cases:
        run = RefDropRun(build({"enabled": True, **values}), store)
        p = tf.make_p(unet)
        install_pass(host, p, run)
        with pytest.raises(RefDropError, match=message):
            tf.sample(p.sd_model.forge_objects.unet)


def test_another_extensions_block_replacement_is_refused(host, store):
    unet = tf.make_patcher(host.name)
    if host.name == "forge":
        unet.add_object_patch("diffusion_model.double_blocks.1.forward", lambda *a, **k: None)
    else:
        unet.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", "double_block", 1)
    run = RefDropRun(build({"enabled": True, "mode": "Save", "save_name": "fox"}), store)
    p = tf.make_p(unet)
    install_pass(host, p, run)
    with pytest.raises(RefDropError, match="another extension already replaces blocks of this Flux model"):
        tf.sample(p.sd_model.forge_objects.unet)
    run.writer.abort("test")


def test_is_flux_tells_the_model_apart():

    from lib_refdrop.patcher.dit_blocks import is_flux
    from tests.support.hostsim import make_unet

    assert is_flux(tf.make_patcher("forge").model.diffusion_model)
    assert is_flux(tf.make_patcher("reforge").model.diffusion_model)
    assert not is_flux(make_unet("sd15", "tiny")) and not is_flux(None)


def test_advanced_blocks_and_groups_by_the_names_users_see(host, store):
    """D00-D18 / S00-S37 and the groups double / single address Flux's blocks; all of them off is a plain image."""
    unet = tf.make_patcher(host.name)
    save(host, unet, store)
    plain = tf.sample(unet, seed=5)

    def used(**settings):
        out, run, _ = run_pass(host, unet, {"mode": "Use", "reference": "fox", "rfg": 0.5, **settings}, store, seed=5)
        run.release()
        return out

    every = used()
    assert torch.equal(used(disabled_groups=["double", "single"]), plain)
    some = used(disabled_blocks=["D00", "S03"])
    assert not torch.equal(some, every) and not torch.equal(some, plain)
    assert not torch.equal(used(disabled_groups=["single"]), used(disabled_groups=["double"]))


def test_the_step_window_reads_flow_times(host, store):
    """Flux's sigmas are flow times in (0, 1]: a window that ends before the first step guides nothing."""
    unet = tf.make_patcher(host.name)
    save(host, unet, store)
    plain = tf.sample(unet, seed=5, steps=4)

    def used(**settings):
        out, run, _ = run_pass(host, unet, {"mode": "Use", "reference": "fox", "rfg": 0.5, **settings}, store, seed=5,
                               steps=4)
        run.release()
        return out

    assert torch.equal(used(step_start=0.9, step_end=1.0), plain)  # flow times below the last sampled one
    late, early = used(step_start=0.5), used(step_end=0.5)
    assert not torch.equal(late, plain) and not torch.equal(early, plain) and not torch.equal(late, early)


def test_a_trajectory_is_refused_on_flux_unless_it_keeps_the_guidance(monkeypatch):
    """A trajectory evaluates the reference again: without Flux's guidance among the conditioning it keeps, it would
    evaluate it wrongly, so it is refused then."""
    from lib_refdrop import run as generation
    from lib_refdrop.reference.profiles import TRAJECTORY

    settings = build({"enabled": True, "mode": "Save", "save_name": "fox", "profile": "exact"})
    assert generation.dit_unsupported(settings, "exact") is None
    monkeypatch.setattr(generation, "get_profile", lambda name: TRAJECTORY)
    monkeypatch.setattr(generation, "CONDITIONING_KEYS", ("c_crossattn", "y"))
    assert "does not keep Flux's guidance yet" in generation.dit_unsupported(settings, "exact")
    monkeypatch.setattr(generation, "CONDITIONING_KEYS", ("c_crossattn", "y", "guidance"))
    assert generation.dit_unsupported(settings, "exact") is None


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_a_trajectory_reference_on_flux_is_the_exact_one(host, store, cfg):
    """The trajectory (the reference's latents and conditioning, guidance included, evaluated again at Use) gives
    what the exact reference gives, at the Save's settings and at another seed."""
    unet = tf.make_patcher(host.name)
    saved, run, _ = run_pass(host, unet, {"mode": "Save", "save_name": "path", "profile": "trajectory"}, store,
                             cfg=cfg)
    run.finish_save({}, None)
    assert run.writer.wait(60) and run.writer.status.state == "saved", run.writer.status.message
    save(host, unet, store, name="exact", cfg=cfg)
    assert torch.equal(use(host, unet, store, 0.5, name="path", cfg=cfg)[0], saved)
    assert torch.equal(use(host, unet, store, 0.5, name="path", seed=5, cfg=cfg)[0],
                       use(host, unet, store, 0.5, name="exact", seed=5, cfg=cfg)[0])


def test_a_subject_mask_selects_the_references_image_tokens(host, store):
    """Key-side masks work on Flux's image-token grid (16 x 16 px per token): a mask that keeps everything is no
    mask; one that keeps half of the reference guides differently."""
    from PIL import Image

    unet = tf.make_patcher(host.name)
    save(host, unet, store)

    def used(mask):
        values = {"mode": "Use", "reference": "fox", "rfg": 0.5, "mask": mask}
        out, run, _ = run_pass(host, unet, values, store, seed=5)
        run.release()
        return out

    everything, left = Image.new("L", (64, 64), 255), Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    assert torch.equal(used(everything), used(None))
    assert not torch.equal(used(left), used(None))


def test_several_references(host, store):
    """Eq. 7 on Flux: a second slot at 0 is the single reference exactly; both on guide toward both."""
    unet = tf.make_patcher(host.name)
    save(host, unet, store, name="fox", seed=1)
    save(host, unet, store, name="owl", seed=2)

    def used(**values):
        out, run, _ = run_pass(host, unet, {"mode": "Use", "reference": "fox", "rfg": 0.3, **values}, store, seed=5)
        run.release()
        return out

    single = used()
    assert torch.equal(used(reference_2="owl", rfg_2=0.0), single)
    both = used(reference_2="owl", rfg_2=0.3)
    assert not torch.equal(both, single)


def test_installing_twice_on_one_pass_is_refdrops_own_patch_not_another_extension(host, store):
    """Forge runs process_before_every_sampling twice for a hires pass, the first time on the clone RefDrop patched
    before the reset: RefDrop's own block patches there are replaced, not refused as another extension's."""
    unet = tf.make_patcher(host.name)
    saved = save(host, unet, store)
    run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": "fox", "rfg": 0.3}), store)
    p = tf.make_p(unet)
    install_pass(host, p, run)
    install_pass(host, p, run)
    assert torch.equal(tf.sample(p.sd_model.forge_objects.unet), saved)
    run.release()


def test_a_flux_save_with_the_default_profile_keeps_each_blocks_input(host, store):
    """The default (``lean``) works on Flux too: a Save left on the default stores each block's input
    (tests/test_flux_input.py), and its Use at the Save's settings works."""
    unet = tf.make_patcher(host.name)
    _, run, _ = run_pass(host, unet, {"mode": "Save", "save_name": "default"}, store)
    run.finish_save({}, None)
    assert run.writer.wait(60) and run.writer.status.state == "saved", run.writer.status.message
    assert store.manifest("default")["profile"] == DEFAULT_PROFILE and get_profile("").keep == "input"
    assert use(host, unet, store, 0.5, name="default")[0].isfinite().all()


def test_forge_neo_flux_is_reached_through_its_dit_block_hook(tmp_path):
    """Forge Neo's Flux has Forge's class name but calls every block with ``transformer_options`` and looks up
    ``patches_replace["dit"]``: RefDrop's blocks go there (an object-patched forward would get an unexpected
    ``transformer_options``), and Save = plain, Use at the Save's settings = Save, c = 0 = plain, bit for bit."""
    with fakehost.activated("neo"):  # Neo is Forge's backend, with ComfyUI's Flux arithmetic
        from lib_refdrop.webui import hosts

        host = hosts.detect()
        store = ReferenceStore(tmp_path)
        unet = tf.make_patcher("neo")
        plain = tf.sample(unet, seed=1)
        saved = save(host, unet, store, seed=1)
        assert torch.equal(saved, plain)
        for rfg in (0.3, 1.0):
            out, p = use(host, unet, store, rfg, seed=1)
            assert torch.equal(out, saved), rfg
            clone = p.sd_model.forge_objects.unet
            dit = clone.model_options["transformer_options"]["patches_replace"]["dit"]
            assert len(dit) == tf.DOUBLE_BLOCKS + tf.SINGLE_BLOCKS and not getattr(clone, "object_patches", {})
        assert torch.equal(use(host, unet, store, 0.0, seed=1)[0], plain)
        assert not torch.equal(use(host, unet, store, 1.0, seed=2)[0], tf.sample(unet, seed=2))
