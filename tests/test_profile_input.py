"""A profile that keeps each attn1 layer's input (``keep="input"``): Use projects it with the layer's own to_k/to_v.

The input is half of K and V; what Use computes from it equals what the Save's layers computed up to float
rounding (the projections run on one row instead of the batch), on the SD1.5 and SDXL architectures.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading

import pytest
import safetensors.torch
import torch

from lib_refdrop import standalone
from lib_refdrop.attn.sources import LinearKV
from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.manifest import seal_manifest, sha256_bytes
from lib_refdrop.reference.profiles import EXACT, PROFILES
from lib_refdrop.reference.store import MANIFEST, ReferenceStore
from tests.support.hostsim import AttnHost, host_attention, make_unet
from tests.support.refdrop_harness import SCHEDULE, context, plain, sample_with, save, use

BASE = {"steps": 6, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}
INPUT = dataclasses.replace(EXACT, name="test-input", keep="input")
INT8_INPUT = dataclasses.replace(EXACT, name="test-input-int8", keep="input", storage="int8")
ZSTD_INPUT = dataclasses.replace(INT8_INPUT, name="test-input-int8-zstd", file_encoding="zstd")


@pytest.fixture(autouse=True)
def input_profile(monkeypatch):
    for profile in (INPUT, INT8_INPUT, ZSTD_INPUT):
        monkeypatch.setitem(PROFILES, profile.name, profile)


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def host(request):
    return AttnHost(make_unet(request.param, "tiny", seed=0)), request.param


def _slot_tensors(store, name):
    folder = store.path(name)
    out = {}
    for file in sorted(folder.glob("slot_*.safetensors")):
        out.update(safetensors.torch.load_file(str(file)))
    return out


def test_the_input_profile_stores_each_layers_input_at_half_the_bytes(host, tmp_path):
    host, arch = host
    store = ReferenceStore(tmp_path)
    save(host, store, "kv", family=arch, profile="exact", **BASE)
    save(host, store, "x", family=arch, profile=INPUT.name, **BASE)
    kv, x = _slot_tensors(store, "kv"), _slot_tensors(store, "x")
    assert {key.rsplit("/", 1)[1] for key in x} == {"x"}
    assert {key.rsplit("/", 1)[0] for key in x} == {key.rsplit("/", 1)[0] for key in kv}
    kv_bytes = sum(t.numel() * t.element_size() for t in kv.values())
    x_bytes = sum(t.numel() * t.element_size() for t in x.values())
    assert x_bytes * 2 == kv_bytes  # self-attention: the input is as wide as K (and as V)


@pytest.mark.parametrize("rfg", [0.3, 1.0])
def test_use_at_the_saves_settings_reproduces_the_save_image(host, tmp_path, rfg):
    host, arch = host
    store = ReferenceStore(tmp_path)
    saved = save(host, store, "x", family=arch, profile=INPUT.name, **BASE)
    out = use(host, store, "x", rfg, family=arch, **BASE)
    assert (out - saved).abs().max().item() < 1e-4 * saved.abs().max().item()
    assert not torch.equal(plain(host, **{**BASE, "seed": 2}), saved)  # the seeds do give other images


def test_use_at_another_seed_equals_a_use_of_the_stored_k_and_v(host, tmp_path):
    host, arch = host
    store = ReferenceStore(tmp_path)
    save(host, store, "kv", family=arch, profile="exact", **BASE)
    save(host, store, "x", family=arch, profile=INPUT.name, **BASE)
    other = {**BASE, "seed": 3}
    from_kv = use(host, store, "kv", 0.5, family=arch, **other)
    from_x = use(host, store, "x", 0.5, family=arch, **other)
    effect = (from_kv - plain(host, **other)).norm().item()
    assert effect > 0
    assert (from_x - from_kv).norm().item() < 1e-4 * effect


def test_a_caller_without_the_models_projections_is_told_so(tmp_path):
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "x", profile=INPUT.name, **BASE)
    with pytest.raises(RefDropError, match="keeps each layer's input"):
        standalone.use_patch(store, "x", 0.3, context("sd15"))


def test_use_projects_with_the_current_models_layers(tmp_path):
    """A fine-tune of the same family projects the stored input with its own weights: the rows it attends to are
    its own model's K and V of the reference's hidden states (with stored K and V they are the Save model's)."""
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "x", profile=INPUT.name, **BASE)
    save(host, store, "kv", profile="exact", **BASE)
    other = {**BASE, "seed": 3}
    to_k, _ = host.projections("middle0.0")
    with torch.no_grad():
        to_k.weight.mul_(1.5)
    try:
        from_x, from_kv = use(host, store, "x", 0.5, **other), use(host, store, "kv", 0.5, **other)
    finally:
        with torch.no_grad():
            to_k.weight.div_(1.5)
    assert (from_x - from_kv).abs().max().item() > 1e-3


def test_an_input_row_of_the_wrong_width_is_refused_by_name(tmp_path):
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "x", profile=INPUT.name, **BASE)
    folder = store.path("x")
    manifest = json.loads((folder / MANIFEST).read_text())
    entry = manifest["slots"][0]["files"][0]
    tensors = safetensors.torch.load_file(str(folder / entry["file"]))
    key = next(iter(tensors))
    tensors[key] = tensors[key][:, :-1].contiguous()
    data = safetensors.torch.save(tensors)
    (folder / entry["file"]).write_bytes(data)
    entry.update(bytes=len(data), sha256=sha256_bytes(data))  # re-sealed, as a forger would
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    with pytest.raises(RefDropError, match=f"corrupt: {entry['file']} holds {key}"):
        use(host, store, "x", 0.5, **BASE)


def test_a_profile_with_zstd_files_saves_them_compressed_and_reads_them_back(tmp_path):
    pytest.importorskip("zstandard")
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "raw", profile=INT8_INPUT.name, **BASE)
    save(host, store, "z", profile=ZSTD_INPUT.name, **BASE)
    files = [entry for slot in store.manifest("z")["slots"] for entry in slot["files"]]
    assert all(entry.get("encoding") == "zstd" for entry in files)
    assert store.manifest("z")["bytes"] < store.manifest("raw")["bytes"]
    other = {**BASE, "seed": 3}
    assert torch.equal(use(host, store, "z", 0.5, **other), use(host, store, "raw", 0.5, **other))  # lossless


def test_a_zstd_profile_without_zstandard_saves_the_same_reference_uncompressed_and_says_so(tmp_path, monkeypatch):
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "raw", profile=INT8_INPUT.name, **BASE)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with standalone.start_save(store, "z", context("sd15", host=host), profile=ZSTD_INPUT.name) as session:
        sample_with(host, session.patch, session.input_patch, **BASE)
        status = session.finish({"seed": 1})
    assert "not compressed: pip install zstandard" in status.message
    assert all("encoding" not in entry for slot in store.manifest("z")["slots"] for entry in slot["files"])
    other = {**BASE, "seed": 3}
    assert torch.equal(use(host, store, "z", 0.5, **other), use(host, store, "raw", 0.5, **other))


def test_a_save_whose_input_patch_never_ran_says_so(tmp_path):
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    with standalone.start_save(store, "x", context("sd15", host=host), profile=INPUT.name) as session:
        sample_with(host, session.patch, **BASE)  # the attn1 patch only
        with pytest.raises(RefDropError, match="input_patch must run as an attn1_patch"):
            session.finish({"seed": 1})
    assert store.names() == []


def test_the_loader_thread_projects_the_stored_input_not_the_sampler(tmp_path):
    """Use reads K and V like any profile: each saved slot is projected as the loader brings it to the device."""
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "x", profile=INPUT.name, **BASE)
    threads = []

    def projections(lid):
        to_k, to_v = host.projections(lid)

        def watched_k(x):
            threads.append(threading.current_thread().name)
            return to_k(x)

        return LinearKV(watched_k, to_v)

    ctx = standalone.context("sd15", host_attention, SCHEDULE.percent_to_sigma, seed=3, projections=projections)
    with standalone.start_use(store, reference="x", rfg=0.5) as session:
        out = sample_with(host, session.for_pass(ctx).attn1, **{**BASE, "seed": 3})
    assert threads and all(name.startswith("refdrop-loader") for name in threads)
    assert torch.equal(out, use(host, store, "x", 0.5, **{**BASE, "seed": 3}))
