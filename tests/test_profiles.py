"""Storage profiles: round trip through a fresh process, error bounds, and the fidelity each profile promises."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lib_refdrop.reference.profiles import BALANCED, PROFILES
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import AttnHost, make_unet
from tests.support.refdrop_harness import plain, save, use

BASE = {"steps": 8, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}
REPO = Path(__file__).resolve().parents[1]
# What each profile promises at these settings (README "Storage profiles" has the measured values): latent PSNR of
# Use against the Save image at the Save's settings, and the share of the RFG effect kept at another seed.
CLAIMS = {
    "exact": {"latent_psnr_db": math.inf, "effect_kept": 1.0},
    "balanced": {"latent_psnr_db": 60.0, "effect_kept": 0.9},
    "compact": {"latent_psnr_db": 50.0, "effect_kept": 0.7},
}


@pytest.fixture(scope="module")
def host():
    return AttnHost(make_unet("sd15", "tiny", seed=0))


@pytest.fixture(scope="module")
def saved(host, tmp_path_factory):
    store = ReferenceStore(tmp_path_factory.mktemp("profiles"))
    images = {name: save(host, store, name, profile=name, **BASE) for name in PROFILES}
    return store, images


def psnr(out, target) -> float:
    mse = (out - target).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10((target.max() - target.min()).item() ** 2 / mse)


def test_int8_error_is_within_half_a_step_of_each_channel():
    rows = torch.randn(300, 64) * torch.logspace(-3, 2, 64)  # channels of very different magnitude
    decoded = BALANCED.decode_slot(BALANCED.encode_row("input1.0", "cond0", "k", rows))["input1.0/cond0/k"]
    step = rows.abs().amax(dim=0) / 127
    assert ((decoded - rows).abs() <= step * (0.5 + 1e-5)).all()


@pytest.mark.parametrize("name", list(PROFILES))
def test_each_profile_keeps_the_fidelity_it_promises(host, saved, name):
    store, images = saved
    claims = CLAIMS[name]
    assert psnr(use(host, store, name, 0.5, **BASE), images["exact"]) >= claims["latent_psnr_db"]
    other = {**BASE, "seed": 4}
    exact, base = use(host, store, "exact", 0.3, **other), plain(host, **other)
    kept = 1 - ((use(host, store, name, 0.3, **other) - exact).norm() / (exact - base).norm()).item()
    assert kept >= claims["effect_kept"], kept


def test_every_profile_has_a_promise():
    assert set(CLAIMS) == set(PROFILES)


def test_profiles_shrink_the_reference(saved):
    store, _ = saved
    size = {name: store.manifest(name)["bytes"] for name in PROFILES}
    # the test model computes in fp32, so int8 is a quarter of exact here (half of fp16)
    assert size["balanced"] < 0.3 * size["exact"]
    assert size["compact"] < 0.4 * size["balanced"]


def test_every_profile_round_trips_through_a_fresh_process(host, saved, tmp_path):
    """Write here, read in a new Python process: the references survive a restart and give the same image."""
    store, _ = saved
    here = {name: use(host, store, name, 0.6, **{**BASE, "seed": 3}) for name in PROFILES}
    out = tmp_path / "latents.safetensors"
    script = textwrap.dedent(f"""
        import safetensors.torch, torch
        torch.set_num_threads(1)
        from tests.support.hostsim import AttnHost, make_unet
        from tests.support.refdrop_harness import use
        from lib_refdrop.reference.store import ReferenceStore
        store = ReferenceStore({str(store.root)!r})
        host = AttnHost(make_unet("sd15", "tiny", seed=0))
        latents = {{name: use(host, store, name, 0.6, **{dict(BASE, seed=3)!r}) for name in store.names()}}
        safetensors.torch.save_file(latents, {str(out)!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=REPO)  # -c: the root on sys.path
    there = safetensors.torch.load_file(out)
    assert set(there) >= set(PROFILES)
    for name in PROFILES:
        assert torch.equal(there[name], here[name]), name
