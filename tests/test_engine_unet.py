"""The invariants of RefDrop on a real SD1.5-architecture U-Net (random weights) driven like the hosts drive it.

- Use with the settings of the Save reproduces the Save image, for any c;
- c = 0 is a plain generation;
- at another seed every c != 0 changes the image, more for larger |c|.
"""

from __future__ import annotations

import pytest
import torch

from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.store import ReferenceStore
from tests.support import faultkit
from tests.support.hostsim import AttnHost, make_unet
from tests.support.refdrop_harness import plain, save, use

BASE = {"steps": 4, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}


@pytest.fixture(scope="module")
def host():
    return AttnHost(make_unet("sd15", "tiny", seed=0))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ReferenceStore(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def reference(host, store):
    """The Save image of the base settings, saved as 'base'."""
    return save(host, store, "base", **BASE)


def test_save_does_not_change_the_image(host, reference):
    assert torch.equal(reference, plain(host, **BASE))


@pytest.mark.parametrize("c", [-0.5, 0.3, 1.0])
def test_use_with_save_settings_reproduces_the_save_image(host, store, reference, c):
    assert torch.equal(use(host, store, "base", c, **BASE), reference)


def test_c0_is_a_plain_generation(host, store, reference):
    other = {**BASE, "seed": 7}
    assert torch.equal(use(host, store, "base", 0.0, **other), plain(host, **other))


def test_change_grows_with_abs_c_at_another_seed(host, store, reference):
    other = {**BASE, "seed": 7}
    base = plain(host, **other)
    changes = {c: (use(host, store, "base", c, **other) - base).norm().item() for c in (0.2, 0.5, 1.0, -0.2, -0.5)}
    assert all(change > 1e-3 for change in changes.values()), changes
    assert changes[0.2] < changes[0.5] < changes[1.0], changes
    assert changes[-0.2] < changes[-0.5], changes


@pytest.mark.parametrize("layout", [
    {"batch_size": 2},
    {"batch_size": 3},
    {"layout": "split"},
])
def test_first_image_of_any_batch_layout_reproduces_the_reference(host, store, reference, layout):
    """The image with the Save seed attends to features identical to its own, whatever the batch around it."""
    out = use(host, store, "base", 0.6, **{**BASE, **layout})
    torch.testing.assert_close(out[:1], reference, rtol=1e-4, atol=1e-4)
    if out.shape[0] > 1:  # the other images got the reference too
        others = plain(host, **{**BASE, **layout})[1:]
        assert (out[1:] - others).abs().amax() > 1e-3


def test_cfg1_reference_and_use_with_cfg(host, store):
    """A reference saved at CFG 1 has no uncond features: uncond rows attend to the cond reference."""
    cfg1 = {**BASE, "cfg": 1.0}
    ref = save(host, store, "cfg1", **cfg1)
    assert store.manifest("cfg1")["chunks"] == ["cond0"]
    assert torch.equal(use(host, store, "cfg1", 0.5, **cfg1), ref)
    out = use(host, store, "cfg1", 0.5, **BASE)
    assert (out - plain(host, **BASE)).abs().amax() > 1e-3


def test_and_prompts_reproduce(host, store):
    and_prompt = {**BASE, "n_conds": 2}
    ref = save(host, store, "and", **and_prompt)
    assert store.manifest("and")["chunks"] == ["uncond0", "cond0", "cond1"]
    assert torch.equal(use(host, store, "and", 0.4, **and_prompt), ref)
    # a plain prompt with an AND-reference, and the other way round, both run and apply it
    assert (use(host, store, "and", 0.4, **BASE) - plain(host, **BASE)).abs().amax() > 1e-3
    assert (use(host, store, "base", 0.4, **and_prompt) - plain(host, **and_prompt)).abs().amax() > 1e-3


def test_token_merging(host, store, reference):
    try:
        host.tome_ratio = 0.5
        tome_ref = save(host, store, "tome", **BASE)
        assert torch.equal(use(host, store, "tome", 0.7, **BASE), tome_ref)
        assert (use(host, store, "base", 0.7, **BASE) - tome_ref).abs().amax() > 1e-3
    finally:
        host.tome_ratio = 0.0


@pytest.mark.parametrize("sampler", ["heun", "euler_a", "dpmpp_2m"])
def test_second_order_and_ancestral_samplers_reproduce(host, store, sampler):
    settings = {**BASE, "sampler": sampler, "steps": 3}
    ref = save(host, store, f"s-{sampler}", **settings)
    assert torch.equal(use(host, store, f"s-{sampler}", 0.8, **settings), ref)


def test_use_with_other_steps_sampler_and_resolution(host, store):
    save(host, store, "twenty", **{**BASE, "steps": 20})
    for settings in ({**BASE, "steps": 30, "sampler": "dpmpp_2m", "scheduler": "karras"},
                     {**BASE, "steps": 5, "sampler": "heun"},
                     {**BASE, "height": 24, "width": 16}):
        base = plain(host, **settings)
        assert torch.equal(use(host, store, "twenty", 0.0, **settings), base)
        assert (use(host, store, "twenty", 0.5, **settings) - base).abs().amax() > 1e-3


def test_img2img_uses_the_matching_sigmas(host, store, reference):
    i2i = {**BASE, "init_latent": reference, "denoise": 0.6}
    assert (use(host, store, "base", 0.5, **i2i) - plain(host, **i2i)).abs().amax() > 1e-3


def test_disabled_parts_and_step_window(host, store, reference):
    other = {**BASE, "seed": 3}
    base = plain(host, **other)
    everything_off = {"disabled_groups": ["input", "middle", "output"]}
    assert torch.equal(use(host, store, "base", 0.8, settings=everything_off, **other), base)
    full = use(host, store, "base", 0.8, **other)
    last_step_only = use(host, store, "base", 0.8, settings={"step_start": 0.999, "step_end": 1.0}, **other)
    assert 0 < (last_step_only - base).norm() < 0.5 * (full - base).norm()
    for partial in ({"skip_first_up": True}, {"disabled_blocks": ["OUT03", "M00"]}, {"step_end": 0.5}):
        out = use(host, store, "base", 0.8, settings=partial, **other)
        assert (out - base).abs().amax() > 1e-3 and (out - full).abs().amax() > 1e-4, partial


def test_reference_of_another_family_stops_the_generation(host, store, reference):
    with pytest.raises(RefDropError, match=r"SD1\.5.*SDXL"):
        use(host, store, "base", 0.5, family="sdxl", **BASE)


def test_unknown_reference_stops_the_generation(host, store, reference):
    with pytest.raises(RefDropError, match="'nope' not found.*base"):
        use(host, store, "nope", 0.5, **BASE)


def test_layers_of_another_architecture_stop_the_generation(store, reference):
    sdxl = AttnHost(make_unet("sdxl", "tiny", seed=0))
    with pytest.raises(RefDropError, match="another architecture"):
        use(sdxl, store, "base", 0.5, family="unknown", **{**BASE, "height": 8, "width": 8})


def test_sdxl_architecture_reproduces(store):
    sdxl = AttnHost(make_unet("sdxl", "tiny", seed=0))
    settings = {**BASE, "height": 8, "width": 8, "steps": 3}
    ref = save(sdxl, store, "xl", family="sdxl", **settings)
    layers = store.manifest("xl")["layers"]
    assert any(lid.endswith(".1") for lid in layers)  # depth > 1: block_index tells the layers apart
    assert torch.equal(use(sdxl, store, "xl", 0.5, family="sdxl", **settings), ref)
    other = {**settings, "seed": 5}
    assert (use(sdxl, store, "xl", 0.5, family="sdxl", **other) - plain(sdxl, **other)).abs().amax() > 1e-3



def test_automatic_names_never_collide(tmp_path, monkeypatch):
    """Saves without a name in the same second (X/Y/Z cells) get distinct automatic names."""
    from lib_refdrop import run as generation
    from lib_refdrop.params import build
    from tests.support.refdrop_harness import context

    monkeypatch.setattr(generation, "automatic_name", lambda seed: f"ref-{seed}-same-second")
    store = ReferenceStore(tmp_path)
    (store.root / "ref-42-same-second").mkdir()  # a finished Save of that name
    (store.root / "ref-42-same-second" / "manifest.json").write_text("{}")
    runs = [generation.RefDropRun(build({"enabled": True, "mode": "Save"}), store) for _ in range(2)]
    for run in runs:
        faultkit.attn1_patch(run, context(seed=42))  # the first one's write is still pending when the second starts
    assert [run.save_name for run in runs] == ["ref-42-same-second-2", "ref-42-same-second-3"]
    for run in runs:
        run.writer.abort("test")
        run.writer.wait(10)
