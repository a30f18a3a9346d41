"""RAG results cache: (agent, query) -> recalled memories, 5 min by default.

Keys: ``<prefix>rag:agent:<agent_id>:<16 hex of sha256(query)>`` (the original design's).
Only unfiltered recall queries belong here: a filtered query's results depend on more than
the query text, so :class:`~gathering_cache.MemoryManager` skips the cache for them.

Invalidation never scans the keyspace. Each agent has a generation counter
(``<prefix>rag:gen:<agent_id>``) and there is one for everyone (``<prefix>rag:gen:all``); an
entry records the generations it was computed under and is read together with the current
ones (one MGET), so an entry is valid only while both are unchanged. ``invalidate(agent_id)``
increments the agent's counter — from that moment no entry of the agent is readable, including
one a concurrent writer stores afterwards with results computed before — and then deletes the
agent's entries listed in its index (``<prefix>rag:entries:<agent_id>``) to free memory and
count them. Cost: one one-key script, an atomic ZRANGE+DEL of one key, and one multi-key
UNLINK — flat in the size of Redis, and cluster-safe (no cross-slot transaction or script).

Counters are epochs, not counts: one is created at a random 48-bit value, so a counter that
disappears (its TTL, LRU eviction, a restart that lost data, ``clear_all``) and comes back
never repeats a value it had, and no entry computed before can match it again. That makes it
safe to let counters expire: each one's expiry is extended to outlive every entry written
under it, and an absent counter at read time means "miss" (reading a generation for a write
creates it). A counter that is not a counter (``b"garbage"``, ``b"1.5"``, a list) makes the
agent's entries misses and is repaired with a fresh random value, never served around.

Only keys of the agent's own RAG namespace (``<prefix>rag:agent:<agent_id>:<16 hex>``) are
ever deleted from an index: its members are data anyone who can write under the prefix could
have chosen. The index is scored by expiry and each write drops the members whose entries
have expired, so an agent written for months and never invalidated keeps an index the size
of its live entries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from gathering_cache.core import encoding
from gathering_cache.core.encoding import parse_counter
from gathering_cache.core.engine import UNAVAILABLE, CacheCore
from gathering_cache.core.keys import RAG, check_id, check_text, check_ttl
from gathering_cache.core.observe import Outcome
from gathering_cache.errors import ArgumentTypeError

__all__ = ["Generation", "RagCache"]

logger = logging.getLogger(__name__)

Generation = tuple[int, int]
"""(agent generation, global generation) at the moment results started being computed.
Opaque values: compare them, never do arithmetic on them."""

_SEEN_MAX = 10_000
_SEEN_WINDOW = 60.0
"""Seconds a recorded miss waits for its write: a recall that computes for longer, without
passing ``generation=``, is stored under the generation current at its write."""
_OWED_MAX = 10_000
"""Agents whose invalidation is owed, beyond which one global invalidation is owed instead
(it invalidates them all): memory stays bounded through a long outage."""
_COUNTER_MARGIN = 10
"""Seconds a counter outlives the longest entry written under it (written a moment later)."""


class RagCache:
    """Get, set and invalidate RAG results through the core."""

    def __init__(self, core: CacheCore) -> None:
        self._engine = core
        # Invalidations that could not reach Redis: owed, retried before this process reads
        # or writes those agents' entries again (never served stale meanwhile).
        self._owed: set[int] = set()
        self._owed_all = False
        # The generation seen at each recent miss, for a write that does not pass one (the
        # plain get -> compute -> set): results computed across an invalidation stay stale.
        # Per key: [the oldest generation among misses still waiting for their write, how
        # many are waiting, when the oldest was seen].
        self._seen: OrderedDict[str, list[Any]] = OrderedDict()

    async def _bump(self, agent_id: int | None) -> bool:
        """Increment one generation counter (creating it if absent); False when unavailable."""
        key = self._engine.keys.rag_generation(agent_id)
        ttl = self._engine.config.rag_results_ttl + _COUNTER_MARGIN
        return await self._engine.counters(RAG, [key], 1, ttl) is not None

    async def _settle(self, agent_id: int) -> bool:
        """Pay owed invalidations; False while one for this agent is still owed."""
        if self._owed_all:
            if not await self._bump(None):
                return False
            self._owed_all = False
            self._owed.clear()  # the global increment invalidated every agent
        if agent_id in self._owed:
            if not await self._bump(agent_id):
                return False
            self._owed.discard(agent_id)
        return True

    def _keys(self, agent_id: int) -> list[str]:
        keys = self._engine.keys
        return [keys.rag_generation(agent_id), keys.rag_generation(None)]

    async def _current(self, agent_id: int, ttl: int) -> Generation | None:
        """The agent's generation, creating (or repairing) its counters as needed and making
        them live at least ``ttl`` more seconds; ``None`` when the store cannot answer."""
        values = await self._engine.counters(RAG, self._keys(agent_id), 0, ttl + _COUNTER_MARGIN)
        if values is None:
            return None
        return values[0], values[1]

    async def generation(self, agent_id: int) -> Generation | None:
        """The agent's current generation; ``None`` when the store cannot answer."""
        agent_id = check_id(agent_id, "agent_id")
        return await self._current(agent_id, self._engine.config.rag_results_ttl)

    async def get(self, agent_id: int, query: str) -> list[dict[str, Any]] | None:
        agent_id = check_id(agent_id, "agent_id")
        key = self._engine.keys.rag(agent_id, check_text(query, "query"))
        if (self._owed or self._owed_all) and not await self._settle(agent_id):
            self._engine.report("get", RAG, Outcome.SKIPPED)
            return None
        found = await self._engine.read_many(RAG, [key, *self._keys(agent_id)], _judge, lookups=1)
        if found is None:
            return None
        entry, current = found
        if current is None:
            # Absent (expired, evicted, deleted) or not a counter: nothing can be trusted to
            # be current, so a miss; the counters are created or repaired for the write that
            # follows (a fresh random value: no entry stored before can match it).
            fresh = await self._current(agent_id, self._engine.config.rag_results_ttl)
            if fresh is not None:
                self._remember(key, fresh)
            return None
        if entry is None or (entry[0], entry[1]) != current:
            # Absent, unreadable, or computed under an older generation (invalidated).
            self._remember(key, current)
            return None
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
        """Store results computed under ``generation`` (default: the one seen at this
        process's last miss of the key, else the current one). True when stored, and also
        when the results are already stale (computed before an invalidation): those could
        never be served, so nothing is written. False when the store cannot answer.
        """
        agent_id = check_id(agent_id, "agent_id")
        key = self._engine.keys.rag(agent_id, check_text(query, "query"))
        if not isinstance(results, list):
            raise ArgumentTypeError(f"results must be a list, not {type(results).__name__}")
        if generation is not None and not (
            isinstance(generation, tuple)
            and len(generation) == 2
            and all(isinstance(g, int) and not isinstance(g, bool) for g in generation)
        ):
            raise ArgumentTypeError("generation must be the value get_rag_generation returned")
        expiry = check_ttl(ttl) or self._engine.config.rag_results_ttl
        encoded = encoding.encode(results)  # refuse what cannot be stored before any I/O
        if (self._owed or self._owed_all) and not await self._settle(agent_id):
            self._engine.report("set", RAG, Outcome.SKIPPED)
            return False
        if generation is None:
            generation = self._take(key)
        # The counters must outlive the entry (else it turns into a miss early): extend them
        # first. The same call creates them if absent and reads them for the stale check.
        current = await self._current(agent_id, expiry)
        if current is None:
            self._engine.report("set", RAG, Outcome.SKIPPED)
            return False
        if generation is None:
            generation = current
        elif generation != current:
            # Computed before an invalidation: never servable (a counter never returns to a
            # value it had), so there is nothing worth storing. Not a failure either.
            return True
        data = encoding.prepend(generation, encoded)  # [g0, g1, results], encoded once
        index = self._engine.keys.rag_index(agent_id)
        return await self._engine.write_many(RAG, [(key, data)], expiry, index=index)

    async def invalidate(self, agent_id: int) -> int:
        """Make every entry of the agent unreadable, then delete them; how many were live."""
        agent_id = check_id(agent_id, "agent_id")
        keys = self._engine.keys
        # The increment and the pop of the index go out together: entries written under the
        # old generation are unreadable once the increment lands, whichever reached Redis
        # first (one the pop missed is written after it, under a generation now stale, and
        # expires with its TTL). If the increment fails, the entries popped are left to
        # expire: this process reads none of them until the invalidation is paid.
        index = keys.rag_index(agent_id)
        if self._engine.policy.available:
            bumped, members = await asyncio.gather(
                self._bump(agent_id), self._engine.pop_index(RAG, index)
            )
        else:  # nothing to overlap (and a closed cache answers with no event loop)
            bumped = await self._bump(agent_id)
            members = await self._engine.pop_index(RAG, index) if bumped else []
        if not bumped:
            if not self._owed and not self._owed_all:  # once per outage, not per call
                # During an outage the breaker has said so already; otherwise say it here.
                log = logger.warning if self._engine.policy.available else logger.debug
                log(
                    "invalidating agent %d's RAG results failed; this "
                    "process will not read them until the invalidation reaches Redis",
                    agent_id,
                )
            if self._owed_all or len(self._owed) >= _OWED_MAX:
                self._owed_all = True  # covers this agent too; memory stays bounded
                self._owed.clear()
            else:
                self._owed.add(agent_id)
            return 0
        # Only this agent's own entries: never a counter, another agent's or another
        # application's key, whatever someone wrote into the set.
        own = keys.own_rag(agent_id, members)
        return await self._engine.delete(own, RAG) if own else 0

    async def invalidate_all(self) -> bool:
        """Make every agent's entries unreadable (O(1); they expire with their TTL)."""
        if not await self._bump(None):
            self._owed_all = True
            self._owed.clear()  # the global increment owed covers them
            return False
        return True

    def _remember(self, key: str, generation: Generation) -> None:
        """Record a miss of ``key`` under ``generation``. While earlier misses of the key
        still wait for their write, the oldest generation is kept: two coroutines that miss
        on either side of an invalidation must not let the first one's (stale) results be
        stored under the second one's (current) generation."""
        now = time.monotonic()
        record = self._seen.get(key)
        if record is not None and now - record[2] < _SEEN_WINDOW:
            record[1] += 1
        else:
            self._seen[key] = [generation, 1, now]
        self._seen.move_to_end(key)
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)

    def _take(self, key: str) -> Generation | None:
        """The generation a write without ``generation=`` is stored under (see
        :meth:`_remember`); ``None`` when no recent miss of the key is waiting."""
        record = self._seen.get(key)
        if record is None:
            return None
        if time.monotonic() - record[2] >= _SEEN_WINDOW:
            del self._seen[key]  # too old to tell: the current generation is read instead
            return None
        record[1] -= 1
        if record[1] <= 0:
            del self._seen[key]
        generation: Generation = record[0]
        return generation


def _parse_entry(raw: bytes) -> list[Any] | None:
    """A stored entry, ``[agent generation, global generation, results]``, or ``None`` when
    the bytes are not one."""
    try:
        entry = encoding.decode(raw)
    except encoding.DecodeError:
        return None
    if (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], int)
        and isinstance(entry[1], int)
        and isinstance(entry[2], list)  # items unchecked: set() accepts any list
    ):
        return entry
    return None


def _judge(raws: Any) -> tuple[tuple[list[Any] | None, Generation | None] | None, int, int, int]:
    """What one read (MGET entry, agent counter, global counter) found: ``(entry, current
    generation)`` (either ``None`` when absent or unreadable), a hit only when the entry is
    of the current generation; an unreadable entry, or counters that are not counters (they
    are repaired), count as invalid."""
    if raws is UNAVAILABLE:
        return None, 0, 0, 0
    entry_raw, agent_raw, all_raw = raws
    invalid = 0
    entry = None
    if entry_raw is not None:
        entry = _parse_entry(entry_raw)
        invalid += entry is None
    agent_gen, all_gen = parse_counter(agent_raw), parse_counter(all_raw)
    if (agent_raw is not None and agent_gen is None) or (all_raw is not None and all_gen is None):
        invalid += 1
    current = None if agent_gen is None or all_gen is None else (agent_gen, all_gen)
    hit = current is not None and entry is not None and (entry[0], entry[1]) == current
    return (entry, current), int(hit), invalid, len(entry_raw or b"")
