"""``CachedEmbedder`` (alias ``EmbeddingService``): embeddings never paid for twice.

It wraps any provider, an :class:`~gathering_cache.agents.providers.EmbeddingProvider` or a batch
function ``(texts: list[str]) -> list[list[float]]`` (async or sync), and puts the embedding
cache in front of it:

* lookups are batched: one round trip for a whole ``embed_many``;
* only misses go to the provider, ``max_batch_size`` texts per call, duplicates once;
* **single-flight**: concurrent coroutines asking for the same uncached text share one
  provider call; across processes sharing a Redis, a short-lived lock per text makes the
  others wait for the first result (bounded by ``wait_timeout``; then they compute). A lock is
  released only by its owner (compare-and-delete);
* a provider error reaches every waiter, and nothing is cached.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import secrets
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gathering_cache.agents.providers import EmbeddingProvider, OpenAIEmbeddings
from gathering_cache.caches.embeddings import check_vector
from gathering_cache.core.keys import (
    check_dimensions,
    check_limit,
    check_lock_ttl,
    check_model,
    check_number,
    check_text,
)
from gathering_cache.core.singleflight import OwnerGone, retrieve_exception
from gathering_cache.errors import ArgumentTypeError, ProviderError
from gathering_cache.manager import AsyncCacheManager

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["CachedEmbedder", "EmbedderStats"]

logger = logging.getLogger(__name__)

BatchFunction = Callable[[list[str]], Awaitable[list[list[float]]] | list[list[float]]]


@dataclass
class EmbedderStats:
    """Counters of one :class:`CachedEmbedder`."""

    requested: int = 0
    """Texts asked for (duplicates included)."""
    provider_calls: int = 0
    texts_sent: int = 0
    hits_lru: int = 0
    hits_store: int = 0
    coalesced: int = 0
    """Texts another coroutine of this process was already computing."""
    from_other_processes: int = 0
    """Texts another process computed while this one waited on its lock."""
    provider_errors: int = 0
    price_per_embedding: float = 0.0001

    def snapshot(self) -> dict[str, Any]:
        saved = self.requested - self.texts_sent
        return {
            "requested": self.requested,
            "provider_calls": self.provider_calls,
            "texts_sent": self.texts_sent,
            "hits_lru": self.hits_lru,
            "hits_store": self.hits_store,
            "coalesced": self.coalesced,
            "from_other_processes": self.from_other_processes,
            "provider_errors": self.provider_errors,
            "embeddings_saved": saved,
            "saved_ratio": round(saved / self.requested, 4) if self.requested else 0.0,
            "estimated_cost_saved": round(saved * self.price_per_embedding, 6),
        }


class CachedEmbedder:
    """Embed texts through a provider with the cache in front (see the module docstring).

    Args:
        provider: an ``EmbeddingProvider`` (``model`` and ``dimensions`` are taken from it) or a
            batch function, async or sync.
        cache: the cache manager to use.
        model: the model name for the cache keys (default: the provider's). Pass it with a
            plain function, so that two models never share entries.
        dimensions: the vector size asked of the model, when it has several.
        max_batch_size: texts per provider call.
        price_per_embedding: for the cost-saved estimate (default $0.0001).
        lock_ttl: seconds a cross-process compute lock lives if its owner dies.
        wait_timeout: seconds to wait for another process before computing anyway.
        cross_process: coordinate with other processes through Redis locks.
    """

    def __init__(
        self,
        provider: EmbeddingProvider | BatchFunction,
        cache: AsyncCacheManager,
        *,
        model: str | None = None,
        dimensions: int | None = None,
        max_batch_size: int = 256,
        price_per_embedding: float = 0.0001,
        lock_ttl: float = 30.0,
        wait_timeout: float = 10.0,
        cross_process: bool = True,
    ) -> None:
        if not isinstance(cache, AsyncCacheManager):
            raise ArgumentTypeError(f"cache must be an AsyncCacheManager, not {type(cache)}")
        if isinstance(provider, EmbeddingProvider):
            self._call: Callable[[list[str]], Awaitable[list[list[float]]]] = provider.embed
            model = model if model is not None else provider.model
            dimensions = dimensions if dimensions is not None else provider.dimensions
        elif callable(provider):
            self._call = _as_async(provider)
        else:
            raise ArgumentTypeError("provider must be an EmbeddingProvider or a function")
        self.provider = provider
        self.cache = cache
        self.model = check_model(model)
        self.dimensions = check_dimensions(dimensions)
        self.max_batch_size = check_limit(max_batch_size, "max_batch_size")
        self.lock_ttl_ms = check_lock_ttl(lock_ttl)
        self.wait_timeout = check_number(wait_timeout, "wait_timeout")
        self.cross_process = bool(cross_process)
        self.stats = EmbedderStats(
            price_per_embedding=check_number(price_per_embedding, "price_per_embedding")
        )
        self._inflight: dict[str, asyncio.Future[array[float] | list[float]]] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._owns: list[Any] = []

    @classmethod
    def from_env(cls, dotenv_path: str | os.PathLike[str] | None = None) -> CachedEmbedder:
        """An embedder on :class:`OpenAIEmbeddings` (OPENAI_API_KEY, OPENAI_BASE_URL,
        OPENAI_EMBEDDING_MODEL) with the cache from the same environment (REDIS_*,
        CACHE_ENABLED, GATHERING_CACHE_*). :meth:`aclose` closes both.

        Raises:
            ConfigurationError: OPENAI_API_KEY is not set while OPENAI_BASE_URL is OpenAI's
                own API (the default); a local OpenAI-compatible server needs no key.
        """
        provider = OpenAIEmbeddings.from_env(dotenv_path)
        cache = AsyncCacheManager.from_env(dotenv_path)
        embedder = cls(provider, cache)
        embedder._owns = [provider, cache]
        return embedder

    async def aclose(self) -> None:
        """Close the provider and cache this embedder created (``from_env``)."""
        for owned in self._owns:
            await owned.aclose()
        self._owns = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the API --------------------------------------------------------------------------------

    async def embed(self, text: str) -> list[float]:
        """The embedding of one text (from the cache when possible).

        Raises:
            ArgumentTypeError: ``text`` is not a str.
            ProviderError: the provider failed or answered something unusable.
        """
        return (await self.embed_many([text]))[0]

    async def embed_many(self, texts: Sequence[str]) -> list[list[float]]:
        """The embeddings of several texts, in input order; one cache round trip, and only
        the misses sent to the provider (each distinct text once).

        Raises:
            ArgumentTypeError: ``texts`` is not a sequence of str.
            ProviderError: the provider failed or answered something unusable.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ArgumentTypeError(f"texts must be a sequence of str, not {type(texts).__name__}")
        for index, text in enumerate(texts):
            check_text(text, f"texts[{index}]")
        self.stats.requested += len(texts)
        unique = list(dict.fromkeys(texts))
        found: dict[str, array[float] | list[float]] = {}
        if unique:
            looked_up = await self.cache.embeddings.lookup(unique, self.model, self.dimensions)
            for text, (vector, source) in zip(unique, looked_up, strict=True):
                if vector is not None:
                    found[text] = vector
                    if source == "lru":
                        self.stats.hits_lru += 1
                    else:
                        self.stats.hits_store += 1
        pending = [text for text in unique if text not in found]
        while pending:
            mine: list[str] = []
            theirs: list[tuple[str, asyncio.Future[array[float] | list[float]]]] = []
            for text in pending:
                future = self._inflight.get(text)
                if future is None:
                    future = asyncio.get_running_loop().create_future()
                    future.add_done_callback(retrieve_exception)
                    self._inflight[text] = future
                    mine.append(text)
                else:
                    theirs.append((text, future))
            if mine:
                found.update(await self._compute(mine))
            retry: list[str] = []
            for text, future in theirs:
                try:
                    found[text] = await asyncio.shield(future)
                    self.stats.coalesced += 1
                except OwnerGone:
                    retry.append(text)
            pending = retry
        return [list(found[text]) for text in texts]

    # -- computing misses -------------------------------------------------------------------------

    async def _compute(self, texts: list[str]) -> dict[str, array[float] | list[float]]:
        """Compute (or wait for another process to compute) ``texts``; this coroutine owns
        their in-process futures and resolves every one of them, whatever happens."""
        token = secrets.token_hex(8)
        locked: list[str] = []
        results: dict[str, array[float] | list[float]] = {}
        try:
            waiting: list[str] = []
            if self.cross_process:
                taken = await self.cache.embeddings.acquire_locks(
                    texts, self.model, self.dimensions, token, self.lock_ttl_ms
                )
                if taken is not None:
                    locked = [t for t, ok in zip(texts, taken, strict=True) if ok]
                    waiting = [t for t, ok in zip(texts, taken, strict=True) if not ok]
            if locked or waiting:
                results.update(await self._under_lock(locked, token))
            else:  # no coordination possible (or wanted): compute
                results.update(await self._embed_and_store(texts))
            locked = []
            if waiting:
                results.update(await self._wait_for_others(waiting, token))
        except BaseException as exc:
            # Settle the waiters first: nothing below may leave them pending forever.
            error = exc if isinstance(exc, Exception) else OwnerGone()
            for text in texts:
                future = self._inflight.pop(text, None)
                if future is not None and not future.done():
                    future.set_exception(error)
            if locked:  # best effort, without awaiting (we may be being cancelled)
                task = asyncio.ensure_future(self._release(locked, token))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            raise
        for text in texts:
            future = self._inflight.pop(text, None)
            if future is not None and not future.done():
                future.set_result(results[text])
        return results

    async def _release(self, texts: list[str], token: str) -> None:
        if texts:
            await self.cache.embeddings.release_locks(texts, self.model, self.dimensions, token)

    async def _under_lock(
        self, texts: list[str], token: str
    ) -> dict[str, array[float] | list[float]]:
        """Compute texts whose locks we hold, then release them. Looks them up once more
        first: another process may have stored one between our lookup and our lock."""
        results: dict[str, array[float] | list[float]] = {}
        try:
            if texts:
                found = await self.cache.embeddings.lookup(texts, self.model, self.dimensions)
                for text, (vector, _) in zip(texts, found, strict=True):
                    if vector is not None:
                        results[text] = vector
                        self.stats.from_other_processes += 1
                missing = [t for t in texts if t not in results]
                results.update(await self._embed_and_store(missing))
        finally:
            await self._release(texts, token)
        return results

    async def _wait_for_others(
        self, texts: list[str], token: str
    ) -> dict[str, array[float] | list[float]]:
        """Poll for texts another process holds the lock of. A text whose lock frees up with
        no value (its owner failed) is taken over; at the deadline the rest is computed."""
        results: dict[str, array[float] | list[float]] = {}
        deadline = time.monotonic() + self.wait_timeout
        delay = 0.01
        pending = texts
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.2)
            looked_up = await self.cache.embeddings.lookup(pending, self.model, self.dimensions)
            still: list[str] = []
            for text, (vector, _) in zip(pending, looked_up, strict=True):
                if vector is not None:
                    results[text] = vector
                    self.stats.from_other_processes += 1
                else:
                    still.append(text)
            if not still:
                break
            taken = await self.cache.embeddings.acquire_locks(
                still, self.model, self.dimensions, token, self.lock_ttl_ms
            )
            if taken is None:  # Redis went away: no more coordination
                break
            mine = [t for t, ok in zip(still, taken, strict=True) if ok]
            if mine:
                results.update(await self._under_lock(mine, token))
            pending = [t for t, ok in zip(still, taken, strict=True) if not ok]
        rest = [t for t in texts if t not in results]
        if rest:
            logger.debug("computing %d texts after waiting on others", len(rest))
            results.update(await self._embed_and_store(rest))
        return results

    async def _embed_and_store(self, texts: list[str]) -> dict[str, list[float]]:
        results: dict[str, list[float]] = {}
        for start in range(0, len(texts), self.max_batch_size):
            chunk = texts[start : start + self.max_batch_size]
            vectors = await self._call_provider(chunk)
            await self.cache.set_embeddings(
                chunk, vectors, model=self.model, dimensions=self.dimensions
            )
            results.update(zip(chunk, vectors, strict=True))
        return results

    async def _call_provider(self, texts: list[str]) -> list[list[float]]:
        self.stats.provider_calls += 1
        self.stats.texts_sent += len(texts)
        try:
            vectors = await self._call(list(texts))
        except ProviderError:
            self.stats.provider_errors += 1
            raise
        except Exception as exc:
            self.stats.provider_errors += 1
            raise ProviderError(f"embedding provider failed: {type(exc).__name__}: {exc}") from exc
        return self._checked(vectors, len(texts))

    def _checked(self, vectors: Any, expected: int) -> list[list[float]]:
        tolist = getattr(vectors, "tolist", None)
        if callable(tolist) and not isinstance(vectors, (str, bytes)):
            # A 2-D numpy array (what sentence-transformers' encode() returns), any layout.
            vectors = tolist()
        if not isinstance(vectors, Sequence) or isinstance(vectors, (str, bytes)):
            self.stats.provider_errors += 1
            raise ProviderError(f"provider returned {type(vectors).__name__}, not a list")
        if len(vectors) != expected:
            self.stats.provider_errors += 1
            raise ProviderError(f"provider returned {len(vectors)} vectors for {expected} texts")
        checked: list[list[float]] = []
        for index, vector in enumerate(vectors):
            try:
                checked.append(check_vector(vector, self.dimensions))
            except (TypeError, ValueError) as exc:
                self.stats.provider_errors += 1
                raise ProviderError(f"provider returned a bad vector #{index}: {exc}") from None
        sizes = {len(v) for v in checked}
        if len(sizes) > 1:
            self.stats.provider_errors += 1
            raise ProviderError(f"provider returned vectors of different sizes: {sorted(sizes)}")
        return checked


def _as_async(function: BatchFunction) -> Callable[[list[str]], Awaitable[list[list[float]]]]:
    if inspect.iscoroutinefunction(function):
        return function

    async def call(texts: list[str]) -> list[list[float]]:
        result = await asyncio.to_thread(function, texts)
        if inspect.isawaitable(result):  # a callable object with an async __call__
            result = await result
        return result

    return call


EmbeddingService = CachedEmbedder
"""Another name for :class:`CachedEmbedder` (``EmbeddingService.from_env()``)."""
