"""``SyncCachedEmbedder``: :class:`~gathering_cache.CachedEmbedder` for synchronous code, on
the sync facade's loop (one pool, one set of stats, one single-flight table with the async
code sharing that :class:`~gathering_cache.CacheManager`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from gathering_cache.agents.cached_embedder import BatchFunction, CachedEmbedder, EmbedderStats
from gathering_cache.agents.providers import EmbeddingProvider
from gathering_cache.errors import ArgumentTypeError
from gathering_cache.sync import CacheManager

__all__ = ["SyncCachedEmbedder"]


class SyncCachedEmbedder:
    """Embed texts from synchronous code with the cache in front.

    The provider (async, or a plain function) is called on the facade's private loop, so an
    async provider's client must not be used on another loop at the same time.

    Args:
        provider: as for :class:`~gathering_cache.CachedEmbedder`.
        cache: the sync facade.
        options: the other :class:`~gathering_cache.CachedEmbedder` arguments (``model``,
            ``dimensions``, ``max_batch_size``, ...).

    Raises:
        ArgumentTypeError: ``cache`` is not a ``CacheManager``; and as ``CachedEmbedder``.
    """

    def __init__(
        self, provider: EmbeddingProvider | BatchFunction, cache: CacheManager, **options: Any
    ) -> None:
        if not isinstance(cache, CacheManager):
            raise ArgumentTypeError(f"cache must be a CacheManager, not {type(cache).__name__}")
        self.cache = cache
        self.embedder = CachedEmbedder(provider, cache.async_manager, **options)

    @property
    def stats(self) -> EmbedderStats:
        """The embedder's counters (requested, hits, provider calls ...)."""
        return self.embedder.stats

    @property
    def model(self) -> str | None:
        return self.embedder.model

    def embed(self, text: str) -> list[float]:
        """The embedding of one text (see ``CachedEmbedder.embed``)."""
        return self.embed_many([text])[0]

    def embed_many(self, texts: Sequence[str]) -> list[list[float]]:
        """The embeddings of several texts, in input order (see
        ``CachedEmbedder.embed_many``); blocks until they are ready.

        Raises:
            ArgumentTypeError: ``texts`` is not a sequence of str.
            ProviderError: the provider failed or answered something unusable.
        """
        future = self.cache.submit(self.embedder.embed_many(texts))
        if future is None:  # the facade is closed: no cache, the provider alone
            return asyncio.run(self.embedder.embed_many(texts))
        return future.result()
