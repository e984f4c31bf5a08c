"""Crash during Save, rename and delete: a real child process is SIGKILLed at every file-system step.

Invariants after the kill, checked on a freshly opened store:
- no partial reference is listed, and every listed reference loads and passes its checksums;
- every earlier reference is byte-identical (an overwritten one is either the old one or the complete new one);
- the leftovers of the dead writer (.incoming, .trash) are gone after the store opens.
"""

from __future__ import annotations

import multiprocessing
import random
import shutil

import pytest

from lib_refdrop.reference.store import ReferenceStore
from tests.support import faultkit
from tests.support.faultkit import killable

pytestmark = pytest.mark.skipif(not hasattr(multiprocessing, "get_context") or
                                "forkserver" not in multiprocessing.get_all_start_methods(),
                                reason="needs the forkserver start method (POSIX)")


@pytest.fixture(scope="module")
def mp():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["tests.support.faultkit", "tests.support.faultkit.killable", "lib_refdrop.reference.writer"]
    )
    return ctx


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store with two references, copied fresh for every kill."""
    root = tmp_path_factory.mktemp("pristine")
    store = ReferenceStore(root)
    faultkit.make_reference(store, "keep-a", seed=1)
    faultkit.make_reference(store, "keep-b", seed=2)
    return root


def _run_child(mp, root, op, name, new_name="", kill_at=-1, jitter=0.0, kill_after=None):
    parent, child = mp.Pipe()
    proc = mp.Process(target=killable.run, args=(str(root), op, name, new_name, kill_at, child, jitter))
    proc.start()
    child.close()
    try:
        if kill_after is not None:
            message = parent.recv() if parent.poll(kill_after) else ("killed", None, None)
        else:
            assert parent.poll(60), "the child neither reached its kill point nor finished"
            message = parent.recv()
        if message[0] != "done":
            proc.kill()  # SIGKILL: no finally, no atexit, no flush
    finally:
        proc.join(30)
        parent.close()
    return message


def _expected(root):
    store = ReferenceStore(root)
    return {name: faultkit.snapshot(store.path(name)) for name in store.names()}


def _check_after_kill(root, before: dict, allowed_new: dict, where: str):
    store = ReferenceStore(root)  # a fresh start: cleans up after the dead writer
    assert faultkit.leftovers(root) == [], where
    listed = set(store.names())
    for name in listed:
        store.verify(name)  # complete: manifest and every checksum
        content = faultkit.snapshot(store.path(name))
        assert content in [c for c in (before.get(name), allowed_new.get(name)) if c], f"{name} is torn {where}"
    return listed


def _scenario(mp, pristine, tmp_path, op, name, new_name=""):
    """Count the steps of a full run, then kill a fresh copy of the store at each of them."""
    done_root = tmp_path / "complete"
    shutil.copytree(pristine, done_root)
    before = _expected(done_root)
    message = _run_child(mp, done_root, op, name, new_name)
    assert message[0] == "done", message
    steps = message[1]
    after = _expected(done_root)
    assert steps >= 3
    outcomes = []
    for k in range(steps):
        root = tmp_path / f"kill{k}"
        shutil.copytree(pristine, root)
        at = _run_child(mp, root, op, name, new_name, kill_at=k)
        assert at[0] == "at", at
        listed = _check_after_kill(root, before, after, f"after a kill at step {k} ({at[2]})")
        outcomes.append(listed)
        shutil.rmtree(root)
    return before, after, outcomes


def test_kill_during_new_save_at_every_step(mp, pristine, tmp_path):
    before, after, outcomes = _scenario(mp, pristine, tmp_path, "save", "fresh")
    assert all({"keep-a", "keep-b"} <= listed for listed in outcomes)  # earlier references survive every kill
    assert not any("fresh" in listed for listed in outcomes[:-3])  # early kills: nothing new appears
    assert "fresh" in outcomes[-1]  # a kill after the final rename keeps the new reference


def test_kill_during_overwriting_save_at_every_step(mp, pristine, tmp_path):
    before, after, outcomes = _scenario(mp, pristine, tmp_path, "overwrite", "keep-b")
    assert after["keep-b"] != before["keep-b"]
    # The old reference is never lost: it is there (old or new) after a kill at any step.
    assert all({"keep-a", "keep-b"} <= listed for listed in outcomes)


def test_kill_during_rename_at_every_step(mp, pristine, tmp_path):
    before, _, outcomes = _scenario(mp, pristine, tmp_path, "rename", "keep-b", "renamed")
    for listed in outcomes:
        assert "keep-a" in listed and len(listed & {"keep-b", "renamed"}) == 1


def test_kill_during_delete_at_every_step(mp, pristine, tmp_path):
    _, _, outcomes = _scenario(mp, pristine, tmp_path, "delete", "keep-b")
    assert all("keep-a" in listed for listed in outcomes)


def test_kill_after_random_delays(mp, pristine, tmp_path):
    """Kills that land anywhere, not only at the hooked calls (the child writes slowly, with a pause per step)."""
    rng = random.Random(20241125)
    before = _expected(pristine)
    for i in range(6):
        root = tmp_path / f"random{i}"
        shutil.copytree(pristine, root)
        op, name = rng.choice([("save", "fresh"), ("overwrite", "keep-a")])
        _run_child(mp, root, op, name, jitter=0.01, kill_after=rng.uniform(0.0, 0.6))
        store = ReferenceStore(root)
        assert faultkit.leftovers(root) == []
        listed = set(store.names())
        assert {"keep-a", "keep-b"} <= listed
        for ref in listed:
            store.verify(ref)
        assert faultkit.snapshot(store.path("keep-b")) == before["keep-b"]


def test_kill_while_keeping_a_mask_at_every_step(mp, pristine, tmp_path):
    """The mask's temporary file is one of the store's own names: the next start removes it (issue 18, item 6)."""
    _, after, outcomes = _scenario(mp, pristine, tmp_path, "set_mask", "keep-b")
    assert "mask.png" in after["keep-b"]
    assert all({"keep-a", "keep-b"} <= listed for listed in outcomes)
