"""scripts/refdrop.py on a Flux model in the fake hosts: the run plans a DiT pass and the patcher replaces the
blocks (lib_refdrop/patcher/dit_blocks.py), a Save's manifest says flux, a Use at the Save's settings gives the
Save's image, and a bad argument stops the generation at the first block."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lib_refdrop.errors import RefDropError
from lib_refdrop.params import build, to_args
from lib_refdrop.patcher import dit_blocks
from lib_refdrop.webui import opts as options
from tests.support import fakehost
from tests.support import tinyflux as tf


@pytest.fixture(params=["reforge", "forge"])
def host(request, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with fakehost.activated(request.param, models_path=tmp_path / "models"):
        yield SimpleNamespace(flavour=request.param, script_module=fakehost.load_script())
    torch.set_num_threads(threads)


def run_hooks(script, p, args) -> None:
    script.before_process(p, *args)
    script.process_before_every_sampling(p, *args, x=None, noise=None, c=None, uc=None)


def finish(script, p, args):
    from modules.processing import Processed

    processed = Processed(p, [Image.new("RGB", (8, 8), "blue")])
    script.postprocess(p, processed, *args)
    return processed


def test_save_then_use_through_the_hooks(host):
    script = host.script_module.RefDropScript()
    unet = tf.make_patcher(host.flavour)
    save_args = to_args(build({"enabled": True, "mode": "Save", "save_name": "fox", "profile": "exact"}))
    p = tf.make_p(unet)
    run_hooks(script, p, save_args)
    assert p.sd_model.forge_objects.unet is not unet and unet.object_patches == {}
    saved = tf.sample(p.sd_model.forge_objects.unet)
    finish(script, p, save_args)
    assert p.refdrop_run.writer.wait(60) and p.refdrop_run.writer.status.state == "saved"
    manifest = options.get_store().manifest("fox")
    assert manifest["family"] == "flux" and "double0.0" in manifest["layers"] and "single0.0" in manifest["layers"]

    use_args = to_args(build({"enabled": True, "mode": "Use", "reference": "fox", "rfg": 0.4}))
    p = tf.make_p(unet)
    run_hooks(script, p, use_args)
    assert torch.equal(tf.sample(p.sd_model.forge_objects.unet), saved)
    assert p.extra_generation_params["refdrop_reference"] == "fox"
    finish(script, p, use_args)


def test_disabled_leaves_the_model_alone(host):
    script = host.script_module.RefDropScript()
    unet = tf.make_patcher(host.flavour)
    p = tf.make_p(unet)
    run_hooks(script, p, to_args(build({})))
    assert p.sd_model.forge_objects.unet is unet


def test_a_bad_argument_stops_the_generation_at_the_first_block(host):
    """The failing patch of a bad argument goes into the blocks too: on Flux there is no attn1 layer to raise in."""
    script = host.script_module.RefDropScript()
    unet = tf.make_patcher(host.flavour)
    p = tf.make_p(unet)
    bad = to_args(build({"enabled": True, "mode": "Use", "reference": "fox", "rfg": 0.4}))
    bad[8], bad[9] = 0.9, 0.1  # step window start >= end
    run_hooks(script, p, bad)
    assert p.sd_model.forge_objects.unet is not unet
    with pytest.raises(RefDropError, match="step window is empty"):
        tf.sample(p.sd_model.forge_objects.unet)


def test_a_transformer_refused_by_name_stops_the_generation_though_it_calls_no_attn1_layer(host):
    """A transformer RefDrop has no family for (Forge Neo's Lumina, Z-Image, Flux.2, Chroma Radiance) looks up no
    attn1 replacement: a refusal on the attn1 layers alone would let a Use run plain without a word (seen with Neo's
    own Qwen-Image class before it had a family). Every host calls every model through the model function wrapper,
    so the refusal is raised there."""
    refused = type("ChromaRadiance", (tf.Flux,), {})(seed=0, convention="neo")  # Flux's blocks, a family not served
    model = SimpleNamespace(diffusion_model=refused, predictor=tf.FlowSchedule(), model_sampling=tf.FlowSchedule())
    script = host.script_module.RefDropScript()
    for values in ({"mode": "Use", "reference": "anything", "rfg": 0.4}, {"mode": "Save", "save_name": "radiance"}):
        p = tf.make_p(tf.FluxPatcher(model))
        run_hooks(script, p, to_args(build({"enabled": True, **values})))
        with pytest.raises(RefDropError, match=r"this model \(ChromaRadiance\) is not supported yet"):
            tf.sample(p.sd_model.forge_objects.unet)


def test_flux2_in_fluxs_own_class_is_refused_by_name(host):
    """Forge Neo builds Flux.2 (Klein) from Flux's own class with ``global_modulation`` (ComfyUI: in ``params``): its
    blocks are not Flux.1's (a gated SiLU MLP, one modulation for all blocks), so it is refused by name before a
    Save or Use, not treated as Flux.1 (which stopped a Save with a tensor-shape error inside a block)."""
    neo_flux2 = tf.make_patcher("neo")
    neo_flux2.model.diffusion_model.global_modulation = True
    comfy_flux2 = tf.make_patcher("reforge")
    comfy_flux2.model.diffusion_model.params = SimpleNamespace(global_modulation=True)
    script = host.script_module.RefDropScript()
    for unet in (neo_flux2, comfy_flux2):
        assert dit_blocks.dit_family(unet.model.diffusion_model) is None
        p = tf.make_p(unet)
        run_hooks(script, p, to_args(build({"enabled": True, "mode": "Save", "save_name": "klein"})))
        with pytest.raises(RefDropError, match=r"this model \(Flux\.2\) is not supported yet"):
            tf.sample(p.sd_model.forge_objects.unet)
    assert dit_blocks.dit_family(tf.make_patcher("neo").model.diffusion_model) == "flux"


def test_a_missing_reference_stops_the_generation_with_its_message(host):
    script = host.script_module.RefDropScript()
    p = tf.make_p(tf.make_patcher(host.flavour))
    run_hooks(script, p, to_args(build({"enabled": True, "mode": "Use", "reference": "nowhere", "rfg": 0.4})))
    with pytest.raises(RefDropError, match="'nowhere' not found"):
        tf.sample(p.sd_model.forge_objects.unet)
