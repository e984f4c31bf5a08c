"""The ``refdrop`` model folder(s) and each reference's identity.

The pack registers ``models/refdrop`` under the folder name ``refdrop`` (``folder_paths.add_model_folder_path``), so
``extra_model_paths.yaml`` can add more, e.g. a WebUI's ``models/RefDrop`` (the same format: a reference saved in
Forge is used in ComfyUI and back), and a shared reference file (``<name>.refdrop.safetensors``) dropped into one is
imported when the list is read (``reference/bundle.py``). A reference's name is looked up in the folders in
ComfyUI's order (the first that holds it wins); a Save writes into the first folder (``is_default: true`` in the
yaml puts one first). Every call reads the folders again, so a new reference shows in the node's list when the
front end refreshes its node definitions, without a restart.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from ..errors import RefDropError, ReferenceNotFound
from ..reference import bundle
from ..reference.manifest import SEAL
from ..reference.names import validate_name
from ..reference.store import ReferenceStore

FOLDER = "refdrop"


class Library:
    """The stores of the ``refdrop`` folders; ``folders()`` is asked on every call (ComfyUI's list can change)."""

    def __init__(self, folders: Callable[[], list[str]]):
        self._folders = folders

    def folders(self) -> list[str]:
        found = [f for f in self._folders() if f]
        if not found:
            raise RefDropError("RefDrop: no 'refdrop' model folder is configured")
        return found

    def stores(self) -> list[ReferenceStore]:
        return [ReferenceStore(folder) for folder in self.folders() if os.path.isdir(folder)] or \
            [ReferenceStore(self.folders()[0])]

    def save_store(self) -> ReferenceStore:
        return ReferenceStore(self.folders()[0])

    def names(self) -> list[str]:
        seen: dict[str, None] = {}
        for store in self.stores():
            bundle.adopt_received(store)  # reference files dropped into the folder
            for name in store.names():
                seen.setdefault(name, None)
        return sorted(seen, key=str.lower)

    def store_of(self, name: str) -> ReferenceStore:
        """The store that holds reference ``name``: ReferenceNotFound (listing what there is) when none does."""
        name = validate_name(name)
        stores = self.stores()
        for store in stores:
            if store.exists(name):
                return store
        known = ", ".join(self.names()) or "none"
        where = ", ".join(str(s.root) for s in stores)
        raise ReferenceNotFound(f"RefDrop: reference '{name}' not found in {where} (saved references: {known})")

    def fingerprint(self, name: str) -> str:
        """What changes when reference ``name`` changes on disk (overwritten, renamed away, deleted, its mask set):
        its folder, its manifest's seal and its mask's digest; a problem is part of the fingerprint too, so a fixed
        reference re-runs the node."""
        try:
            store = self.store_of(name)
            manifest = store.manifest(name)
            mask = store.read_mask(name)
        except RefDropError as exc:
            return f"error: {exc}"
        digest = hashlib.sha256(mask).hexdigest() if mask is not None else "-"
        return f"{store.root}|{manifest[SEAL]}|{digest}"


class Folders:
    """The ``refdrop`` folders as one store for a Use: each reference is read from the folder that holds it, so one
    Use can combine references of a WebUI's folder and ComfyUI's (what a Use asks a store: ``open``, ``read_mask``,
    ``manifest``, ``exists``, and ``store_of``: where a trajectory reference's first Use bakes its rows)."""

    def __init__(self, library: Library):
        self.library = library

    @property
    def root(self):
        """Where a Save of this library writes, so a Use waits on a Save of the same name in flight there
        (``reference/writer.py`` ``pending_write``)."""
        return self.library.save_store().root

    def open(self, name: str):
        return self.library.store_of(name).open(name)

    def store_of(self, name: str):
        return self.library.store_of(name)

    def read_mask(self, name: str):
        return self.library.store_of(name).read_mask(name)

    def manifest(self, name: str) -> dict:
        return self.library.store_of(name).manifest(name)

    def exists(self, name: str) -> bool:
        try:
            self.library.store_of(name)
        except ReferenceNotFound:
            return False
        return True


def comfy_library() -> Library:
    """The library of the running ComfyUI, registering the ``refdrop`` folder on first use."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER)
    folders = folder_paths.folder_names_and_paths.get(FOLDER)
    if folders is None or default not in folders[0]:
        folder_paths.add_model_folder_path(FOLDER, default)
    return Library(lambda: folder_paths.get_folder_paths(FOLDER))
