"""``CachedEmbedder`` (alias ``EmbeddingService``): embeddings never paid for twice.

It wraps any provider, an :class:`~gathering_cache.agents.providers.EmbeddingProvider` or a batch
function ``(texts: list[str]) -> list[list[float]]`` (async or sync), and puts the embedding
cache in front of it:

* lookups are batched: one round trip for a whole ``embed_many``;
* only misses go to the provider, ``max_batch_size`` texts per call, duplicates once;
* **single-flight** (:mod:`gathering_cache.core.singleflight`): concurrent coroutines asking
  for the same uncached text share one provider call; across processes sharing a Redis, a
  short-lived lock per text makes the others wait for the first result (bounded by
  ``wait_timeout``; then they compute). A lock is released only by its owner
  (compare-and-delete);
* a provider error reaches every waiter, and nothing is cached.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

from gathering_cache.agents.providers import (
    EmbeddingProvider,
    OpenAIEmbeddings,
    OpenAISDKEmbeddings,
    openai_installed,
)
from gathering_cache.caches.embeddings import check_vector
from gathering_cache.core.keys import (
    check_dimensions,
    check_limit,
    check_model,
    check_number,
    check_text,
)
from gathering_cache.core.singleflight import SingleFlight
from gathering_cache.errors import ArgumentTypeError, ProviderError
from gathering_cache.manager import AsyncCacheManager

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["CachedEmbedder", "EmbedderStats"]

logger = logging.getLogger(__name__)

Vector: TypeAlias = "array[float] | list[float]"  # a string: array[...] needs Python 3.12
"""A vector as the cache returns it (packed) or the provider gave it (a list)."""
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
        self.stats = EmbedderStats(
            price_per_embedding=check_number(price_per_embedding, "price_per_embedding")
        )
        self._flight: SingleFlight[Vector] = SingleFlight(
            cache.locks,
            lock_ttl=lock_ttl,
            wait_timeout=wait_timeout,
            cross_process=cross_process,
            counters=self.stats,
        )
        self.lock_ttl_ms = self._flight.lock_ttl_ms
        self.wait_timeout = self._flight.wait_timeout
        self.cross_process = self._flight.cross_process
        self._owns: list[Any] = []

    @classmethod
    def from_env(cls, dotenv_path: str | os.PathLike[str] | None = None) -> CachedEmbedder:
        """An embedder on the OpenAI API (OPENAI_API_KEY, OPENAI_BASE_URL,
        OPENAI_EMBEDDING_MODEL) with the cache from the same environment (REDIS_*,
        CACHE_ENABLED, GATHERING_CACHE_*). :meth:`aclose` closes both.

        The provider is :class:`OpenAISDKEmbeddings` (the official SDK: its retries, base64
        float32 vectors) when the ``openai`` package is installed, else the plain-HTTP
        :class:`OpenAIEmbeddings`.

        Raises:
            ConfigurationError: OPENAI_API_KEY is not set while OPENAI_BASE_URL is OpenAI's
                own API (the default); a local OpenAI-compatible server needs no key.
        """
        provider: OpenAIEmbeddings | OpenAISDKEmbeddings = (
            OpenAISDKEmbeddings.from_env(dotenv_path)
            if openai_installed()
            else OpenAIEmbeddings.from_env(dotenv_path)
        )
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
        found: dict[str, Vector] = {}
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
        if pending:
            key_of = {
                text: self.cache.embeddings.key(text, self.model, self.dimensions)
                for text in pending
            }
            text_of = {key: text for text, key in key_of.items()}

            async def compute(keys: list[str]) -> dict[str, Vector]:
                vectors = await self._embed_and_store([text_of[key] for key in keys])
                return {key_of[text]: vector for text, vector in vectors.items()}

            async def lookup(keys: list[str]) -> dict[str, Vector]:
                looked_up = await self.cache.embeddings.lookup(
                    [text_of[key] for key in keys], self.model, self.dimensions
                )
                return {
                    key: vector
                    for key, (vector, _) in zip(keys, looked_up, strict=True)
                    if vector is not None
                }

            shared = await self._flight.run_many(list(text_of), compute, lookup)
            found.update((text_of[key], vector) for key, vector in shared.items())
        return [list(found[text]) for text in texts]

    @property
    def _inflight(self) -> dict[str, asyncio.Future[Vector]]:
        """Texts (by entry key) a coroutine of this process is computing."""
        return self._flight.inflight

    # -- computing misses -------------------------------------------------------------------------

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
