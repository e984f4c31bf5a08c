"""A profile that leaves the uncond chunk out (``chunks="cond"``): what is stored, and what Use does with uncond
rows: attend to the cond reference (``uncond_use="cond"``) or stay plain (``"plain"``)."""

from __future__ import annotations

import dataclasses

import pytest
import safetensors.torch
import torch

from lib_refdrop import standalone
from lib_refdrop.reference.address import chunk_names
from lib_refdrop.reference.profiles import EXACT, PROFILES
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import AttnHost, host_attention, make_unet
from tests.support.refdrop_harness import context, sample_with, save, use

BASE = {"steps": 5, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}
COND_ONLY = {
    "test-cond-attend": dataclasses.replace(EXACT, name="test-cond-attend", chunks="cond", uncond_use="cond"),
    "test-cond-plain": dataclasses.replace(EXACT, name="test-cond-plain", chunks="cond", uncond_use="plain"),
}


@pytest.fixture(autouse=True)
def cond_only_profiles(monkeypatch):
    for name, profile in COND_ONLY.items():
        monkeypatch.setitem(PROFILES, name, profile)


@pytest.fixture(scope="module")
def host():
    return AttnHost(make_unet("sd15", "tiny", seed=0))


def _stored_chunks(store, name) -> set[str]:
    keys = set()
    for file in store.path(name).glob("slot_*.safetensors"):
        keys |= {key.split("/")[1] for key in safetensors.torch.load_file(str(file))}
    return keys


@pytest.mark.parametrize("name", list(COND_ONLY))
def test_the_uncond_chunk_is_not_stored(host, tmp_path, name):
    store = ReferenceStore(tmp_path)
    save(host, store, "full", profile="exact", **BASE)
    save(host, store, "cond", profile=name, **BASE)
    assert _stored_chunks(store, "full") == {"uncond0", "cond0"}
    assert _stored_chunks(store, "cond") == {"cond0"}
    assert store.manifest("cond")["chunks"] == ["cond0"]


def _use_calls(host, store, name, rfg, sample_args):
    """Every attn1 call of a Use: (chunks, what the host attention gives, what the Use patch gives)."""
    patch = standalone.use_patch(store, name, rfg, context("sd15", host=host))
    calls = []

    def watched(q, k, v, extra_options):
        out = patch(q, k, v, extra_options)
        calls.append((chunk_names(extra_options["cond_or_uncond"]), host_attention(q, k, v, extra_options), out))
        return out

    sample_with(host, watched, **sample_args)
    return calls


def test_plain_uncond_rows_keep_their_own_attention_bit_for_bit(host, tmp_path):
    store = ReferenceStore(tmp_path)
    save(host, store, "cond", profile="test-cond-plain", **BASE)
    calls = _use_calls(host, store, "cond", 0.6, {**BASE, "seed": 3})
    guided = 0
    for chunks, own, out in calls:
        rows = out.shape[0] // len(chunks)
        for i, chunk in enumerate(chunks):
            part = slice(i * rows, (i + 1) * rows)
            if chunk.startswith("uncond"):
                assert torch.equal(out[part], own[part])
            else:
                guided += not torch.equal(out[part], own[part])
    assert guided > 0  # the cond rows are guided


def test_attending_uncond_rows_are_guided_by_the_cond_reference(host, tmp_path):
    store = ReferenceStore(tmp_path)
    save(host, store, "cond", profile="test-cond-attend", **BASE)
    calls = _use_calls(host, store, "cond", 0.6, {**BASE, "seed": 3})
    uncond_changed = sum(not torch.equal(out[:out.shape[0] // len(chunks)], own[:own.shape[0] // len(chunks)])
                         for chunks, own, out in calls if chunks[0] == "uncond0")
    assert uncond_changed > 0


@pytest.mark.parametrize("name", list(COND_ONLY))
def test_c_zero_is_still_a_plain_generation(host, tmp_path, name):
    store = ReferenceStore(tmp_path)
    save(host, store, "cond", profile=name, **BASE)
    assert standalone.use_patch(store, "cond", 0.0, context("sd15", host=host)) is None
    assert not torch.equal(use(host, store, "cond", 0.5, **{**BASE, "seed": 2}), use(host, store, "cond", 0.0,
                                                                                       **{**BASE, "seed": 2}))
