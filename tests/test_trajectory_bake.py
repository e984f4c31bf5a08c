"""Fast after the first Use (lib_refdrop/bake.py): the first Use of a trajectory reference bakes the rows its
reference pass computes into the default profile (``lean``); a later Use of the same reference (the same seal) reads
them and runs no reference pass."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lib_refdrop import standalone
from lib_refdrop.reference.manifest import seal_manifest
from lib_refdrop.reference.ramcache import RamCache
from lib_refdrop.reference.reader import RAM_CACHE, ReferenceReader
from lib_refdrop.reference.store import BAKED, MANIFEST, ReferenceStore
from lib_refdrop.reference.writer import pending_bake
from tests.support.hostsim import AttnHost, make_unet
from tests.support.refdrop_harness import context, sample_with, save
from tests.support.refdrop_harness import use as use_with

STEPS = 4
BASE = {"steps": STEPS, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}
OTHER = {**BASE, "seed": 3}  # a Use at another seed, at the Save's steps and scheduler


@pytest.fixture(scope="module")
def host():
    return AttnHost(make_unet("sd15", "tiny", seed=0))


def _bake(store, name):
    """The folder of reference ``name``'s baked rows once written, None where it has none."""
    seal = standalone.identity(store, name)
    writer = pending_bake(store, seal)
    if writer is not None:
        assert writer.wait(60)
    folder = store.root / BAKED / seal
    return folder if folder.is_dir() else None


def use(*args, bake_trajectories=True, **kwargs):
    """A Use as a host makes it: baking on unless told."""
    return use_with(*args, bake_trajectories=bake_trajectories, **kwargs)


def _forwards(host, fn):
    """(what ``fn()`` returns, how many U-Net calls it made)."""
    before = host.n_forwards
    out = fn()
    return out, host.n_forwards - before


@pytest.fixture(scope="module")
def baked(host, tmp_path_factory):
    """Two trajectory references and a lean one of the first's generation; the first's first Use, at another seed,
    baked its rows."""
    store = ReferenceStore(tmp_path_factory.mktemp("store"))
    save(host, store, "t", profile="trajectory", **BASE)
    save(host, store, "t2", profile="trajectory", **{**BASE, "seed": 2})
    save(host, store, "l", profile="lean", **BASE)
    first, calls = _forwards(host, lambda: use(host, store, "t", 0.5, **OTHER))
    assert _bake(store, "t") is not None
    return store, first, calls


def _copy(baked, tmp_path, keep_bake: bool = True) -> ReferenceStore:
    """A store of its own with the references of ``baked`` (and the bake of "t", unless not ``keep_bake``)."""
    shutil.copytree(baked[0].root, tmp_path / "store")
    store = ReferenceStore(tmp_path / "store")
    if not keep_bake:
        store.drop_bake(standalone.identity(store, "t"))
    RAM_CACHE.clear()  # what the first Use handed over to it: every bake is read from the disk here
    return store


def _stored(opened):
    """Each slot of an opened reference as ((sigma, occurrence), its tensors as the files store them)."""
    reader = ReferenceReader(opened, RamCache(0), prefetch_first=False)
    try:
        return [((slot["sigma"], slot["occurrence"]), reader.stored_tensors(slot["index"]))
                for slot in sorted(opened.manifest["slots"], key=lambda s: s["index"])]
    finally:
        reader.close()


def test_the_first_use_bakes_what_a_lean_save_of_the_generation_stores(baked):
    store, _, calls = baked
    assert calls == 2 * STEPS  # the generation and the reference pass
    bake = store.open_bake(standalone.identity(store, "t"), "t")
    stored_bake, stored_lean = _stored(bake), _stored(store.open("l"))
    assert [where for where, _ in stored_bake] == [where for where, _ in stored_lean]
    for (_, from_bake), (_, from_save) in zip(stored_bake, stored_lean, strict=True):
        assert from_bake.keys() == from_save.keys()
        assert all(torch.equal(from_bake[key], from_save[key]) for key in from_save)  # int8 codes and scales
    for field in ("profile", "layers", "chunks", "family"):
        assert bake.manifest[field] == store.manifest("l")[field]
    assert store.names() == ["l", "t", "t2"]  # not listed as a reference


def test_a_later_use_runs_no_reference_pass_and_is_the_lean_references_use(host, baked):
    store, first, _ = baked
    later, calls = _forwards(host, lambda: use(host, store, "t", 0.5, **OTHER))
    assert calls == STEPS
    assert torch.equal(later, use(host, store, "l", 0.5, **OTHER))
    assert not torch.equal(later, first)  # lean's fidelity, not the trajectory's exactness


def test_baking_off_evaluates_the_trajectory_again(host, baked):
    store, first, _ = baked
    again, calls = _forwards(host, lambda: use(host, store, "t", 0.5, bake_trajectories=False, **OTHER))
    assert calls == 2 * STEPS
    assert torch.equal(again, first)


@pytest.mark.parametrize("change", ["overwrite", "rename", "by hand"])
def test_a_changed_reference_is_not_served_a_stale_bake(host, baked, tmp_path, change):
    store = _copy(baked, tmp_path)
    stale = _bake(store, "t")
    if change == "overwrite":
        with standalone.start_save(store, "t", context(seed=2, host=host), profile="trajectory",
                                   overwrite=True) as session:
            sample_with(host, session.patch, session.input_patch, session.model_wrapper, **{**BASE, "seed": 2})
            session.finish({"seed": 2})
    elif change == "rename":
        store.rename("t", "u")
    else:  # another trajectory's folder put in its place outside RefDrop
        shutil.rmtree(store.path("t"))
        shutil.copytree(store.path("t2"), store.path("t"))
    assert stale.exists() == (change == "by hand")  # RefDrop's own changes drop it at once
    name = "u" if change == "rename" else "t"
    _, calls = _forwards(host, lambda: use(host, store, name, 0.5, **OTHER))
    assert calls == 2 * STEPS  # the reference pass: nothing baked for the reference as it is now
    assert _bake(store, name) is not None  # until this first Use of it


def _flip_a_byte(folder):
    file = next(p for p in sorted(folder.iterdir()) if p.name.startswith("slot_"))
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def _truncate(folder):
    file = next(p for p in sorted(folder.iterdir()) if p.name.startswith("slot_"))
    file.write_bytes(file.read_bytes()[:-5])


def _other_reference(folder):
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["generation"]["baked_from"] = "0" * 64  # resealed: only the folder says whose rows they are
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate, _other_reference,
                                    lambda folder: (folder / MANIFEST).unlink()],
                         ids=["bit-flip", "truncated", "another-reference", "no-manifest"])
def test_a_corrupt_bake_is_ignored_and_baked_again(host, baked, tmp_path, damage):
    store = _copy(baked, tmp_path)
    damage(_bake(store, "t"))
    out, calls = _forwards(host, lambda: use(host, store, "t", 0.5, **OTHER))
    assert calls == 2 * STEPS  # the reference pass, as if nothing were baked
    assert torch.equal(out, baked[1])  # the trajectory's own Use
    _bake(store, "t")  # the Use that ignored it baked it again
    rebaked = store.open_bake(standalone.identity(store, "t"), "t")
    assert rebaked is not None
    rebaked.close()


IMG2IMG = {"steps": 2 * STEPS, "denoise": 0.5, "init_latent": torch.zeros(1, 4, 16, 16)}


@pytest.mark.parametrize("first_use, bakes", [
    ({"settings": {"step_start": 0.25}}, False),  # the pass runs only within the step window
    ({"sample_args": {"steps": STEPS - 1}}, False),  # fewer sigmas than the reference keeps
    ({"sample_args": IMG2IMG}, False),  # starts below the reference's highest sigma
    ({"rfg": 0.0}, False),  # no reference pass at all
    ({"bake_trajectories": False}, False),
    ({"sample_args": {"steps": 2 * STEPS}}, True),  # more sigmas over the same span: baked at those
    ({"sample_args": {"sampler": "heun"}}, True),  # two evaluations a step: each is a slot, as in a Save
], ids=["step-window", "fewer-steps", "img2img", "c-zero", "off", "more-steps", "heun"])
def test_a_first_use_bakes_only_where_its_pass_is_the_whole_reference(host, baked, tmp_path, first_use, bakes):
    store = _copy(baked, tmp_path, keep_bake=False)
    use(host, store, "t", first_use.get("rfg", 0.5), settings=first_use.get("settings"),
        bake_trajectories=first_use.get("bake_trajectories", True), **{**OTHER, **first_use.get("sample_args", {})})
    assert (_bake(store, "t") is not None) == bakes


def test_an_interrupted_first_use_bakes_nothing(host, baked, tmp_path):
    store = _copy(baked, tmp_path, keep_bake=False)
    with pytest.raises(RuntimeError, match="stopped"):
        with standalone.start_use(store, reference="t", rfg=0.5) as session:
            patches = session.for_pass(context(seed=3, host=host))
            sample_with(host, patches.attn1, patches.attn1_input, patches.model_wrapper, **OTHER)
            raise RuntimeError("stopped")  # after the last step: only the session knows the generation failed
    assert _bake(store, "t") is None


def test_several_references_are_each_baked_on_their_own(host, baked, tmp_path):
    store = _copy(baked, tmp_path, keep_bake=False)
    both = {"reference_2": "t2", "rfg_2": 0.3}
    _, calls = _forwards(host, lambda: use(host, store, "t", 0.4, settings=both, **OTHER))
    assert calls == 3 * STEPS
    assert _bake(store, "t") is not None and _bake(store, "t2") is not None
    _, calls = _forwards(host, lambda: use(host, store, "t", 0.4, settings=both, **OTHER))
    assert calls == STEPS


@pytest.mark.parametrize("how", ["delete", "by hand"])
def test_a_bake_goes_with_its_reference(baked, tmp_path, how):
    store = _copy(baked, tmp_path)
    bake = _bake(store, "t")
    if how == "delete":
        store.delete("t")
    else:  # removed outside RefDrop: the next start of the store drops its bake (and only then)
        ReferenceStore(store.root)
        assert bake.exists()
        shutil.rmtree(store.path("t"))
        ReferenceStore(store.root)
    assert not bake.exists()
