"""A new ComfyUI-style host is one adapter module (tests/support/comfyhost.py) over lib_refdrop.patcher and
lib_refdrop.standalone: the suite's fake patcher, without ``set_model_replace_all`` as ComfyUI's, drives Save and
Use on a U-Net and on a Flux model; Save = plain, Use at the Save's settings = Save, c = 0 = plain, bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_refdrop import standalone
from lib_refdrop.errors import RefDropError
from lib_refdrop.patcher.unet_layers import attn1_layer_keys
from lib_refdrop.reference.store import ReferenceStore
from tests.support import comfyhost
from tests.support import tinyflux as tf
from tests.support.fakehost.objects import PerLayerPatcher, make_model, reforge_kernels_as, sample_patched

REPO = Path(__file__).resolve().parents[1]
SAMPLE = {"steps": 2, "height": 8, "width": 8, "seed": 3}


@pytest.fixture(autouse=True)
def comfy_kernels(monkeypatch):
    """``comfy.ldm.modules.attention`` as the fake hosts have it (the reForge stand-in: the same kernel)."""
    reforge_kernels_as(monkeypatch, comfyhost.KERNELS)


@pytest.fixture(scope="module")
def unet():
    from tests.support.hostsim import layer_map, make_unet

    diffusion_model = make_unet("sd15", "tiny")
    return PerLayerPatcher(make_model("reforge", diffusion_model)), [layer.key for layer in layer_map(diffusion_model)]


def test_save_and_use_on_a_unet_through_the_patcher_alone(tmp_path, unet):
    model, layers = unet
    store = ReferenceStore(tmp_path)
    plain = sample_patched(model, **SAMPLE)
    patched, save = comfyhost.save_node(model, store, "fox", "sd15", seed=3, profile="exact", layers=layers)
    assert patched is not model and model.attn1_patches() == {}
    assert sorted(patched.attn1_patches()) == sorted(layers)  # one set_model_attn1_replace per layer
    saved = sample_patched(patched, **SAMPLE)
    save.finish({"seed": 3})
    assert torch.equal(saved, plain)
    used, use = comfyhost.use_node(model, store, "fox", 0.5, "sd15", seed=3, layers=layers)
    with use:
        assert torch.equal(sample_patched(used, **SAMPLE), saved)
        assert not torch.equal(sample_patched(used, **{**SAMPLE, "seed": 4}), sample_patched(model, **{**SAMPLE,
                                                                                                      "seed": 4}))
    off, use = comfyhost.use_node(model, store, "fox", 0.0, "sd15", seed=3, layers=layers)
    use.close()
    assert off is model  # c = 0: nothing installed


def test_save_and_use_on_flux_through_the_patcher_alone(tmp_path):
    model = tf.make_patcher("reforge")
    model.model.model_sampling = tf.FlowSchedule()
    store = ReferenceStore(tmp_path)
    plain = tf.sample(model, seed=2)
    patched, save = comfyhost.save_node(model, store, "fox", "", seed=2, profile="exact")  # the default is lossy
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert len(dit) == tf.DOUBLE_BLOCKS + tf.SINGLE_BLOCKS and model.model_options == {"transformer_options": {}}
    saved = tf.sample(patched, seed=2)
    save.finish({"seed": 2})
    assert torch.equal(saved, plain) and store.manifest("fox")["family"] == "flux"
    used, use = comfyhost.use_node(model, store, "fox", 0.5, "", seed=2)
    with use:
        assert torch.equal(tf.sample(used, seed=2), saved)
    off, use = comfyhost.use_node(model, store, "fox", 0.0, "", seed=2)
    use.close()
    assert off is model
    with pytest.raises(RefDropError, match="on a DiT model RefDrop replaces its blocks"):  # not a bare attn1 patch
        standalone.use_patch(store, "fox", 0.5, comfyhost.pass_context(model, "", seed=2))


def test_a_graph_host_gets_the_error_itself_and_nothing_is_left_pending(tmp_path, monkeypatch):
    from lib_refdrop import run as generation

    monkeypatch.setattr(generation, "WAIT_FOR_PENDING_SAVE_S", 5.0)
    store = ReferenceStore(tmp_path)
    model = tf.make_patcher("reforge")
    model.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", "double_block", 1)
    with pytest.raises(RefDropError, match="another extension already replaces blocks of this Flux model"):
        comfyhost.save_node(model, store, "fox", "", seed=2)
    clean = tf.make_patcher("reforge")
    clean.model.model_sampling = tf.FlowSchedule()
    patched, save = comfyhost.save_node(clean, store, "fox", "", seed=2, profile="exact")
    saved = tf.sample(patched, seed=2)
    save.finish({})
    used, use = comfyhost.use_node(clean, store, "fox", 0.5, "", seed=2)  # no Save of "fox" is still pending
    with use:
        assert torch.equal(tf.sample(used, seed=2), saved)


def test_the_attn1_layer_walk_of_an_ldm_unet():
    from tests.test_host_layers import _unet

    assert attn1_layer_keys(_unet()) == [("input", 1, 0), ("middle", 0, 0), ("middle", 0, 1), ("output", 1, 0),
                                         ("output", 1, 1), ("output", 1, 2)]


def test_the_adapter_imports_nothing_of_the_webui():
    code = ("import sys, tests.support.comfyhost; "
            "print(sorted(m for m in sys.modules if m.startswith('lib_refdrop.webui') or m.split('.')[0] in "
            "{'modules', 'gradio', 'fastapi', 'backend', 'ldm_patched'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"
