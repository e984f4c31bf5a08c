"""Corruption: a truncated, bit-flipped or missing tensor file or manifest is found before its data is used,
reported with the reference's name, and leaves the list and the other references working."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from lib_refdrop.errors import RefDropError
from lib_refdrop.params import build
from lib_refdrop.reference.manifest import seal_manifest
from lib_refdrop.reference.store import MANIFEST, ReferenceStore
from lib_refdrop.run import RefDropRun
from tests.support import faultkit


@pytest.fixture
def store(tmp_path):
    return faultkit.good_and_bad(tmp_path)


def _first_file(store, name):
    return store.path(name) / store.manifest(name)["slots"][0]["files"][0]["file"]


def _others_unharmed(store):
    assert store.names() == ["bad", "good"]  # the broken one is still listed (its details say why)
    store.verify("good")


def test_truncated_tensor_file_is_reported_by_manifest(store):
    path = _first_file(store, "bad")
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(RefDropError, match=r"reference 'bad' is corrupt: slot_0000_0.safetensors has \d+ bytes"):
        store.manifest("bad")
    _others_unharmed(store)


def test_missing_tensor_file_is_reported(store):
    _first_file(store, "bad").unlink()
    with pytest.raises(RefDropError, match="reference 'bad' is incomplete: slot_0000_0.safetensors is missing"):
        store.manifest("bad")
    _others_unharmed(store)


@pytest.mark.parametrize("offset", [0, 9, 200, -1])  # header length, header JSON, tensor data, last byte
def test_bit_flipped_tensor_file_fails_its_checksum(store, offset):
    path = _first_file(store, "bad")
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    store.manifest("bad")  # same size: only the checksum can tell
    with pytest.raises(RefDropError, match="reference 'bad' is corrupt: slot_0000_0.safetensors does not match"):
        store.verify("bad")
    _others_unharmed(store)


def test_bit_flips_anywhere_in_the_manifest_are_detected(store):
    """400 random bytes of manifest.json, one random bit each: an error naming the reference, or the very same
    manifest (a flip that JSON parses to the same value cannot change what is loaded)."""
    path = store.path("bad") / MANIFEST
    original_bytes = path.read_bytes()
    original = store.manifest("bad")
    rng = random.Random(5)
    for i in sorted(rng.sample(range(len(original_bytes)), min(400, len(original_bytes)))):
        data = bytearray(original_bytes)
        data[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        try:
            loaded = store.manifest("bad")
        except RefDropError as exc:
            assert "'bad'" in str(exc)
        else:
            assert loaded == original, f"a flip at byte {i} went unnoticed"
    path.write_bytes(original_bytes)
    _others_unharmed(store)


@pytest.mark.parametrize("keep", [0, 1, 100, -2])
def test_truncated_manifest(store, keep):
    path = store.path("bad") / MANIFEST
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(RefDropError, match="reference 'bad' has a corrupt manifest"):
        store.manifest("bad")
    _others_unharmed(store)


def test_manifest_that_is_not_utf8(store):
    (store.path("bad") / MANIFEST).write_bytes(b'{"name": "\xff\xfe"}')
    with pytest.raises(RefDropError, match="reference 'bad' has a corrupt manifest"):
        store.manifest("bad")


def test_edited_manifest_fails_its_own_checksum(store):
    path = store.path("bad") / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["slots"][0]["sigma"] = 99.0  # valid JSON, plausible value: only the seal catches it
    path.write_text(json.dumps(manifest))
    with pytest.raises(RefDropError, match="reference 'bad' is corrupt: manifest.json does not match"):
        store.manifest("bad")


@pytest.mark.parametrize("sealed", [True, False])
def test_manifest_of_a_newer_format_is_refused_with_a_message(store, sealed):
    path = store.path("bad") / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 2
    manifest["something_new"] = {"x": 1}
    if sealed:
        seal_manifest(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(RefDropError, match=r"'bad' was written by a newer sd-refdrop \(format 2\).*Update"):
        store.manifest("bad")
    _others_unharmed(store)


def test_use_of_a_corrupt_reference_fails_with_its_name_and_others_still_work(tmp_path):
    """Through a generation: the broken reference stops that generation with a clear error at the first attn1
    call (hosts show errors raised in patches); the next generation with another reference is unaffected."""
    store = ReferenceStore(tmp_path)
    calls = list(faultkit.trace_calls(limit=16))
    plain = faultkit.save_generation(store, "good", calls)
    shutil.copytree(store.path("good"), store.path("bad"))
    path = _first_file(store, "bad")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    def use(name):
        run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": name, "rfg": 0.5}), store)
        return faultkit.run_generation(run, calls)

    with pytest.raises(RefDropError, match="reference 'bad' is corrupt"):
        use("bad")
    outputs = use("good")  # same seed and settings: Use reproduces the Save outputs exactly
    assert all((a - b).abs().max() == 0 for a, b in zip(outputs, plain, strict=True))
