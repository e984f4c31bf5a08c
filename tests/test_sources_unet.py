"""Image references and the batch's first image on real U-Net architectures with random weights, with the hosts'
batch layouts that matter to a reference pass: cond and uncond in separate calls ("split"), a second-order sampler
(two calls at one sigma), AND-prompts, CFG 1. The pass runs once per sigma, a bake records one slot per sigma, and
baked and live image references guide alike.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lib_refdrop import standalone
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import AttnHost, DiscreteSchedule, host_attention, make_conds, make_unet, sample

SCHEDULE = DiscreteSchedule()
IMAGE = Image.new("RGB", (8, 8), (200, 40, 40))  # stands for the picture: the "VAE" below gives a fixed latent
LAYOUTS = [
    {"sampler": "euler", "layout": "batched"},
    {"sampler": "heun", "layout": "split"},
    {"sampler": "euler", "n_conds": 2},
    {"sampler": "euler", "cfg": 1.0},
]


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def host(request):
    return AttnHost(make_unet(request.param, "tiny", seed=0))


def ctx(host, seed=1, **extra):
    latent = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    _, empty = make_conds(host.unet.config.cross_attention_dim)
    return standalone.context("sd15", host_attention, SCHEDULE.percent_to_sigma, seed=seed,
                              encode_image=lambda image: latent,
                              encode_prompt=lambda text: {"c_crossattn": empty}, **extra)


def run(host, patches, **args):
    host.patch, host.model_wrapper = patches.attn1, patches.model_wrapper
    try:
        return sample(host, steps=3, height=8, width=8, **args)
    finally:
        host.patch = host.model_wrapper = None


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda a: "-".join(f"{v}" for v in a.values()))
def test_bake_is_plain_and_baked_equals_live(host, tmp_path, layout):
    store = ReferenceStore(tmp_path)
    plain = run(host, standalone.PassPatches(None, None), seed=4, **layout)
    with standalone.start_save(store, "baked", ctx(host, seed=4), image=IMAGE) as save:
        baked_run = run(host, standalone.PassPatches(save.patch, save.model_wrapper), seed=4, **layout)
        save.finish({})
    assert torch.equal(baked_run, plain)
    manifest = store.manifest("baked")
    sigmas = [slot["sigma"] for slot in manifest["slots"]]
    assert len(sigmas) == len(set(sigmas))  # the pass ran once per sigma, whatever the calls at it
    with standalone.start_use(store, reference="baked", rfg=0.5) as use:
        stored = run(host, use.for_pass(ctx(host, seed=4)), seed=4, batch_size=2, **layout)
    with standalone.start_use(store, source="image", image=IMAGE, rfg=0.5) as use:
        live = run(host, use.for_pass(ctx(host, seed=4)), seed=4, batch_size=2, **layout)
    assert (stored - live).abs().max() <= 1e-4 < (live - sample(host, steps=3, height=8, width=8, seed=4,
                                                                  batch_size=2, **layout)).abs().max()


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda a: "-".join(f"{v}" for v in a.values()))
def test_batch_reference_first_image_is_plain(host, tmp_path, layout):
    store = ReferenceStore(tmp_path)
    plain = sample(host, steps=3, height=8, width=8, seed=4, batch_size=3, **layout)
    with standalone.start_use(store, source="batch", rfg=0.5) as use:
        guided = run(host, use.for_pass(ctx(host, seed=4)), seed=4, batch_size=3, **layout)
    assert torch.equal(guided[0], plain[0])
    assert not torch.equal(guided[1:], plain[1:])
