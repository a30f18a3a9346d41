"""The in-process memory store: the same operations as Redis, in one process.

Used by the demo when no Redis answers, by single-process applications, and as the fast unit
test backend. Entries expire after their TTL and the least recently used entry is evicted when
``max_entries`` is reached. Glob patterns follow Redis's rules (``*``, ``?``, ``[abc]``,
``[^a]``, ``[a-z]``, ``\\`` escapes), not fnmatch's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from gathering_cache.backends.base import (
    Capabilities,
    Progress,
    Store,
    Subscriber,
    fresh_counter,
    parse_counter,
)
from gathering_cache.core.globmatch import compile_glob

__all__ = ["MemoryStore"]

_Value = bytes | dict[str, float]
"""A string value, or an index: member -> expiry (see :meth:`MemoryStore.set_indexed`)."""


class MemoryStore(Store):
    """A bounded LRU of bytes with per-entry expiry. Not shared between processes."""

    capabilities = Capabilities(
        backend="memory", networked=False, loop_bound=False, indexes=True, locks=True
    )
    fault_types = ()

    def __init__(
        self, max_entries: int = 10_000, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # Indexes live here too, so every structure counts against max_entries and
        # takes its turn in the LRU.
        self._data: OrderedDict[str, tuple[_Value, float | None]] = OrderedDict()
        self._channels: dict[str, set[asyncio.Queue[bytes]]] = {}
        self._max_entries = max_entries
        self._clock = clock
        self.evictions = 0

    def _entry(self, key: str) -> _Value | None:
        """The live value under ``key``, of any type (marked recently used)."""
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def _live(self, key: str) -> bytes | None:
        """The live string value under ``key``; an index reads as a miss."""
        value = self._entry(key)
        return value if isinstance(value, bytes) else None

    def _put(self, key: str, value: _Value, ttl: int | None) -> None:
        self._store(key, value, self._clock() + ttl if ttl is not None else None)

    def _store(self, key: str, value: _Value, expires: float | None) -> None:
        self._data[key] = (value, expires)
        self._data.move_to_end(key)
        while len(self._data) > self._max_entries:
            self._data.popitem(last=False)
            self.evictions += 1

    def _matching(self, pattern: str) -> list[str]:
        regex = compile_glob(pattern)
        now = self._clock()
        matched = []
        for key, (_, expires) in list(self._data.items()):
            if expires is not None and expires <= now:
                del self._data[key]
            elif regex.fullmatch(key):
                matched.append(key)
        return matched

    async def connect(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._live(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl: int | None) -> bool:
        self._put(key, value, ttl)
        return True

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: int | None) -> bool:
        for key, value in items:
            self._put(key, value, ttl)
        return True

    async def delete(self, keys: Sequence[str]) -> int:
        removed = 0
        for key in keys:
            if self._entry(key) is not None:
                del self._data[key]
                removed += 1
        return removed

    async def exists(self, key: str) -> bool:
        return self._entry(key) is not None

    async def ttl(self, key: str) -> int | None:
        if self._entry(key) is None:
            return None
        expires = self._data[key][1]
        if expires is None:
            return -1
        # Redis rounds the remaining time to the nearest second.
        return max(0, round(expires - self._clock()))

    async def scan_delete(self, pattern: str, progress: Progress) -> int:
        for key in self._matching(pattern):
            del self._data[key]
            progress.done += 1
        return progress.done

    async def scan_page(self, pattern: str, cursor: int, count: int) -> tuple[int, list[str]]:
        # In process, one page holds every match: nothing to resume, nothing to miss.
        return 0, self._matching(pattern)

    async def count(self, pattern: str, progress: Progress) -> int:
        return len(self._matching(pattern))

    def _expiry_at_least(self, key: str, expires: float) -> float:
        """``expires``, or the later expiry ``key`` already has (Redis's EXPIRE GT)."""
        current = self._data.get(key)
        if current is not None and current[1] is not None and current[1] > expires:
            return current[1]
        return expires

    async def set_indexed(self, items: Sequence[tuple[str, bytes]], ttl: int, index: str) -> bool:
        for key, value in items:
            self._put(key, value, ttl)
        now = self._clock()
        current = self._entry(index)
        members = current if isinstance(current, dict) else {}
        for key, _ in items:
            members[key] = max(members.get(key, 0.0), now + ttl)
        for key in [key for key, expires in members.items() if expires <= now]:
            del members[key]  # its entry has expired: the index stays as small as the live
        self._store(index, members, self._expiry_at_least(index, now + ttl))
        return True

    async def pop_index(self, index: str) -> list[str]:
        members = self._entry(index)
        if not isinstance(members, dict):
            return []
        del self._data[index]
        return sorted(members)

    async def counters(self, keys: Sequence[str], amount: int, ttl: int) -> list[int]:
        values = []
        for key in keys:
            value = parse_counter(self._entry(key))
            # Absent, evicted or unreadable: a fresh random start, never a value it had.
            value = fresh_counter() if value is None else value + amount
            expires = self._expiry_at_least(key, self._clock() + ttl)
            self._store(key, str(value).encode(), expires)
            values.append(value)
        return values

    async def publish(self, channel: str, message: bytes) -> int:
        queues = self._channels.get(channel, set())
        for queue in queues:
            queue.put_nowait(message)
        return len(queues)

    def subscriber(self, channel: str) -> Subscriber:
        return _MemorySubscriber(self._channels, channel)

    async def acquire_locks(self, keys: Sequence[str], token: str, ttl_ms: int) -> list[bool]:
        taken = []
        for key in keys:
            free = self._entry(key) is None
            if free:  # through _store: locks count against max_entries too
                self._store(key, token.encode(), self._clock() + ttl_ms / 1000)
            taken.append(free)
        return taken

    async def release_locks(self, keys: Sequence[str], token: str) -> int:
        released = 0
        for key in keys:
            if self._live(key) == token.encode():
                del self._data[key]
                released += 1
        return released

    async def server_info(self) -> dict[str, Any]:
        return {"used_memory": sum(_size(k, v) for k, (v, _) in self._data.items())}

    async def memory_usage(self, keys: Sequence[str]) -> list[int | None]:
        sizes: list[int | None] = []
        for key in keys:
            value = self._entry(key)
            sizes.append(None if value is None else _size(key, value))
        return sizes

    def describe(self) -> dict[str, Any]:
        return {
            "host": None,
            "port": None,
            "db": None,
            "max_entries": self._max_entries,
            "evictions": self.evictions,
        }


class _MemorySubscriber(Subscriber):
    """A queue fed by :meth:`MemoryStore.publish` (this process only)."""

    def __init__(self, channels: dict[str, set[asyncio.Queue[bytes]]], channel: str) -> None:
        self._channels = channels
        self._channel = channel
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._held: bytes | None = None  # taken off the queue by a get() that was cancelled

    async def start(self) -> None:
        self._channels.setdefault(self._channel, set()).add(self._queue)

    async def get(self, timeout: float) -> bytes | None:
        if self._held is not None:
            message, self._held = self._held, None
            return message
        if not self._queue.empty():
            return self._queue.get_nowait()
        # Not asyncio.wait_for: on Python 3.10 and 3.11 it returns a message that arrives
        # together with a cancellation and swallows the cancellation, so a bridge being
        # stopped never learned it and stop() waited forever. asyncio.wait never swallows
        # the caller's cancellation.
        getter = asyncio.ensure_future(self._queue.get())
        try:
            await asyncio.wait((getter,), timeout=timeout)
        finally:
            if not getter.done():
                getter.cancel()
            elif not getter.cancelled() and getter.exception() is None and self._held is None:
                self._held = getter.result()  # kept for the next get(), not lost
        if self._held is not None:
            message, self._held = self._held, None
            return message
        return None

    async def close(self) -> None:
        with contextlib.suppress(KeyError):
            self._channels[self._channel].discard(self._queue)


def _size(key: str, value: _Value) -> int:
    """An estimate of what one entry takes: its key and value bytes, members included."""
    if isinstance(value, (bytes, bytearray)):
        return len(key) + len(value)
    return len(key) + sum(len(str(member)) for member in value)
