"""Reference slots kept in RAM across generations as their files store them (checked; int8 codes stay int8, a Use
decodes them on the device), within a byte budget (Settings → RefDrop).

Entries are keyed by a reference's content identity (its manifest checksum, which covers every file's checksum)
first, then its name and the slot, never by date: an overwritten reference can never be answered from the old
one's entries, and a copy under another name (same identity, files of its own) has its files checked when first
read. The store drops a reference's entries when it deletes, renames or overwrites it, to free the memory.
A Save fills the cache too (``reader.WriteThrough``): the first Use of a fresh reference then reads no file.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

DEFAULT_RAM_BUDGET = 4 * 1024**3


class RamCache:
    """LRU of stored slots, never holding more than ``budget`` bytes (a slot larger than it is not kept)."""

    def __init__(self, budget: int = DEFAULT_RAM_BUDGET):
        self.budget = int(budget)
        self._items: OrderedDict = OrderedDict()  # (identity, name, slot index) -> (value, nbytes)
        self._lock = threading.Lock()
        self.used = 0

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key, value, nbytes: int) -> None:
        with self._lock:
            if key in self._items or nbytes > self.budget:
                return
            self._items[key] = (value, nbytes)
            self.used += nbytes
            self._evict()

    def forget(self, identity: str | None) -> None:
        """Drop every slot of the reference with this content identity."""
        if identity is None:
            return
        with self._lock:
            for key in [k for k in self._items if k[0] == identity]:
                self.used -= self._items.pop(key)[1]

    def set_budget(self, budget: int) -> None:
        with self._lock:
            self.budget = int(budget)
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0

    def _evict(self) -> None:
        while self.used > self.budget and self._items:
            _, (_, nbytes) = self._items.popitem(last=False)
            self.used -= nbytes


RAM_CACHE = RamCache()
