"""LlamaIndex on the cache (the ``[llama-index]`` extra; imports ``llama_index.core``).

* :class:`GatheringKVStore`: a ``BaseKVStore``, for ``IngestionCache(cache=...)`` (an
  ``IngestionPipeline(cache=...)`` then skips the transformations it has already run),
  ``BaseEmbedding(embeddings_cache=...)``, or any other KV store user. ``get_all`` (and so
  ``IngestionCache.clear()``) lists one collection with SCAN, never KEYS. Keys are
  ``<prefix>li:<collection>:<key>``; values JSON, expiring after ``ttl``.
* :class:`GatheringEmbedding`: any LlamaIndex embedding model with each text's vector cached
  packed (float32 when exact, else float64), keyed by text and the model name.

Each takes one manager: a :class:`~gathering_cache.CacheManager` serves the sync and the
async methods; an :class:`~gathering_cache.AsyncCacheManager` the async ones only. When
Redis is down every method answers as an empty store and LlamaIndex goes on.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.storage.kvstore.types import DEFAULT_COLLECTION, BaseKVStore

from gathering_cache.core.keys import check_ttl
from gathering_cache.errors import ArgumentTypeError
from gathering_cache.integrations._portal import Bridge
from gathering_cache.manager import AsyncCacheManager
from gathering_cache.sync import CacheManager

__all__ = ["GatheringEmbedding", "GatheringKVStore"]

_GLOB = str.maketrans({c: f"\\{c}" for c in "*?[]\\"})


class GatheringKVStore(BaseKVStore):
    """A LlamaIndex key-value store on the cache (see the module docstring).

    Args:
        cache: the manager (a ``CacheManager`` for the sync methods too).
        ttl: entry lifetime in seconds (default ``default_ttl``, 24 h).
    """

    def __init__(self, cache: AsyncCacheManager | CacheManager, *, ttl: int | None = None):
        self._bridge = Bridge(cache)
        self._ttl = check_ttl(ttl)
        self._head = f"{self._bridge.prefix}li:"

    def _key(self, key: str, collection: str) -> str:
        if not isinstance(key, str) or not isinstance(collection, str):
            raise ArgumentTypeError("key and collection must be str")
        return f"{self._head}{collection}:{key}"

    async def _put_all(
        self, manager: AsyncCacheManager, pairs: list[tuple[str, dict[str, Any]]], collection: str
    ) -> None:
        if pairs:
            await manager.set_many({self._key(k, collection): v for k, v in pairs}, self._ttl)

    async def _get(self, manager: AsyncCacheManager, key: str) -> dict[str, Any] | None:
        found = await manager.get(key)
        return found if isinstance(found, dict) else None

    async def _get_all(
        self, manager: AsyncCacheManager, collection: str
    ) -> dict[str, dict[str, Any]]:
        head = f"{self._head}{collection}:"
        keys = list(
            dict.fromkeys([k async for k in manager.scan_keys(head.translate(_GLOB) + "*")])
        )
        result: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for key, value in zip(chunk, await manager.get_many(chunk), strict=True):
                if isinstance(value, dict):
                    result[key[len(head) :]] = value
        return result

    def put(self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> None:
        self.put_all([(key, val)], collection=collection)

    async def aput(
        self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION
    ) -> None:
        await self.aput_all([(key, val)], collection=collection)

    def put_all(
        self,
        kv_pairs: list[tuple[str, dict[str, Any]]],
        collection: str = DEFAULT_COLLECTION,
        batch_size: int = 1,
    ) -> None:
        pairs = list(kv_pairs)
        self._bridge.call_sync(lambda m: self._put_all(m, pairs, collection), None)

    async def aput_all(
        self,
        kv_pairs: list[tuple[str, dict[str, Any]]],
        collection: str = DEFAULT_COLLECTION,
        batch_size: int = 1,
    ) -> None:
        pairs = list(kv_pairs)
        await self._bridge.call(lambda m: self._put_all(m, pairs, collection), None)

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        full = self._key(key, collection)
        return self._bridge.call_sync(lambda m: self._get(m, full), None)

    async def aget(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        full = self._key(key, collection)
        return await self._bridge.call(lambda m: self._get(m, full), None)

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        """Every entry of ``collection`` (SCAN, then MGET in batches)."""
        none: dict[str, dict[str, Any]] = {}
        return self._bridge.call_sync(lambda m: self._get_all(m, collection), none)

    async def aget_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        none: dict[str, dict[str, Any]] = {}
        return await self._bridge.call(lambda m: self._get_all(m, collection), none)

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        full = self._key(key, collection)
        return self._bridge.call_sync(lambda m: m.delete(full), False)

    async def adelete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        full = self._key(key, collection)
        return await self._bridge.call(lambda m: m.delete(full), False)


class GatheringEmbedding(BaseEmbedding):
    """Any LlamaIndex embedding model with the cache in front: only texts not cached reach
    it; vectors are stored packed, keyed by text, ``model_name`` and ``dimensions``.

    Args:
        embed_model: the model to wrap.
        cache: the manager (a ``CacheManager`` for the sync methods too).
        model_name: the model's name in the keys (default: the wrapped model's).
        dimensions: part of the key, for models whose size can be chosen.
        ttl: entry lifetime (default ``embedding_ttl``).
    """

    _inner: BaseEmbedding = PrivateAttr()
    _bridge: Bridge = PrivateAttr()
    _dimensions: int | None = PrivateAttr(default=None)
    _ttl: int | None = PrivateAttr(default=None)

    def __init__(
        self,
        embed_model: BaseEmbedding,
        cache: AsyncCacheManager | CacheManager,
        *,
        model_name: str | None = None,
        dimensions: int | None = None,
        ttl: int | None = None,
    ) -> None:
        if not isinstance(embed_model, BaseEmbedding):
            raise ArgumentTypeError(
                f"embed_model must be a LlamaIndex BaseEmbedding, not {type(embed_model).__name__}"
            )
        super().__init__(
            model_name=model_name or embed_model.model_name,
            embed_batch_size=embed_model.embed_batch_size,
        )
        self._inner = embed_model
        self._bridge = Bridge(cache)
        self._dimensions = dimensions
        self._ttl = check_ttl(ttl)

    @classmethod
    def class_name(cls) -> str:
        return "GatheringEmbedding"

    async def _lookup(self, manager: AsyncCacheManager, texts: list[str]) -> list[Any]:
        return await manager.get_embeddings(
            texts, model=self.model_name, dimensions=self._dimensions
        )

    async def _store(
        self, manager: AsyncCacheManager, texts: list[str], vectors: list[Embedding]
    ) -> bool:
        return await manager.set_embeddings(
            texts, vectors, self._ttl, model=self.model_name, dimensions=self._dimensions
        )

    def _embed(self, texts: list[str], query: bool) -> list[Embedding]:
        found = self._bridge.call_sync(lambda m: self._lookup(m, texts), [None] * len(texts))
        missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        fresh: list[Embedding] = []
        if missing:
            fresh = (
                [self._inner.get_query_embedding(missing[0])]
                if query
                else self._inner.get_text_embedding_batch(missing)
            )
            self._bridge.call_sync(lambda m: self._store(m, missing, fresh), False)
        return _merge(texts, found, missing, fresh)

    async def _aembed(self, texts: list[str], query: bool) -> list[Embedding]:
        found = await self._bridge.call(lambda m: self._lookup(m, texts), [None] * len(texts))
        missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        fresh: list[Embedding] = []
        if missing:
            fresh = (
                [await self._inner.aget_query_embedding(missing[0])]
                if query
                else await self._inner.aget_text_embedding_batch(missing)
            )
            await self._bridge.call(lambda m: self._store(m, missing, fresh), False)
        return _merge(texts, found, missing, fresh)

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query], True)[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._aembed([query], True))[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text], False)[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aembed([text], False))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts, False)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self._aembed(texts, False)


def _merge(
    texts: list[str], found: list[Any], missing: list[str], fresh: list[Embedding]
) -> list[Embedding]:
    computed = dict(zip(missing, fresh, strict=True))
    return [
        list(vector) if vector is not None else list(computed[text])
        for text, vector in zip(texts, found, strict=True)
    ]
