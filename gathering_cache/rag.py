"""RAG results cache: (agent, query) -> recalled memories, 5 min by default.

Key: ``<prefix>rag:agent:<agent_id>:<16 hex of sha256(query)>``. Only unfiltered recall
queries belong here (the seed's rule, for consistency): a filtered query's results depend on
more than the query text. ``invalidate(agent_id)`` removes every cached query of one agent.
"""

from __future__ import annotations

from typing import Any

from gathering_cache.core import CacheCore
from gathering_cache.errors import ArgumentTypeError
from gathering_cache.keys import RAG, check_id, check_text, check_ttl

__all__ = ["RagCache"]


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


class RagCache:
    """Get, set and invalidate RAG results through the core."""

    def __init__(self, core: CacheCore) -> None:
        self._core = core

    async def get(self, agent_id: int, query: str) -> list[dict[str, Any]] | None:
        key = self._core.keys.rag(check_id(agent_id, "agent_id"), check_text(query, "query"))
        value: list[dict[str, Any]] | None = await self._core.get(key, RAG, _is_list)
        return value

    async def set(
        self, agent_id: int, query: str, results: list[dict[str, Any]], ttl: int | None
    ) -> bool:
        key = self._core.keys.rag(check_id(agent_id, "agent_id"), check_text(query, "query"))
        if not isinstance(results, list):
            raise ArgumentTypeError(f"results must be a list, not {type(results).__name__}")
        expiry = check_ttl(ttl) or self._core.config.rag_results_ttl
        return await self._core.set(key, results, expiry)

    async def invalidate(self, agent_id: int) -> int:
        pattern = self._core.keys.rag_agent_pattern(check_id(agent_id, "agent_id"))
        return await self._core.delete_pattern(pattern)
