"""A bounded memory of ids: the store's caches of rows it has written (a process's id by
(boot, pid, start), a command line's id), so most events cost no lookup.

Two generations: lookups read the young one, then the old one (a hit there moves the entry to the
young one); when the young one holds `size` entries, the old one is dropped and the young one
becomes old. At most 2 x `size` entries, whatever the rate: a collector ingesting a steady few
hundred processes a second keeps flat memory, where a cache emptied only when full grows for
half an hour first (issue 23: 3.6 MB a minute). What is still used - a long-lived process's id,
a command run every minute - survives every roll; what is dropped costs one SELECT when next named.

Forgetting is always safe here: every id is also in the store, and the store's writers look it
up when the cache does not have it. So the bound is on memory, never on correctness.
"""

from __future__ import annotations

from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class IdCache(Generic[K, V]):
    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"an IdCache holds at least 1 entry a generation, not {size}")
        self.size = size
        # the young generation, for the hot path: a hit here is a hit (at dict.get's speed); a
        # miss means ask get(), which also reads the old one. Never written from outside.
        self.young: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        value = self.young.get(key)
        if value is None:
            value = self._old.pop(key, None)
            if value is not None:
                self._put(key, value)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._old.pop(key, None)
        self._put(key, value)

    def __contains__(self, key: K) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return len(self.young) + len(self._old)

    def discard(self, key: K) -> None:
        self.young.pop(key, None)
        self._old.pop(key, None)

    def clear(self) -> None:
        self.young.clear()
        self._old.clear()

    def _put(self, key: K, value: V) -> None:
        if len(self.young) >= self.size and key not in self.young:
            self._old = self.young
            self.young = {}
        self.young[key] = value


class IdSet:
    """A bounded set with IdCache's two generations (the store's processes it saw forked)."""

    def __init__(self, size: int):
        self._ids: IdCache[int, bool] = IdCache(size)

    def add(self, key: int) -> None:
        self._ids[key] = True

    def discard(self, key: int) -> None:
        self._ids.discard(key)

    def clear(self) -> None:
        self._ids.clear()

    def __contains__(self, key: int) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._ids)
