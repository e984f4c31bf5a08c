"""A Save whose steps mix CFG layouts: the host evaluates the cond chunk alone at some sigmas and cond + uncond at
others (Forge Classic's first step, "Ignore negative prompt during early steps", NGMS ``s_min_uncond``).

Built from the recorded split-CFG trace of a real host, with the uncond calls of some sigmas left out: each slot's
manifest entry says which chunks it holds, and a Use at any layout finds a chunk's rows in the slots that hold it.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.candidates import CANDIDATES, offering
from lib_refdrop import standalone
from lib_refdrop.reference.reader import ReferenceReader
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import load_trace, traces_dir
from tests.support.refdrop_harness import context
from tests.test_traces import replay, use_passes

if traces_dir() is None:
    pytest.fail("shared/host-traces not found beside the repository", pytrace=False)

HOSTS = ("forge", "reforge")

@pytest.fixture(autouse=True)
def _read_only_formats_saved_as_before():
    """Some cases save with a format no longer offered (references written with it stay readable and checked)."""
    with offering(CANDIDATES.values()):
        yield



def sigmas_of(trace) -> list[float]:
    return sorted({c["sigmas"]["values"][0] for c in trace["calls"]}, reverse=True)


def without_uncond(trace, at) -> dict:
    """The split-CFG trace with the uncond calls at the sigmas ``at`` (their ordinals, highest sigma first) left out:
    the host evaluated the cond chunk alone there."""
    skipped = {sigmas_of(trace)[i] for i in at}
    calls = [c for c in trace["calls"] if not (c["cond_or_uncond"] == [1] and c["sigmas"]["values"][0] in skipped)]
    return {**trace, "calls": calls}


def save_from(store, name, trace, profile="exact"):
    with standalone.start_save(store, name, context("sd15"), profile=profile) as save:
        outs = replay(lambda ctx: save.patch, trace)
        save.finish({})
    return outs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ReferenceStore(tmp_path_factory.mktemp("mixed"))


LAYOUTS = {"first step cond only": (0,), "early steps cond only": (0, 1), "last step cond only": (3,)}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_slot_says_which_chunks_it_holds(store, host, layout):
    trace = without_uncond(load_trace(host, "t2i_split"), LAYOUTS[layout])
    name = f"{host}-{layout}-chunks".replace(" ", "-")
    save_from(store, name, trace)
    manifest = store.manifest(name)
    skipped = {sigmas_of(trace)[i] for i in LAYOUTS[layout]}
    assert sorted(manifest["chunks"]) == ["cond0", "uncond0"]
    for slot in manifest["slots"]:
        assert slot["chunks"] == (["cond0"] if slot["sigma"] in skipped else ["cond0", "uncond0"])


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("use_case", ["t2i_basic", "t2i_split", "t2i_heun", "t2i_dpmpp2m_karras"])
def test_a_mixed_save_guides_every_call_of_a_full_cfg_use(store, host, layout, use_case):
    name = f"{host}-{layout}-full".replace(" ", "-")
    if not store.exists(name):
        save_from(store, name, without_uncond(load_trace(host, "t2i_split"), LAYOUTS[layout]))
    trace = load_trace(host, use_case)
    plain = replay(None, trace, seed=1)
    used = replay(use_passes(store, name, 0.5), trace, seed=1)  # every uncond row too, at every sigma
    unmatched = [i for i, (a, b) in enumerate(zip(used, plain, strict=True)) if torch.equal(a, b)]
    assert not unmatched, f"{len(unmatched)} of {len(plain)} calls got no reference"


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("profile", ["exact", "stride2"])
def test_a_mixed_save_replays_its_own_layout(store, host, profile):
    """stride2 keeps sigmas 0 and 2: the uncond rows at sigma 1 are interpolated between two kept slots, one of
    which holds cond only."""
    trace = without_uncond(load_trace(host, "t2i_split"), (0,))
    name = f"{host}-own-{profile}"
    plain = save_from(store, name, trace, profile)
    again = replay(use_passes(store, name, 0.5), trace)
    if profile == "exact":  # the reference's own rows reproduce
        assert all(torch.equal(a, b) for a, b in zip(again, plain, strict=True))
    else:
        assert all(torch.isfinite(a).all() for a in again)


def test_a_chunk_missing_at_a_sigma_comes_from_the_slots_that_hold_it(store):
    trace = without_uncond(load_trace("forge", "t2i_split"), (0, 1))
    save_from(store, "rows-from-holders", trace)
    sigmas = sigmas_of(trace)
    reader = ReferenceReader(store.open("rows-from-holders"), prefetch_first=False)
    try:
        like = torch.empty(0)
        slot_of = {s["sigma"]: s for s in store.manifest("rows-from-holders")["slots"]}
        holder = reader.sigma_map.lookup(sigmas[2])
        assert slot_of[sigmas[2]]["index"] == holder.index
        stored = reader.tensor(holder, "input1.0/uncond0/k", like.device, like.dtype)
        for sigma in (sigmas[0], sigmas[1], 100.0):  # above the highest sigma that holds uncond: that one
            k, _ = reader.rows("input1.0", "uncond0", sigma, 0, like)
            assert torch.equal(k, stored)
        cond_k, _ = reader.rows("input1.0", "cond0", sigmas[0], 0, like)  # cond keeps its own slot
        assert not torch.equal(cond_k, stored)
    finally:
        reader.close()


@pytest.mark.parametrize("host", HOSTS)
def test_a_stride_that_keeps_only_cond_alone_sigmas_saves_a_cond_only_reference(store, host):
    """Forge Classic evaluates its first step cond alone; ``compact`` keeps every 5th sigma, so at 4 steps it keeps
    that step only. The Save must still be written (the reference holds cond0 alone, like one saved at CFG 1), and
    a full-CFG Use guides every call from it."""
    trace = without_uncond(load_trace(host, "t2i_split"), (0,))
    name = f"{host}-compact-cond-alone"
    save_from(store, name, trace, "compact")
    manifest = store.manifest(name)
    assert manifest["chunks"] == ["cond0"]
    assert [slot["chunks"] for slot in manifest["slots"]] == [["cond0"]]
    full = load_trace(host, "t2i_split")
    plain = replay(None, full, seed=1)
    used = replay(use_passes(store, name, 0.5), full, seed=1)
    assert all(not torch.equal(a, b) for a, b in zip(used, plain, strict=True))
