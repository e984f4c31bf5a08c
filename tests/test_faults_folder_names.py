"""Folders whose names are not in canonical form (NFD as copied from macOS, spaces around a name typed by hand):
each is listed once, under a name that can be used, renamed and deleted, or listed with a message that says how
to fix it."""

from __future__ import annotations

import os
import unicodedata

import pytest

from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.store import ReferenceStore
from tests.support import faultkit

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


def _rename_on_disk(store, name: str, folder_name: str) -> None:
    os.rename(store.root / name, store.root / folder_name)


@pytest.mark.parametrize("folder_name", [NFD, " padded ", "padded  "], ids=["nfd", "spaces", "trailing"])
def test_a_non_canonical_folder_can_be_listed_used_renamed_and_deleted(tmp_path, folder_name):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "tmp")
    _rename_on_disk(store, "tmp", folder_name)
    if folder_name not in os.listdir(store.root):
        pytest.skip("this file system normalises names itself")
    (shown,) = store.names()
    assert shown == unicodedata.normalize("NFC", folder_name.strip())
    store.verify(shown)  # what a Use opens
    assert faultkit.snapshot(store.path(shown))
    assert store.rename(shown, "renamed") == "renamed"
    assert store.names() == ["renamed"]
    store.delete("renamed")
    assert store.names() == []


def test_a_non_canonical_folder_is_deleted_under_the_name_shown(tmp_path):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "tmp")
    _rename_on_disk(store, "tmp", NFD)
    store.delete(NFC)
    assert store.names() == [] and [n for n in os.listdir(store.root) if not n.startswith(".")] == []


def test_an_overwrite_of_a_non_canonical_folder_replaces_it(tmp_path):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "tmp", seed=1)
    _rename_on_disk(store, "tmp", NFD)
    faultkit.make_reference(store, NFC, seed=2, overwrite=True)
    assert store.names() == [NFC]
    assert [n for n in os.listdir(store.root) if not n.startswith(".")] == [NFC]


def test_an_nfc_and_nfd_pair_is_listed_once_with_a_message_saying_how_to_fix_it(tmp_path):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "a", seed=1)
    faultkit.make_reference(store, "b", seed=2)
    _rename_on_disk(store, "a", NFC)
    _rename_on_disk(store, "b", NFD)
    if len(os.listdir(store.root)) < 2:
        pytest.skip("this file system normalises names itself")
    assert store.names() == [NFC]
    for call in (lambda: store.manifest(NFC), lambda: store.delete(NFC), lambda: store.rename(NFC, "x"),
                 lambda: faultkit.make_reference(store, NFC, overwrite=True)):
        with pytest.raises(RefDropError, match="rename or remove all but one of them on disk"):
            call()
    assert {NFC, NFD} <= set(os.listdir(store.root))  # nothing was changed on disk
