"""Which storage profile a Save uses: the one asked for, else the Settings default; a default that keeps each
layer's input gives way to exact for a caller without projections. On a DiT model too: a Flux or Chroma block's input
is projected again with its own modules (tests/test_flux_input.py)."""

from __future__ import annotations

import pytest
import torch

from lib_refdrop import run as generation
from lib_refdrop.params import build
from lib_refdrop.reference.profiles import DEFAULT_PROFILE
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.run import RefDropRun


def _run(tmp_path, profile="", default=""):
    return RefDropRun(build({"enabled": True, "mode": "Save", "profile": profile}), ReferenceStore(tmp_path), default)


def test_a_save_uses_the_settings_default(tmp_path):
    assert _run(tmp_path, default="input-int8").save_profile() == "input-int8"
    assert _run(tmp_path).save_profile() == DEFAULT_PROFILE


@pytest.mark.parametrize("family", ["flux", "chroma"])
def test_an_input_keeping_profile_is_no_problem_on_a_dit_model(tmp_path, family):
    for run in (_run(tmp_path, default="input-int8"), _run(tmp_path, profile="lean")):
        assert generation.dit_unsupported(run.settings, run.save_profile(), family) is None


def test_a_caller_without_projections_saves_the_default_without_the_input(tmp_path):
    run = _run(tmp_path, default="input-int8")
    assert run.save_profile(can_project=False) == "exact"
    assert _run(tmp_path, default="balanced").save_profile(can_project=False) == "balanced"
    assert _run(tmp_path, profile="input-int8").save_profile(can_project=False) == "input-int8"


def test_a_save_writes_only_offered_profiles_and_a_read_only_format_stays_readable(tmp_path):
    """A profile that is no longer offered (a candidate a user could type into the panel) is refused for a Save by
    name, while a reference saved with it before still gives the image it gave."""
    from benchmarks.candidates import offering
    from lib_refdrop.errors import RefDropError
    from lib_refdrop.reference.profiles import PROFILES, READ_ONLY
    from tests.support.hostsim import AttnHost, make_unet
    from tests.support.refdrop_harness import save, use

    assert READ_ONLY and not set(READ_ONLY) & set(PROFILES)
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    args = {"steps": 4, "seed": 1}
    with pytest.raises(RefDropError, match="'int8-zstd' is no longer offered .*choose one of lean"):
        save(host, store, "new", profile="int8-zstd", **args)
    assert not store.exists("new")
    with offering([READ_ONLY["int8-zstd"]]):  # as an earlier version wrote it
        save(host, store, "old", profile="int8-zstd", **args)
        before = use(host, store, "old", 0.5, **{**args, "seed": 2})
    assert "int8-zstd" not in PROFILES
    assert torch.equal(use(host, store, "old", 0.5, **{**args, "seed": 2}), before)
