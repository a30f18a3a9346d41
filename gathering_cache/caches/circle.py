"""Circle context cache: circle id -> multi-agent coordination state, 10 min by default.

Key: ``<prefix>circle:<circle_id>``.
"""

from __future__ import annotations

from typing import Any

from gathering_cache.core import encoding
from gathering_cache.core.engine import CacheCore
from gathering_cache.core.keys import CIRCLE, check_ttl
from gathering_cache.errors import ArgumentTypeError

__all__ = ["CircleCache"]


class CircleCache:
    """Get, set and invalidate circle context through the core."""

    def __init__(self, core: CacheCore) -> None:
        self._engine = core
        self._judge = core.decoder(dict)  # a JSON object
        self._kept = core.keys.circle_keys

    def get(self, circle_id: int) -> Any:
        """The context when the near cache holds it, else the coroutine reading it (see
        :meth:`CacheCore.lookup`: no coroutine frame at all on a near-cache hit)."""
        key = self._kept.get(circle_id) if type(circle_id) is int else None  # checked before
        if key is None:
            key = self._engine.keys.checked_circle(circle_id)
        return self._engine.lookup(CIRCLE, key, self._judge)

    async def set(self, circle_id: int, context: dict[str, Any], ttl: int | None) -> bool:
        key = self._engine.keys.checked_circle(circle_id)
        if not isinstance(context, dict):
            raise ArgumentTypeError(f"context must be a dict, not {type(context).__name__}")
        expiry = check_ttl(ttl) or self._engine.config.circle_context_ttl
        return await self._engine.write(CIRCLE, key, encoding.encode(context), expiry)

    async def invalidate(self, circle_id: int) -> bool:
        key = self._engine.keys.checked_circle(circle_id)
        return await self._engine.delete([key], CIRCLE) > 0
