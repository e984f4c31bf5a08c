"""Slot files whose checksums pass (the manifest was re-sealed with them) but whose tensors are not what the
manifest's layers call for: refused before use, with the reference and the file named."""

from __future__ import annotations

import hashlib
import json

import pytest
import safetensors.torch
import torch

from lib_refdrop.errors import RefDropError
from lib_refdrop.params import build
from lib_refdrop.reference.manifest import seal_manifest
from lib_refdrop.reference.store import MANIFEST
from lib_refdrop.run import RefDropRun
from tests.support import faultkit

KEY = "input1.0/cond0/k"  # a row of the first slot file (faultkit splits each slot into two files)


def _forge_slot(store, name: str, data: bytes) -> str:
    """Replace the first slot file with ``data`` and re-seal the manifest so size and checksums match."""
    manifest_path = store.path(name) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["slots"][0]["files"][0]
    (store.path(name) / entry["file"]).write_bytes(data)
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps(seal_manifest(manifest)))
    return entry["file"]


def _first_slot_tensors(store, name: str) -> dict[str, torch.Tensor]:
    entry = store.manifest(name)["slots"][0]["files"][0]
    return safetensors.torch.load((store.path(name) / entry["file"]).read_bytes())


def _use_once(store, name: str) -> torch.Tensor:
    run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": name, "rfg": 0.5}), store)
    patch = faultkit.attn1_patch(run, faultkit.pass_context())
    q = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    eo = {"block": ["input", 1], "block_index": 0, "n_heads": 2, "dim_head": 4, "cond_or_uncond": [1, 0],
          "sigmas": torch.tensor([faultkit.SIGMAS[0]])}
    return patch(q, q, q, eo)


def _tampered(tensors: dict, case: str) -> dict:
    out = dict(tensors)
    row = out[KEY]
    if case == "shape":
        out[KEY] = torch.randn(row.shape[0] + 3, row.shape[1])
    elif case == "one_dim":
        out[KEY] = row.flatten()
    elif case == "int64":
        out[KEY] = row.to(torch.int64)
    elif case == "bool":
        out[KEY] = row > 0
    elif case == "nan":
        out[KEY] = row.clone().index_fill_(0, torch.tensor([2]), float("nan"))
    elif case == "inf":
        out[KEY] = row.clone().index_fill_(0, torch.tensor([0]), float("inf"))
    elif case == "missing":
        del out[KEY]
    elif case == "stranger":
        out["output99.0/cond0/k"] = row.clone()
    return out


@pytest.fixture
def store(tmp_path):
    return faultkit.good_and_bad(tmp_path)


@pytest.mark.parametrize("case", ["shape", "one_dim", "int64", "bool", "nan", "inf", "missing", "stranger"])
def test_tensors_that_do_not_fit_the_manifest_are_refused_by_name(store, case):
    file = _forge_slot(store, "bad", safetensors.torch.save(_tampered(_first_slot_tensors(store, "bad"), case)))
    with pytest.raises(RefDropError, match=rf"reference 'bad' is corrupt: .*{file}"):
        _use_once(store, "bad")
    assert torch.isfinite(_use_once(store, "good")).all()


@pytest.mark.parametrize("data", [b"\xff" * 64, b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}", b""],
                         ids=["garbage", "bad_header", "empty"])
def test_a_file_that_is_not_safetensors_is_named(store, data):
    file = _forge_slot(store, "bad", data)
    with pytest.raises(RefDropError, match=rf"reference 'bad' is corrupt: {file} is not a valid safetensors file"):
        _use_once(store, "bad")


def test_the_untampered_reference_passes_the_same_checks(store):
    _forge_slot(store, "bad", safetensors.torch.save(_first_slot_tensors(store, "bad")))
    assert torch.isfinite(_use_once(store, "bad")).all()
