"""What a slot decodes to, not only what it stores: finite codes with a huge per-channel scale, a layer input that
the projections blow up, or a trajectory latent near float32's largest value all give a NaN image unless refused by
name before the U-Net sees them."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from benchmarks.candidates import CANDIDATES, offering
from lib_refdrop.errors import RefDropError
from lib_refdrop.reference import compression
from lib_refdrop.reference.manifest import seal_manifest, sha256_bytes
from lib_refdrop.reference.store import MANIFEST, ReferenceStore
from tests.support.hostsim import AttnHost, make_unet
from tests.support.refdrop_harness import save, use

BASE = {"steps": 4, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}

@pytest.fixture(autouse=True)
def _read_only_formats_saved_as_before():
    """Some cases save with a format no longer offered (references written with it stay readable and checked)."""
    with offering(CANDIDATES.values()):
        yield



def replant(store: ReferenceStore, name: str, edit) -> str:
    """Edit the tensors of the first slot file and re-seal file and manifest, as a forger would; its file name."""
    folder = store.path(name)
    manifest = json.loads((folder / MANIFEST).read_text())
    entry = manifest["slots"][0]["files"][0]
    data = (folder / entry["file"]).read_bytes()
    zstd = entry.get("encoding") == compression.ZSTD
    if zstd:
        data = compression.decompress_bounded(data, entry["raw_bytes"], "a test")
    tensors = safetensors.torch.load(data)
    edit(tensors)
    data = safetensors.torch.save(tensors)
    if zstd:
        entry["raw_bytes"] = len(data)
        data = compression.compress(data)
    (folder / entry["file"]).write_bytes(data)
    entry.update(bytes=len(data), sha256=sha256_bytes(data))
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    return entry["file"]


def scales_to(value: float):
    def edit(tensors):
        key = next(k for k in sorted(tensors) if k.endswith(".scale"))
        tensors[key] = torch.full_like(tensors[key], value)
    return edit


def latent_to(value: float):
    def edit(tensors):
        tensors["latent"] = torch.full_like(tensors["latent"], value)
    return edit


CASES = {
    "int8 scale 3e38": ("balanced", scales_to(3e38)),
    "int8-zstd scale 3e38": ("int8-zstd", scales_to(3e38)),
    "fp8 scale 3e38": ("fp8", scales_to(3e38)),
    "lean scale 3e38": ("lean", scales_to(3e38)),
    "lean scale 1e30": ("lean", scales_to(1e30)),  # finite after decoding; the projections overflow
    "int8 scale 1e6": ("balanced", scales_to(1e6)),  # finite everywhere, beyond what any model computes
    "trajectory latent 3e38": ("trajectory", latent_to(3e38)),
}


@pytest.fixture(scope="module")
def host():
    return AttnHost(make_unet("sd15", "tiny", seed=0))


@pytest.mark.parametrize("case", list(CASES))
def test_huge_decoded_values_are_refused_by_name(tmp_path, host, case):
    profile, edit = CASES[case]
    store = ReferenceStore(tmp_path)
    save(host, store, "r", profile=profile, **BASE)
    file = replant(store, "r", edit)
    with pytest.raises(RefDropError, match=rf"reference 'r' is corrupt: {file}.* decodes to values beyond"):
        out = use(host, store, "r", 0.5, **{**BASE, "seed": 2})
        assert torch.isfinite(out).all()  # what the old code gave instead of an error: NaN


@pytest.mark.parametrize("profile", ["balanced", "fp8", "lean", "trajectory"])
def test_honest_references_pass_the_decoded_check(tmp_path, host, profile):
    store = ReferenceStore(tmp_path)
    save(host, store, "r", profile=profile, **BASE)
    assert torch.isfinite(use(host, store, "r", 0.5, **{**BASE, "seed": 2})).all()
