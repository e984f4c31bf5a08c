"""The storage codecs (fp8 and int8 per channel, low-rank factors, zstd files): round trips and error bounds, and
stored data that does not fit the manifest (wrong or mismatched ranks, NaN, half a row, a zstd bomb, wrong sizes)
refused by name before Use touches it. References written the old way (no file encoding, int8 as before) still load.
"""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import safetensors.torch
import torch

from lib_refdrop.errors import RefDropError
from lib_refdrop.reference import compression, lowrank, quantize
from lib_refdrop.reference.address import entry_name
from lib_refdrop.reference.manifest import Recording, seal_manifest
from lib_refdrop.reference.profiles import PROFILES, RANK, READ_ONLY, Profile, get_profile
from lib_refdrop.reference.ramcache import RamCache
from lib_refdrop.reference.reader import ReferenceReader
from lib_refdrop.reference.sigmas import Slot
from lib_refdrop.reference.store import MANIFEST, OpenReference, ReferenceStore
from lib_refdrop.reference.writer import ReferenceWriter

LAYERS = {"input1.0": (2, 8, 48), "middle0.0": (2, 16, 12)}  # heads, dim_head, tokens
CHUNKS = ("uncond0", "cond0")
SIGMAS = (14.6, 3.1)


def rows_of(seed: int) -> dict[str, torch.Tensor]:
    """K/V rows with the structure real features have: a few strong directions, channels of unequal size."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for lid, (heads, dim, tokens) in LAYERS.items():
        width = heads * dim
        for chunk in CHUNKS:
            for t in ("k", "v"):
                strong = torch.randn(tokens, 2, generator=g) @ torch.randn(2, width, generator=g)
                out[entry_name(lid, chunk, t)] = strong * 3 + 0.05 * torch.randn(tokens, width, generator=g)
    return out


def write_reference(store: ReferenceStore, name: str, profile: Profile) -> dict[int, dict[str, torch.Tensor]]:
    """A reference written by the real writer from ``profile.encode_row`` of synthetic rows; returns the rows."""
    writer = ReferenceWriter(store, name, overwrite=True, file_encoding=profile.file_encoding)
    written = {}
    for index, sigma in enumerate(SIGMAS):
        written[index] = rows = rows_of(index)
        stored = {}
        for key, row in rows.items():
            lid, chunk, tensor = key.split("/")
            stored.update(profile.encode_row(lid, chunk, tensor, row))
        writer.put_slot(Slot(index, sigma, 0), 0, stored, lambda: None)
    layers = {lid: {"n_heads": h, "dim_head": d, "tokens": n} for lid, (h, d, n) in LAYERS.items()}
    writer.finish("sd15", {"seed": 1}, Recording(layers, list(CHUNKS), "float32", profile.name,
                                                 [Slot(i, s, 0) for i, s in enumerate(SIGMAS)]))
    assert writer.wait(30) and writer.status.state == "saved", writer.status.message
    return written


def read_slot(store: ReferenceStore, name: str, index: int = 0) -> dict[str, torch.Tensor]:
    """Slot ``index`` read from disk and decoded as a Use decodes it, on the CPU (a cache of its own: the shared one
    holds equal references of other tests)."""
    reader = ReferenceReader(store.open(name), cache=RamCache())
    try:
        return reader.decoded_rows(reader.stored_tensors(index), torch.float32)
    finally:
        reader.close()


def first_entry(store, name):
    manifest = json.loads((store.path(name) / MANIFEST).read_text())
    return manifest, manifest["slots"][0]["files"][0]


def forge_first_file(store, name: str, data: bytes, **entry_fields) -> str:
    """Replace the first slot file with ``data`` and re-seal the manifest (size and checksum match)."""
    manifest, entry = first_entry(store, name)
    (store.path(name) / entry["file"]).write_bytes(data)
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), **entry_fields)
    (store.path(name) / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    return entry["file"]


def first_file_tensors(store, name) -> dict[str, torch.Tensor]:
    _, entry = first_entry(store, name)
    data = (store.path(name) / entry["file"]).read_bytes()
    if entry.get("encoding") == "zstd":
        data = compression.decompress_bounded(data, entry["raw_bytes"], "test")
    return safetensors.torch.load(data)


@pytest.fixture
def store(tmp_path):
    return ReferenceStore(tmp_path / "store")


# -- codecs alone -----------------------------------------------------------------------------------------------

def test_fp8_error_is_within_half_a_step_of_e4m3():
    rows = torch.randn(300, 64) * torch.logspace(-3, 2, 64)
    codes, scale = quantize.encode(rows, "fp8")
    assert codes.dtype == torch.float8_e4m3fn and scale.shape == (64,)
    error = (quantize.decode(codes, scale) - rows).abs()
    # 3 mantissa bits: half a step is 1/16 of a normal value; below 2^-6 (subnormals) the step is 2^-9 of the scale
    assert (error <= rows.abs() / 16 + scale * 2**-10 + 1e-12).all()
    assert torch.isfinite(quantize.decode(codes, scale)).all()


def test_int8_codes_are_those_of_the_format_that_balanced_references_were_written_with():
    rows = torch.randn(40, 16) * 5
    scale = rows.abs().amax(dim=0).float().clamp_min(1e-12) / 127.0  # the formula of the first int8 profiles
    codes = (rows.float() / scale).round_().clamp_(-127, 127).to(torch.int8)
    stored = PROFILES["balanced"].encode_row("input1.0", "cond0", "k", rows)
    assert torch.equal(stored["input1.0/cond0/k"], codes) and torch.equal(stored["input1.0/cond0/k.scale"], scale)


def test_low_rank_finds_the_rank_of_a_low_rank_row_and_rebuilds_it():
    row = rows_of(0)["input1.0/cond0/k"]
    u, w = lowrank.factor(row, 0.99, cap=16)
    assert u.shape == (48, 2) and w.shape == (2, 16)  # two strong directions hold over 99 % of the energy
    assert (lowrank.expand(u, w) - row).norm() / row.norm() < 0.05


def test_low_rank_stops_at_the_cap_and_keeps_the_most_energy_it_can():
    row = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    u, w = lowrank.factor(row, 0.99, cap=6)
    assert u.shape == (64, 6)
    best = torch.linalg.svdvals(row)[:6].pow(2).sum() / row.pow(2).sum()
    kept = 1 - (lowrank.expand(u, w) - row).pow(2).sum() / row.pow(2).sum()
    assert kept > 0.97 * best  # the randomized range finder is within 3 % of the optimal rank-6 energy


def test_low_rank_leaves_the_global_random_generator_alone():
    """A Save must not change the noise an ancestral sampler draws next."""
    row = torch.randn(32, 16)
    state = torch.get_rng_state()
    lowrank.factor(row, 0.9, cap=8)
    assert torch.equal(torch.get_rng_state(), state)


def test_rank_budget_bounds_the_bytes_of_a_row():
    profile = Profile("t", rank_budget=0.25)
    assert profile.max_rank(4096, 640) == int(0.25 * 4096 * 640 / (4096 + 640))
    assert profile.row_bytes_bound(4096, 640) <= 0.25 * 4096 * 640 * 2
    assert profile.stored_forms(640, 4096, torch.float16) == {"u": (torch.float16, (4096, RANK)),
                                                              "w": (torch.float16, (RANK, 640))}


@pytest.mark.parametrize("profile", [*PROFILES.values(), *READ_ONLY.values()], ids=lambda p: p.name)
def test_every_profile_decodes_what_it_encodes(profile):
    row = rows_of(3)["input1.0/cond0/v"]
    stored = profile.encode_row("input1.0", "cond0", "v", row)
    for suffix, (dtype, shape) in profile.stored_forms(16, 48, torch.float32).items():
        tensor = stored[f"input1.0/cond0/v{'.' + suffix if suffix else ''}"]
        assert tensor.dtype == dtype and all(s in (d, RANK) for d, s in zip(tensor.shape, shape, strict=True))
    decoded = profile.decode_slot(stored)["input1.0/cond0/v"]
    error = ((decoded - row).norm() / row.norm()).item()
    assert error == 0 if profile.name == "exact" else error < 0.05, error


def test_chunk_policy():
    cond, plain, every = get_profile("cond-only"), get_profile("cond-only-plain"), get_profile("exact")
    assert [cond.keeps_chunk(c) for c in ("uncond0", "cond0", "cond1")] == [False, True, True]
    assert all(every.keeps_chunk(c) and every.guides_chunk(c) for c in ("uncond0", "cond0"))
    assert cond.guides_chunk("uncond0") and not plain.guides_chunk("uncond0") and plain.guides_chunk("cond0")


def test_a_profile_with_an_unknown_option_is_refused():
    for bad in ({"storage": "int4"}, {"file_encoding": "gzip"}, {"chunks": "none"}, {"rank_budget": 1.5}):
        with pytest.raises(ValueError):
            Profile("bad", **bad)


# -- whole references -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["int8-lowrank-half-zstd", "fp8", "zstd", "lowrank-quarter"])
def test_a_reference_round_trips_through_the_store(store, name):
    profile = get_profile(name)
    written = write_reference(store, "r", profile)
    manifest = store.manifest("r")
    entry = manifest["slots"][0]["files"][0]
    assert entry["file"].endswith(".safetensors.zst") == (profile.file_encoding == "zstd")
    assert (entry.get("raw_bytes", 0) > entry["bytes"]) == (profile.file_encoding == "zstd")
    for index, rows in written.items():
        decoded = read_slot(store, "r", index)
        assert set(decoded) == set(rows)
        limit = 0 if name == "zstd" else 0.05  # zstd alone is lossless
        for key, row in rows.items():
            assert ((decoded[key] - row).norm() / row.norm()).item() <= limit, key


def test_a_reference_written_the_old_way_still_loads(store):
    """Format 1 as the first releases wrote it: plain ``.safetensors`` entries with no encoding fields, rows as
    computed (exact) or int8 codes with ``.scale`` (balanced, compact), built here without the current encoder."""
    layers = {lid: {"n_heads": h, "dim_head": d, "tokens": n} for lid, (h, d, n) in LAYERS.items()}
    for profile in ("exact", "balanced", "compact"):
        rows = rows_of(7)
        if profile == "exact":
            stored = rows
        else:
            stored = {}
            for key, row in rows.items():
                scale = row.abs().amax(dim=0).float().clamp_min(1e-12) / 127.0
                stored[key] = (row.float() / scale).round_().clamp_(-127, 127).to(torch.int8)
                stored[f"{key}.scale"] = scale
        data = safetensors.torch.save(stored)
        folder = store.root / profile
        folder.mkdir(parents=True)
        (folder / "slot_0000_0.safetensors").write_bytes(data)
        manifest = {
            "format_version": 1, "name": profile, "family": "sd15", "generation": {"seed": 1}, "layers": layers,
            "chunks": list(CHUNKS), "dtype": "float32", "profile": profile, "bytes": len(data),
            "created": "2026-01-01T00:00:00+00:00",
            "slots": [{"index": 0, "sigma": 14.6, "occurrence": 0, "files": [
                {"file": "slot_0000_0.safetensors", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}],
        }
        (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
        decoded = read_slot(store, profile)
        for key, row in rows.items():
            expected = row if profile == "exact" else stored[key].float() * stored[f"{key}.scale"]
            assert torch.equal(decoded[key], expected), (profile, key)


# -- hostile stored data ----------------------------------------------------------------------------------------

U_KEY, W_KEY = "input1.0/cond0/k.u", "input1.0/cond0/k.w"


def _tampered_low_rank(tensors: dict, case: str) -> dict:
    out = dict(tensors)
    rank = out[U_KEY].shape[1]
    if case == "ranks_differ":
        out[U_KEY] = torch.randn(48, rank + 1).to(torch.int8)
        out[f"{U_KEY}.scale"] = torch.ones(rank + 1)
    elif case == "rank_above_bound":
        out[U_KEY] = torch.randn(48, 40).to(torch.int8)
        out[f"{U_KEY}.scale"] = torch.ones(40)
        out[W_KEY] = torch.randn(40, 16).to(torch.int8)
    elif case == "rank_zero":
        out[U_KEY], out[f"{U_KEY}.scale"] = torch.zeros(48, 0, dtype=torch.int8), torch.ones(0)
        out[W_KEY] = torch.zeros(0, 16, dtype=torch.int8)
    elif case == "tokens":
        out[U_KEY] = torch.zeros(47, rank, dtype=torch.int8)
    elif case == "factor_missing":
        del out[W_KEY]
    elif case == "scale_missing":
        del out[f"{W_KEY}.scale"]
    elif case == "nan_scale":
        out[f"{W_KEY}.scale"] = out[f"{W_KEY}.scale"].clone().index_fill_(0, torch.tensor([1]), float("nan"))
    elif case == "float_factor":
        out[W_KEY] = out[W_KEY].float()
    return out


LOW_RANK_CASES = {
    "ranks_differ": "different ranks", "rank_above_bound": "rank 40; the profile stores ranks 1 to",
    "rank_zero": "rank 0", "tokens": r"needs int8 \[48, rank\]", "factor_missing": "only part of",
    "scale_missing": "only part of", "nan_scale": "non-finite", "float_factor": "needs int8",
}


@pytest.mark.parametrize("case", list(LOW_RANK_CASES))
def test_low_rank_factors_that_do_not_fit_the_manifest_are_refused_by_name(store, case):
    write_reference(store, "r", get_profile("int8-lowrank-half-zstd"))
    tampered = _tampered_low_rank(first_file_tensors(store, "r"), case)
    data = safetensors.torch.save(tampered)
    file = forge_first_file(store, "r", compression.compress(data), raw_bytes=len(data))
    with pytest.raises(RefDropError, match=rf"reference 'r' is corrupt: {file} .*{LOW_RANK_CASES[case]}"):
        read_slot(store, "r")


def test_nan_in_fp8_codes_is_refused(store):
    write_reference(store, "r", get_profile("fp8"))
    tensors = first_file_tensors(store, "r")
    key = "input1.0/cond0/k"
    tensors[key] = tensors[key].float().index_fill_(0, torch.tensor([3]), float("nan")).to(torch.float8_e4m3fn)
    forge_first_file(store, "r", safetensors.torch.save(tensors))
    with pytest.raises(RefDropError, match=r"corrupt: .*non-finite values .*input1.0/cond0/k"):
        read_slot(store, "r")


def test_a_zstd_bomb_is_cut_off_at_the_size_the_manifest_records(store):
    write_reference(store, "r", get_profile("zstd"))
    _, entry = first_entry(store, "r")
    bomb = compression.compress(b"\0" * 200_000_000)  # 200 MB of zeros in a few kB
    assert len(bomb) < 100_000
    file = forge_first_file(store, "r", bomb)  # raw_bytes stays what the real file held
    with pytest.raises(RefDropError, match=rf"corrupt: {file} decompresses to more than {entry['raw_bytes']} bytes"):
        read_slot(store, "r")


def test_a_file_that_claims_more_than_the_layers_can_hold_is_refused_before_decompressing(store):
    write_reference(store, "r", get_profile("zstd"))
    data = compression.compress(b"\0" * 1000)
    file = forge_first_file(store, "r", data, raw_bytes=10**12)
    with pytest.raises(RefDropError, match=rf"corrupt: {file} claims to hold 1000000000000 bytes, more than"):
        read_slot(store, "r")


@pytest.mark.parametrize("case", ["short", "not_zstd", "truncated"])
def test_zstd_files_of_the_wrong_size_or_not_zstd_are_refused(store, case):
    write_reference(store, "r", get_profile("int8-zstd"))
    _, entry = first_entry(store, "r")
    data = (store.path("r") / entry["file"]).read_bytes()
    raw = compression.decompress_bounded(data, entry["raw_bytes"], "test")
    forged = {"short": compression.compress(raw[:-10]), "not_zstd": raw, "truncated": data[:-20]}[case]
    why = {"short": f"decompresses to {len(raw) - 10} bytes", "not_zstd": "is not valid zstd data",
           "truncated": "decompresses to"}[case]
    file = forge_first_file(store, "r", forged)
    with pytest.raises(RefDropError, match=rf"corrupt: {file} {why}"):
        read_slot(store, "r")


@pytest.mark.parametrize("fields", [{"encoding": "gzip"}, {"raw_bytes": None}, {"raw_bytes": -1},
                                    {"encoding": None}])
def test_a_file_entry_with_an_unknown_or_incomplete_encoding_breaks_the_manifest(store, fields):
    write_reference(store, "r", get_profile("zstd"))
    manifest, entry = first_entry(store, "r")
    for key, value in fields.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    (store.path("r") / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    with pytest.raises(RefDropError, match="reference 'r' has a broken manifest"):
        store.manifest("r")


def test_a_zstd_reference_without_zstandard_names_the_fix(store, monkeypatch):
    write_reference(store, "r", get_profile("zstd"))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now raises ImportError
    with pytest.raises(RefDropError, match=r"reference 'r' \(zstd\) needs the Python package zstandard.*pip install "
                                           r"zstandard==0\.25\.0"):
        read_slot(store, "r")
    assert not compression.available()


def test_a_zstd_save_without_zstandard_fails_with_the_fix_in_its_status(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)
    writer = ReferenceWriter(store, "r", overwrite=False, file_encoding="zstd")
    writer.put_slot(Slot(0, 14.6, 0), 0, {"input1.0/cond0/k": torch.zeros(48, 16)}, lambda: None)
    writer.finish("sd15", {}, Recording({"input1.0": {"n_heads": 2, "dim_head": 8, "tokens": 48}}, ["cond0"],
                                        "float32", "zstd", [Slot(0, 14.6, 0)]))
    assert writer.wait(30) and writer.status.state == "failed"
    assert "needs the Python package zstandard" in writer.status.message and "pip install" in writer.status.message
    assert not store.exists("r")


# -- decompression bounded by the current model, not by what the manifest claims (issue 18, item 2) -----------------

MODEL_WIDTHS = {lid: heads * dim for lid, (heads, dim, _) in LAYERS.items()}  # the current model's layers


def add_layer(store, name: str, lid: str, tokens: int, heads: int = 2, dim: int = 8) -> None:
    """A layer no slot holds, added to the manifest (re-sealed): it raises what the manifest's layers can hold."""
    manifest, _ = first_entry(store, name)
    manifest["layers"][lid] = {"n_heads": heads, "dim_head": dim, "tokens": tokens}
    (store.path(name) / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))


@pytest.mark.parametrize("lid, heads, why", [
    ("input99.0", 2, "has layer input99.0, which the current model does not have"),
    ("input1.0", 4, "layer input1.0 is 32 wide, the current model's is 16"),
])
def test_layers_the_current_model_lacks_are_refused_before_any_slot_is_read(store, monkeypatch, lid, heads, why):
    write_reference(store, "r", get_profile("zstd"))
    add_layer(store, "r", lid, tokens=200_000, heads=heads)
    data = compression.compress(b"\0" * 1000)
    forge_first_file(store, "r", data, raw_bytes=1000)
    reads = []
    real_read = OpenReference.read
    monkeypatch.setattr(OpenReference, "read", lambda self, entry: reads.append(entry) or real_read(self, entry))
    opened = store.open("r")
    with pytest.raises(RefDropError, match=rf"reference 'r' {why}"):
        ReferenceReader(opened, cache=RamCache(), layer_widths=MODEL_WIDTHS.get)
    assert reads == []
    assert opened.closed  # a refused Use keeps no file open


def test_the_model_check_runs_in_a_use_through_the_library(store):
    from lib_refdrop import standalone
    from tests.support.faultkit import percent_to_sigma
    from tests.support.hostsim import host_attention

    write_reference(store, "r", get_profile("zstd"))
    add_layer(store, "r", "input99.0", tokens=200_000)
    ctx = standalone.context("sd15", host_attention, percent_to_sigma, layer_widths=MODEL_WIDTHS.get)
    with pytest.raises(RefDropError, match=r"reference 'r' has layer input99.0, which the current model does not"):
        standalone.use_patch(store, "r", 0.5, ctx)


def test_a_layer_larger_than_any_generation_breaks_the_manifest(store):
    write_reference(store, "r", get_profile("zstd"))
    add_layer(store, "r", "input99.0", tokens=10**12)
    forge_first_file(store, "r", compression.compress(b"\0" * 1000), raw_bytes=2**40)
    with pytest.raises(RefDropError, match=r"reference 'r' has a broken manifest \(layer input99.0 has "
                                           r"1000000000000 tokens, more than .* 4096×4096 pixels"):
        read_slot(store, "r")


def test_a_huge_claimed_size_is_never_allocated_up_front(store):
    """Without the model's layers the bound is the manifest's (a layer as wide as no model, at the most tokens a
    generation has): decompression still streams, so a 1 TB claim costs what the file really holds."""
    write_reference(store, "r", get_profile("zstd"))
    add_layer(store, "r", "input99.0", tokens=4096 * 4096 // 64, heads=1024, dim=128)
    file = forge_first_file(store, "r", compression.compress(b"\0" * 1000), raw_bytes=2**40)
    with pytest.raises(RefDropError, match=rf"reference 'r' is corrupt: {file} decompresses to 1000 bytes; its "
                                           rf"manifest entry records {2**40}"):
        read_slot(store, "r")
