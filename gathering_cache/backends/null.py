"""A store that is never available: used when the cache is disabled or redis is missing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

from gathering_cache.backends.base import Capabilities, Progress, Store, Subscriber
from gathering_cache.errors import BackendError

__all__ = ["NullStore"]


class NullStore(Store):
    """Every operation fails with :class:`BackendError`; the policy answers degraded."""

    fault_types = (BackendError,)

    def __init__(
        self,
        reason: str,
        *,
        backend: str,
        describe: dict[str, Any],
        topology: str = "standalone",
    ) -> None:
        self.reason = reason
        self.capabilities = Capabilities(
            backend=backend, networked=False, loop_bound=False, disabled=reason, topology=topology
        )
        self._describe = describe

    def describe(self) -> dict[str, Any]:
        return dict(self._describe)

    def _fail(self) -> NoReturn:
        raise BackendError(self.reason)

    async def connect(self) -> None:
        self._fail()

    async def aclose(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        self._fail()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self._fail()

    async def set(self, key: str, value: bytes, ttl: int | None) -> bool:
        self._fail()

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: int | None) -> bool:
        self._fail()

    async def delete(self, keys: Sequence[str]) -> int:
        self._fail()

    async def exists(self, key: str) -> bool:
        self._fail()

    async def ttl(self, key: str) -> int | None:
        self._fail()

    async def scan_delete(self, pattern: str, progress: Progress) -> int:
        self._fail()

    async def scan_page(self, pattern: str, cursor: int, count: int) -> tuple[int, list[str]]:
        self._fail()

    async def count(self, pattern: str, progress: Progress) -> int:
        self._fail()

    async def counters(self, keys: Sequence[str], amount: int, ttl: int) -> list[int]:
        self._fail()

    async def publish(self, channel: str, message: bytes) -> int:
        self._fail()

    def subscriber(self, channel: str) -> Subscriber:
        return _NullSubscriber(self.reason)


class _NullSubscriber(Subscriber):
    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def start(self) -> None:
        raise BackendError(self.reason)

    async def get(self, timeout: float) -> bytes | None:
        raise BackendError(self.reason)

    async def close(self) -> None:
        return None
