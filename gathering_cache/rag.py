"""RAG results cache: (agent, query) -> recalled memories, 5 min by default.

Keys: ``<prefix>rag:agent:<agent_id>:<16 hex of sha256(query)>`` (the seed's). Only
unfiltered recall queries belong here (the seed's rule): a filtered query's results depend on
more than the query text, so :class:`~gathering_cache.MemoryManager` skips the cache for them.

Invalidation never scans the keyspace. Each agent has a generation counter
(``<prefix>rag:gen:<agent_id>``) and there is one for everyone (``<prefix>rag:gen:all``); an
entry records the generations it was computed under and is read together with the current
ones (one MGET), so an entry is valid only while both are unchanged. ``invalidate(agent_id)``
increments the agent's counter — from that moment no entry of the agent is readable, including
one a concurrent writer stores afterwards with results computed before — and then deletes the
agent's entries listed in its index set (``<prefix>rag:index:<agent_id>``) to free memory and
count them. Cost: an INCR, an atomic SMEMBERS+DEL of one key, and one multi-key UNLINK — flat in
the size of Redis, and cluster-safe (no cross-slot transaction or script).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from gathering_cache import encoding
from gathering_cache.core import UNAVAILABLE, CacheCore
from gathering_cache.errors import ArgumentTypeError
from gathering_cache.keys import RAG, check_id, check_text, check_ttl

__all__ = ["Generation", "RagCache"]

logger = logging.getLogger(__name__)

Generation = tuple[int, int]
"""(agent generation, global generation) at the moment results started being computed."""


def _counter(raw: Any) -> int:
    if raw is None:
        return 0
    try:
        return int(raw)
    except (TypeError, ValueError):  # not a counter of ours: treat as a fresh generation
        return -1


_SEEN_MAX = 10_000


class RagCache:
    """Get, set and invalidate RAG results through the core."""

    def __init__(self, core: CacheCore) -> None:
        self._core = core
        # Invalidations that could not reach Redis: owed, retried before this process reads
        # or writes those agents' entries again (never served stale meanwhile).
        self._owed: set[int] = set()
        self._owed_all = False
        # The generation seen at each recent miss, for a write that does not pass one (the
        # seed's get -> compute -> set): results computed across an invalidation stay stale.
        self._seen: OrderedDict[str, Generation] = OrderedDict()

    async def _settle(self, agent_id: int) -> bool:
        """Pay owed invalidations; False while one for this agent is still owed."""
        if self._owed_all:
            if await self._core.incr(self._core.keys.rag_generation(None)) is None:
                return False
            self._owed_all = False
        if agent_id in self._owed:
            if await self._core.incr(self._core.keys.rag_generation(agent_id)) is None:
                return False
            self._owed.discard(agent_id)
        return True

    def _keys(self, agent_id: int) -> list[str]:
        keys = self._core.keys
        return [keys.rag_generation(agent_id), keys.rag_generation(None)]

    async def generation(self, agent_id: int) -> Generation | None:
        """The agent's current generation; ``None`` when the store cannot answer."""
        raws = await self._core.get_many_raw(self._keys(check_id(agent_id, "agent_id")))
        if raws is UNAVAILABLE:
            return None
        return _counter(raws[0]), _counter(raws[1])

    async def get(self, agent_id: int, query: str) -> list[dict[str, Any]] | None:
        agent_id = check_id(agent_id, "agent_id")
        key = self._core.keys.rag(agent_id, check_text(query, "query"))
        stats = self._core.stats
        if (self._owed or self._owed_all) and not await self._settle(agent_id):
            stats.miss(RAG)
            return None
        raws = await self._core.get_many_raw([key, *self._keys(agent_id)])
        if raws is UNAVAILABLE:
            stats.miss(RAG)
            return None
        current = (_counter(raws[1]), _counter(raws[2]))
        if raws[0] is None:
            self._remember(key, current)
            stats.miss(RAG)
            return None
        try:
            entry = encoding.decode(raws[0])
        except encoding.DecodeError:
            entry = None
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[2], list)
            and isinstance(entry[0], int)
            and isinstance(entry[1], int)
        ):
            stats.errors += 1
            stats.miss(RAG)
            return None
        if (entry[0], entry[1]) != current:
            self._remember(key, current)
            stats.miss(RAG)  # invalidated: computed under an older generation
            return None
        stats.hit(RAG)
        results: list[dict[str, Any]] = entry[2]
        return results

    async def set(
        self,
        agent_id: int,
        query: str,
        results: list[dict[str, Any]],
        ttl: int | None,
        generation: Generation | None = None,
    ) -> bool:
        agent_id = check_id(agent_id, "agent_id")
        key = self._core.keys.rag(agent_id, check_text(query, "query"))
        if not isinstance(results, list):
            raise ArgumentTypeError(f"results must be a list, not {type(results).__name__}")
        if generation is not None and not (
            isinstance(generation, tuple)
            and len(generation) == 2
            and all(isinstance(g, int) and not isinstance(g, bool) for g in generation)
        ):
            raise ArgumentTypeError("generation must be the value get_rag_generation returned")
        expiry = check_ttl(ttl) or self._core.config.rag_results_ttl
        encoding.encode(results)  # refuse what cannot be stored before any I/O
        if (self._owed or self._owed_all) and not await self._settle(agent_id):
            self._core.stats.write_failures += 1
            return False
        if generation is None:
            generation = self._seen.pop(key, None)
        if generation is None:
            generation = await self.generation(agent_id)
            if generation is None:
                self._core.stats.write_failures += 1
                return False
        data = encoding.encode([generation[0], generation[1], results])
        index = self._core.keys.rag_index(agent_id)
        return await self._core.set_indexed([(key, data)], expiry, index)

    async def invalidate(self, agent_id: int) -> int:
        """Make every entry of the agent unreadable, then delete them; how many were live."""
        agent_id = check_id(agent_id, "agent_id")
        keys = self._core.keys
        if await self._core.incr(keys.rag_generation(agent_id)) is None:
            if not self._owed and not self._owed_all:  # once per outage, not per call
                # During an outage the breaker has said so already; otherwise say it here.
                log = logger.warning if self._core.policy.available else logger.debug
                log(
                    "invalidating agent %d's RAG results failed; this "
                    "process will not read them until the invalidation reaches Redis",
                    agent_id,
                )
            self._owed.add(agent_id)
            return 0
        members = await self._core.pop_index(keys.rag_index(agent_id))
        return await self._core.delete(members) if members else 0

    async def invalidate_all(self) -> bool:
        """Make every agent's entries unreadable (O(1); they expire with their TTL)."""
        if await self._core.incr(self._core.keys.rag_generation(None)) is None:
            self._owed_all = True
            return False
        return True

    def _remember(self, key: str, generation: Generation) -> None:
        self._seen[key] = generation
        self._seen.move_to_end(key)
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
