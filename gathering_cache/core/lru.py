"""A small in-process LRU of bytes: the embedding fallback cache. Pure: no I/O."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["LRU"]


class LRU:
    """Least-recently-used map of key -> bytes with a fixed capacity (0: always empty).

    Not thread-safe; every user runs on one event loop.
    """

    __slots__ = ("_data", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> bytes | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if not self.capacity:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def discard(self, key: str) -> None:
        self._data.pop(key, None)

    def forget(self, keys: Sequence[str] | None) -> None:
        """Drop ``keys``, or everything when ``keys`` is None."""
        if keys is None:
            self._data.clear()
        else:
            for key in keys:
                self._data.pop(key, None)
