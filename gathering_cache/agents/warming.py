"""Cache warming: pre-populate the RAG cache with common queries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gathering_cache.agents.agent_memory import MemoryManager
from gathering_cache.core.keys import check_id, check_limit, check_text
from gathering_cache.errors import ArgumentTypeError

__all__ = ["WarmProgress", "WarmReport", "warm_rag_cache"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmProgress:
    """Reported after each query."""

    done: int
    total: int
    agent_id: int
    query: str
    outcome: str  # "computed", "cached" (already there) or "failed"


@dataclass(frozen=True)
class WarmReport:
    total: int
    computed: int
    already_cached: int
    failed: int
    seconds: float


async def warm_rag_cache(
    memory: MemoryManager,
    queries: Mapping[int, Sequence[str]],
    *,
    concurrency: int = 4,
    progress: Callable[[WarmProgress], None] | None = None,
) -> WarmReport:
    """Recall every ``(agent_id, query)`` once so later recalls hit the cache.

    Args:
        memory: the memory manager whose recall fills the cache.
        queries: common queries per agent, e.g. ``{1: ["What are the user's preferences?"]}``.
        concurrency: recalls in flight at once.
        progress: called after each query (from the event loop) with a :class:`WarmProgress`.

    Returns:
        Counts of queries computed, found already cached, and failed (a failure is logged and
        does not stop the others).

    Raises:
        ArgumentTypeError / InvalidArgumentError: queries not a mapping of id to a list of
            str, concurrency not a positive int, progress not callable.
    """
    if not isinstance(memory, MemoryManager):
        raise ArgumentTypeError(f"memory must be a MemoryManager, not {type(memory).__name__}")
    if not isinstance(queries, Mapping) or any(
        isinstance(q, (str, bytes)) or not isinstance(q, Sequence) for q in queries.values()
    ):
        raise ArgumentTypeError("queries must map agent ids to lists of queries")
    concurrency = check_limit(concurrency, "concurrency")
    if progress is not None and not callable(progress):
        raise ArgumentTypeError(f"progress must be callable, not {type(progress).__name__}")
    work = [
        (check_id(agent_id, "agent_id"), check_text(query, "query"))
        for agent_id, agent_queries in queries.items()
        for query in agent_queries
    ]
    counts = {"computed": 0, "cached": 0, "failed": 0}
    done = 0
    semaphore = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def warm(agent_id: int, query: str) -> None:
        nonlocal done
        async with semaphore:
            try:
                if await memory.cache.get_rag_results(agent_id, query) is not None:
                    outcome = "cached"
                else:
                    await memory.recall(agent_id, query)
                    outcome = "computed"
            except Exception as exc:
                logger.warning("warming %r for agent %d failed: %s", query, agent_id, exc)
                outcome = "failed"
        counts[outcome] += 1
        done += 1
        if progress is not None:
            progress(WarmProgress(done, len(work), agent_id, query, outcome))

    await asyncio.gather(*(warm(agent_id, query) for agent_id, query in work))
    return WarmReport(
        total=len(work),
        computed=counts["computed"],
        already_cached=counts["cached"],
        failed=counts["failed"],
        seconds=round(time.perf_counter() - started, 3),
    )
