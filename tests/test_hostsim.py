"""Checks that tests/support/hostsim drives an attn1 patch the way the recorded Forge/reForge hosts do."""

from __future__ import annotations

import pytest
import torch

from tests.support.hostsim import (
    AttnHost,
    RecordingPatch,
    extra_options_of,
    layer_map,
    load_trace,
    make_unet,
    replay_calls,
    sample,
    sdpa_attention,
    split_forwards,
)

# case -> sample() kwargs reproducing the request (all: 128x128 -> 16x16 latent, Euler a, 4 steps, CFG 7, seed 1)
SD15_CASES = {
    "t2i_basic": {},
    "t2i_batch2": {"batch_size": 2},
    "t2i_batch3_cfg": {"batch_size": 3},
    "t2i_cfg1": {"cfg": 1.0},
    "t2i_and": {"n_conds": 2},
    "t2i_split": {"layout": "split"},
    "t2i_heun": {"sampler": "heun", "steps": 3},
    "t2i_dpmpp2m_karras": {"sampler": "dpmpp_2m", "scheduler": "karras"},
    "t2i_res": {"height": 24, "width": 16},
    "i2i": {"denoise": 0.6, "init_latent": "random"},
    "t2i_tome": {"tome_ratio": 0.5},
}


def _pass_through(q, k, v, extra_options):
    return sdpa_attention(q, k, v, extra_options["n_heads"])


@pytest.fixture(scope="module")
def sd15():
    return make_unet("sd15", "tiny", seed=0)


@pytest.fixture(scope="module")
def sdxl():
    return make_unet("sdxl", "tiny", seed=0)


def _run(unet, host_flavour=None, tome_ratio=0.0, **kwargs):
    kwargs = {"sampler": "euler_a", "steps": 4, "cfg": 7.0, "seed": 1, **kwargs}
    if kwargs.get("init_latent") == "random":
        kwargs["init_latent"] = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    rec = RecordingPatch()
    with AttnHost(unet, patch=rec, tome_ratio=tome_ratio, host_flavour=host_flavour) as host:
        latent, seen = sample(host, return_sigmas=True, **kwargs)
    return rec.calls, latent, seen


def _frac(shape, original_shape):
    """rows and tokens relative to the latent area (the tiny U-Net's channel width differs from the trace)."""
    return shape[0], shape[1] / (original_shape[2] * original_shape[3])


def _signature(call, sigmas, full_shape=True, heads=True):
    osh = call["original_shape"]
    return (tuple(call["block"]), call["block_index"], call["transformer_index"], tuple(call["cond_or_uncond"]),
            _frac(call["q"], osh), _frac(call["k"], osh), _frac(call["v"], osh),
            tuple(osh) if full_shape else tuple(osh[:2]), call["n_heads"] if heads else None, len(sigmas))


def _assert_matches(ours, recorded, full_shape=True, heads=True):
    assert len(ours) == len(recorded)
    for i, (a, b) in enumerate(zip(ours, recorded, strict=True)):
        sig_a = _signature(a, a["sigmas"], full_shape, heads)
        sig_b = _signature(b, b["sigmas"]["values"], full_shape, heads)
        assert sig_a == sig_b, f"call {i}: {sig_a} != {sig_b}"
        assert a["sigmas"] == pytest.approx(b["sigmas"]["values"], rel=1e-3), f"call {i}"


@pytest.mark.parametrize("case", sorted(SD15_CASES))
def test_sd15_matches_forge_trace(sd15, case):
    kwargs = dict(SD15_CASES[case])
    calls, latent, seen = _run(sd15, **kwargs)
    trace = load_trace("forge", case)
    _assert_matches(calls, trace["calls"])
    assert len(seen) == len(split_forwards(trace["calls"]))
    assert latent.dtype == torch.float32 and torch.isfinite(latent).all()


def test_sdxl_matches_forge_trace_layers(sdxl):
    calls, _, _ = _run(sdxl, steps=3, height=8, width=8)
    depth = {layer.block: layer.block_index + 1 for layer in layer_map(sdxl)}  # tiny depth per block
    trace = load_trace("forge", "sdxl_t2i_basic")
    recorded = [c for c in trace["calls"] if c["block_index"] < depth[tuple(c["block"])]]
    assert len(calls) == 3 * 22
    _assert_matches(calls, recorded, full_shape=False, heads=False)


@pytest.mark.parametrize("flavour", ["forge", "reforge"])
def test_extra_options_keys_and_values_match_host(sd15, flavour):
    calls, _, _ = _run(sd15, host_flavour=flavour, tome_ratio=0.5)
    recorded = load_trace(flavour, "t2i_tome")["calls"]
    skip = {"dim_head", "activations_shape"}  # widths of the tiny U-Net
    for a, b in zip(calls, recorded, strict=True):
        ours, theirs = a["extra_options"], extra_options_of(b)
        assert list(ours) == list(theirs)
        for key, val in theirs.items():
            if key == "sigmas":
                assert ours[key].dtype == val.dtype and ours[key].tolist() == pytest.approx(val.tolist(), rel=1e-3)
            elif torch.is_tensor(val):
                assert torch.equal(ours[key], val), key
            elif key not in skip:
                assert ours[key] == val, key
        if "activations_shape" in theirs:  # [rows, C, h, w]: C is the tiny width here
            assert ours["activations_shape"][::2] == theirs["activations_shape"][::2]
            assert ours["activations_shape"][3] == theirs["activations_shape"][3]


def test_pass_through_patch_is_bit_identical(sd15):
    gen = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 77, 32, generator=gen)
    args = dict(cond_or_uncond=[1, 0], sigmas=torch.tensor([2.0]))
    with torch.no_grad():
        reference = sd15(x, torch.tensor(400.0), encoder_hidden_states=ctx).sample  # plain diffusers
        for tome in (0.0, 0.5):
            with AttnHost(sd15, tome_ratio=tome) as host:
                plain = host(x, torch.tensor(400.0), ctx, **args)
                host.patch = _pass_through
                patched = host(x, torch.tensor(400.0), ctx, **args)
            assert torch.equal(plain, patched)
            if tome == 0.0:
                assert torch.equal(plain, reference)
            else:
                assert not torch.equal(plain, reference)
    with AttnHost(sd15) as host:
        plain_latent = sample(host, steps=2, sampler="euler_a")
        host.patch = _pass_through
        assert torch.equal(plain_latent, sample(host, steps=2, sampler="euler_a"))


def test_sdxl_pass_through_is_bit_identical(sdxl):
    with AttnHost(sdxl) as host:
        plain = sample(host, steps=2, height=8, width=8)
        host.patch = _pass_through
        assert torch.equal(plain, sample(host, steps=2, height=8, width=8))


def test_patch_reaches_attn1_only_and_changes_output(sd15):
    seen = []

    def zero_patch(q, k, v, extra_options):
        seen.append(extra_options["block"])
        return torch.zeros_like(q)

    with AttnHost(sd15) as host:
        plain = sample(host, steps=1)
        host.patches_replace[("middle", 0, 0)] = zero_patch
        patched = sample(host, steps=1)
    assert seen == [("middle", 0)]
    assert not torch.equal(plain, patched)


def test_bad_patch_shape_is_reported(sd15):
    with AttnHost(sd15, patch=lambda q, k, v, eo: k[:, :1]) as host, pytest.raises(ValueError, match="expected"):
        sample(host, steps=1)


def test_batch_images_follow_their_seeds(sd15):
    with AttnHost(sd15) as host:
        batch = sample(host, sampler="euler_a", seed=1, batch_size=2, steps=3)
        second = sample(host, sampler="euler_a", seed=2, batch_size=1, steps=3)
        again = sample(host, sampler="euler_a", seed=1, batch_size=2, steps=3)
    assert torch.equal(batch, again)
    torch.testing.assert_close(batch[1:], second, rtol=1e-4, atol=1e-4)


def test_split_and_batched_layouts_agree(sd15):
    with AttnHost(sd15) as host:
        a = sample(host, steps=2, layout="batched")
        b = sample(host, steps=2, layout="split")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_replay_calls_rebuilds_recorded_arguments():
    trace = load_trace("reforge", "t2i_batch2")
    n = 0
    for (q, k, v, eo), call in zip(replay_calls(trace), trace["calls"], strict=True):
        assert list(q.shape) == call["q"] and list(k.shape) == call["k"] and list(v.shape) == call["v"]
        assert isinstance(eo["block"], tuple) and eo["sigmas"].dtype == torch.float32
        assert eo["sigmas"].tolist() == call["sigmas"]["values"] and eo["attn_precision"] is None
        assert sdpa_attention(q, k, v, eo["n_heads"]).shape == q.shape
        n += 1
    assert n == 64
    first = next(replay_calls(load_trace("forge", "t2i_basic")))[3]
    assert torch.equal(first["cond_mark"], torch.tensor([1.0, 0.0])) and first["cond_indices"] == [1]
