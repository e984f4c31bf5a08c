"""Replay what the real hosts passed to an attn1 replace patch (shared/host-traces) against the engine.

Every recorded call must find its saved entry: the same case replayed reproduces itself exactly, and a reference
saved from ``t2i_basic`` applies to every call of every other SD1.5 case (batch sizes, CFG 1, AND-prompts, split
calls, Heun, Karras, hires, img2img, token merging, another resolution).
"""

from __future__ import annotations

import pytest
import torch

from lib_refdrop import standalone
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import load_trace, replay_calls
from tests.support.refdrop_harness import context

HOSTS = ("forge", "reforge")
SD15_CASES = ("t2i_basic", "t2i_batch2", "t2i_batch3_cfg", "t2i_cfg1", "t2i_and", "t2i_split", "t2i_heun",
              "t2i_dpmpp2m_karras", "t2i_hires", "t2i_hires_hrcfg7", "i2i", "t2i_tome", "t2i_res")



def replay(patch_for, trace, family="sd15", seed=0):
    """Replay like the host: a new patch ``patch_for(ctx)`` for every sampling pass (recorded ``pass`` > 1 = hires;
    ``patch_for`` None or returning None: plain)."""
    patches, outs = {}, []
    for call, (q, k, v, eo) in zip(trace["calls"], replay_calls(trace, seed), strict=True):
        if call["pass"] not in patches:
            ctx = context(family, is_hr_pass=call["pass"] > 1)
            patches[call["pass"]] = (patch_for(ctx) if patch_for else None) or ctx.attention
        outs.append(patches[call["pass"]](q, k, v, eo))
    return outs


def save_trace(store, name, trace, family):
    """Save from the first pass (a reference is the first pass: the later ones replay plain)."""
    with standalone.start_save(store, name, context(family)) as save:
        outs = replay(lambda ctx: None if ctx.is_hr_pass else save.patch, trace, family)
        save.finish({})
    return outs


def use_passes(store, name, rfg, **settings):
    """The patch of each pass of a Use."""
    return lambda ctx: standalone.use_patch(store, name, rfg, ctx, **settings)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ReferenceStore(tmp_path_factory.mktemp("traces"))


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("case", [*SD15_CASES, "sdxl_t2i_basic"])
def test_each_case_replays_itself_exactly(store, host, case):
    trace = load_trace(host, case)
    family = "sdxl" if case.startswith("sdxl") else "sd15"
    name = f"{host}-{case}"
    plain = save_trace(store, name, trace, family)
    manifest = store.manifest(name)
    sigmas = {round(float(c["sigmas"]["values"][0]), 4) for c in trace["calls"] if c["pass"] == 1}
    assert {round(s["sigma"], 4) for s in manifest["slots"]} == sigmas  # only the first pass is the reference
    again = replay(use_passes(store, name, 0.5), trace, family)  # RFG is off in a hires pass by default
    for call, a, b in zip(trace["calls"], again, plain, strict=True):
        # the reference is the first image of the batch: its rows reproduce, the other images' rows changed
        chunks = len(call["cond_or_uncond"])
        first_rows = list(range(0, call["q"][0], call["q"][0] // chunks))
        assert torch.equal(a[first_rows], b[first_rows])


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("case", SD15_CASES)
def test_every_call_of_every_case_is_matched(store, host, case):
    if not store.exists(f"{host}-basic-ref"):
        save_trace(store, f"{host}-basic-ref", load_trace(host, "t2i_basic"), "sd15")
    trace = load_trace(host, case)
    plain = replay(None, trace, seed=1)  # other features than the reference's (seed 0)
    # apply_hires: the hires pass (another resolution, cond-only at the default hires CFG) gets the reference too
    used = replay(use_passes(store, f"{host}-basic-ref", 0.5, apply_hires=True), trace, seed=1)
    unmatched = [i for i, (a, b) in enumerate(zip(used, plain, strict=True)) if torch.equal(a, b)]
    assert not unmatched, f"{len(unmatched)} of {len(plain)} calls got no reference"
    assert all(a.shape == b.shape for a, b in zip(used, plain, strict=True))
