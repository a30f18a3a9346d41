"""LangChain on the cache (the ``[langchain]`` extra; imports ``langchain_core``).

* :class:`GatheringByteStore`: a ``ByteStore`` (``BaseStore[str, bytes]``), for
  ``CacheBackedEmbeddings.from_bytes_store(embedder, store, namespace=...)`` or any other
  byte store user; ``yield_keys`` lists with SCAN, never KEYS.
* :class:`GatheringVectorStore`: a ``BaseStore[str, list[float]]`` storing vectors packed
  (6,146 bytes for a 1536-d float32 vector instead of ~45 KB of JSON through a byte store),
  for ``CacheBackedEmbeddings(model, document_embedding_store=...)``.
* :class:`GatheringEmbeddings`: any LangChain ``Embeddings`` with each text's vector cached
  packed as float32 or float64 (lossless), keyed by text and the model name you give.
* :class:`GatheringLLMCache`: a ``BaseCache`` for ``set_llm_cache(...)``: chat and text
  generations keyed by prompt and the model's parameters (LangChain's ``llm_string``), stored
  as JSON (messages through ``message_to_dict``; nothing is unpickled or imported).

Each takes one manager. A :class:`~gathering_cache.CacheManager` serves the sync and the
async methods alike (its private loop, one pool, one set of stats); an
:class:`~gathering_cache.AsyncCacheManager` serves the async methods only (LangChain's async
entry points: ``ainvoke``, ``aembed_documents`` ...). When Redis is down every method
answers as an empty cache and LangChain goes on.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.embeddings import Embeddings
from langchain_core.messages import message_to_dict, messages_from_dict
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.stores import BaseStore, ByteStore

from gathering_cache.core.keys import check_ttl
from gathering_cache.errors import ArgumentTypeError
from gathering_cache.integrations._portal import Bridge
from gathering_cache.manager import AsyncCacheManager
from gathering_cache.sync import CacheManager

__all__ = ["GatheringByteStore", "GatheringEmbeddings", "GatheringLLMCache", "GatheringVectorStore"]

_GLOB = str.maketrans({c: f"\\{c}" for c in "*?[]\\"})


def _escape(text: str) -> str:
    """``text`` as a literal in a glob pattern."""
    return text.translate(_GLOB)


class _Keyed:
    """What both LangChain stores share: their keys live under ``_head``; deleting and
    listing them, sync and async, through the bridge."""

    _bridge: Bridge
    _head: str

    async def _delete(self, manager: AsyncCacheManager, keys: Sequence[str]) -> None:
        raise NotImplementedError

    async def _list(self, manager: AsyncCacheManager, prefix: str | None) -> list[str]:
        pattern = f"{_escape(self._head)}{_escape(prefix or '')}*"
        return [k[len(self._head) :] async for k in manager.scan_keys(pattern)]

    def mdelete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (absent ones are ignored)."""
        self._bridge.call_sync(lambda m: self._delete(m, keys), None)

    async def amdelete(self, keys: Sequence[str]) -> None:
        await self._bridge.call(lambda m: self._delete(m, keys), None)

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        """The store's keys starting with ``prefix`` (SCAN; a key may be listed twice)."""
        none: list[str] = []
        yield from self._bridge.call_sync(lambda m: self._list(m, prefix), none)

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        none: list[str] = []
        for key in await self._bridge.call(lambda m: self._list(m, prefix), none):
            yield key


class GatheringByteStore(_Keyed, ByteStore):
    """A LangChain ``ByteStore`` on the cache: keys ``<prefix>lc:<namespace>:<key>``, values
    the bytes (base64 inside the JSON envelope), each expiring after ``ttl``.

    Args:
        cache: the manager (a ``CacheManager`` for the sync methods too).
        namespace: the key segment separating this store's keys from others'.
        ttl: entry lifetime in seconds (default ``default_ttl``, 24 h).

    Raises:
        ArgumentTypeError / InvalidArgumentError: a bad argument.
    """

    def __init__(
        self,
        cache: AsyncCacheManager | CacheManager,
        *,
        namespace: str = "store",
        ttl: int | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ArgumentTypeError("namespace must be a non-empty str")
        self._bridge = Bridge(cache)
        self._ttl = check_ttl(ttl)
        self._head = f"{self._bridge.prefix}lc:{namespace}:"

    def _keys(self, keys: Sequence[str]) -> list[str]:
        return [self._head + key for key in keys]

    async def _get(self, manager: AsyncCacheManager, keys: Sequence[str]) -> list[bytes | None]:
        found = await manager.get_many(self._keys(keys)) if keys else []
        return [base64.b64decode(v) if isinstance(v, str) else None for v in found]

    async def _set(self, manager: AsyncCacheManager, pairs: Sequence[tuple[str, bytes]]) -> None:
        if pairs:
            mapping = {self._head + k: base64.b64encode(v).decode() for k, v in pairs}
            await manager.set_many(mapping, self._ttl)

    async def _delete(self, manager: AsyncCacheManager, keys: Sequence[str]) -> None:
        for key in self._keys(keys):
            await manager.delete(key)

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` (``None`` where absent), in order."""
        return self._bridge.call_sync(lambda m: self._get(m, keys), [None] * len(keys))

    async def amget(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._bridge.call(lambda m: self._get(m, keys), [None] * len(keys))

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        """Store the pairs (one pipeline)."""
        self._bridge.call_sync(lambda m: self._set(m, key_value_pairs), None)

    async def amset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        await self._bridge.call(lambda m: self._set(m, key_value_pairs), None)


class GatheringVectorStore(_Keyed, BaseStore[str, list[float]]):
    """A LangChain store of vectors, packed like the embedding cache's (float32 when exact,
    else float64): ``CacheBackedEmbeddings(model, document_embedding_store=
    GatheringVectorStore(cache, namespace="text-embedding-3-small"))``.

    Each vector lives in the embedding cache under the store's key (hashed) with ``namespace``
    as its model segment, and a small marker ``<prefix>lc-vec:<namespace>:<key>`` lets
    ``yield_keys`` list the keys with SCAN; both expire after ``ttl``.

    Args:
        cache: the manager (a ``CacheManager`` for the sync methods too).
        namespace: the model segment of the keys (two models must not share one).
        ttl: entry lifetime in seconds (default ``embedding_ttl``).
    """

    def __init__(
        self,
        cache: AsyncCacheManager | CacheManager,
        *,
        namespace: str = "langchain",
        ttl: int | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ArgumentTypeError("namespace must be a non-empty str")
        self._bridge = Bridge(cache)
        self._namespace = namespace
        config = self._bridge.manager.config
        self._ttl = check_ttl(ttl) or config.embedding_ttl
        self._head = f"{self._bridge.prefix}lc-vec:{namespace}:"

    async def _get(self, manager: AsyncCacheManager, keys: Sequence[str]) -> list[Any]:
        if not keys:
            return []
        found = await manager.get_embeddings(keys, model=self._namespace)
        return [list(v) if v is not None else None for v in found]

    async def _set(
        self, manager: AsyncCacheManager, pairs: Sequence[tuple[str, list[float]]]
    ) -> None:
        if pairs:
            keys = [k for k, _ in pairs]
            await manager.set_embeddings(
                keys, [v for _, v in pairs], self._ttl, model=self._namespace
            )
            await manager.set_many({self._head + k: 1 for k in keys}, self._ttl)

    async def _delete(self, manager: AsyncCacheManager, keys: Sequence[str]) -> None:
        for key in keys:
            await manager.delete(manager.embeddings.key(key, self._namespace, None))
            await manager.delete(self._head + key)

    def mget(self, keys: Sequence[str]) -> list[list[float] | None]:
        """The vectors of ``keys`` (``None`` where absent), in order."""
        return self._bridge.call_sync(lambda m: self._get(m, keys), [None] * len(keys))

    async def amget(self, keys: Sequence[str]) -> list[list[float] | None]:
        return await self._bridge.call(lambda m: self._get(m, keys), [None] * len(keys))

    def mset(self, key_value_pairs: Sequence[tuple[str, list[float]]]) -> None:
        """Store the vectors (checked first: a bad one raises and nothing is written)."""
        self._bridge.call_sync(lambda m: self._set(m, key_value_pairs), None)

    async def amset(self, key_value_pairs: Sequence[tuple[str, list[float]]]) -> None:
        await self._bridge.call(lambda m: self._set(m, key_value_pairs), None)


class GatheringEmbeddings(Embeddings):
    """Any LangChain ``Embeddings`` with the cache in front: only texts not cached reach the
    model; vectors are stored packed (float32 when exact, else float64), keyed by text,
    ``model`` and ``dimensions``.

    Args:
        embeddings: the model to wrap (``OpenAIEmbeddings``, ``HuggingFaceEmbeddings`` ...).
        cache: the manager (a ``CacheManager`` for the sync methods too).
        model: the model's name in the keys (two models must not share one).
        dimensions: part of the key, for models whose size can be chosen.
        ttl: entry lifetime (default ``embedding_ttl``).
    """

    def __init__(
        self,
        embeddings: Embeddings,
        cache: AsyncCacheManager | CacheManager,
        *,
        model: str,
        dimensions: int | None = None,
        ttl: int | None = None,
    ) -> None:
        if not isinstance(embeddings, Embeddings):
            raise ArgumentTypeError(
                f"embeddings must be a LangChain Embeddings, not {type(embeddings).__name__}"
            )
        self.embeddings = embeddings
        self.model = model
        self.dimensions = dimensions
        self.ttl = check_ttl(ttl)
        self._bridge = Bridge(cache)

    async def _lookup(self, manager: AsyncCacheManager, texts: list[str]) -> list[Any]:
        return await manager.get_embeddings(texts, model=self.model, dimensions=self.dimensions)

    async def _store(
        self, manager: AsyncCacheManager, texts: list[str], vectors: list[list[float]]
    ) -> bool:
        return await manager.set_embeddings(
            texts, vectors, self.ttl, model=self.model, dimensions=self.dimensions
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        found = self._bridge.call_sync(lambda m: self._lookup(m, texts), [None] * len(texts))
        missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        fresh = self.embeddings.embed_documents(missing) if missing else []
        if missing:
            self._bridge.call_sync(lambda m: self._store(m, missing, fresh), False)
        return _merge(texts, found, missing, fresh)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        found = await self._bridge.call(lambda m: self._lookup(m, texts), [None] * len(texts))
        missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        fresh = await self.embeddings.aembed_documents(missing) if missing else []
        if missing:
            await self._bridge.call(lambda m: self._store(m, missing, fresh), False)
        return _merge(texts, found, missing, fresh)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]


def _merge(
    texts: list[str], found: list[Any], missing: list[str], fresh: list[list[float]]
) -> list[list[float]]:
    computed = dict(zip(missing, fresh, strict=True))
    return [
        list(vector) if vector is not None else list(computed[text])
        for text, vector in zip(texts, found, strict=True)
    ]


class GatheringLLMCache(BaseCache):
    """A LangChain LLM cache (``set_llm_cache(GatheringLLMCache(cache))``): generations
    keyed ``<prefix>lc-llm:<32 hex of sha256(llm_string, prompt)>``.

    LangChain decides what to cache: every call of a model whose ``cache`` is not ``False``,
    whatever its temperature (its contract, kept here). Entries expire after ``ttl``
    (default ``llm_response_ttl``).

    Args:
        cache: the manager (a ``CacheManager`` for ``invoke`` as well as ``ainvoke``).
        ttl: entry lifetime in seconds.
    """

    def __init__(self, cache: AsyncCacheManager | CacheManager, *, ttl: int | None = None):
        self._bridge = Bridge(cache)
        self._ttl = check_ttl(ttl) or self._bridge.manager.config.llm_response_ttl
        self._head = f"{self._bridge.prefix}lc-llm:"

    def _key(self, prompt: str, llm_string: str) -> str:
        digest = hashlib.sha256(f"{len(llm_string)}:{llm_string}{prompt}".encode())
        return self._head + digest.hexdigest()[:32]

    async def _read(self, manager: AsyncCacheManager, key: str) -> RETURN_VAL_TYPE | None:
        found = await manager.get(key)
        if not isinstance(found, list):
            return None
        try:
            return [_generation(item) for item in found]
        except (KeyError, TypeError, ValueError):  # stored data is not trusted: a miss
            return None

    async def _write(self, manager: AsyncCacheManager, key: str, value: RETURN_VAL_TYPE) -> None:
        await manager.set(key, [_stored(g) for g in value], self._ttl)

    async def _clear(self, manager: AsyncCacheManager) -> None:
        await manager.delete_pattern(f"{_escape(self._head)}*")

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        key = self._key(prompt, llm_string)
        return self._bridge.call_sync(lambda m: self._read(m, key), None)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        key = self._key(prompt, llm_string)
        return await self._bridge.call(lambda m: self._read(m, key), None)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        key = self._key(prompt, llm_string)
        self._bridge.call_sync(lambda m: self._write(m, key, return_val), None)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        key = self._key(prompt, llm_string)
        await self._bridge.call(lambda m: self._write(m, key, return_val), None)

    def clear(self, **kwargs: Any) -> None:
        """Drop every entry of this cache (SCAN + UNLINK under the prefix)."""
        self._bridge.call_sync(self._clear, None)

    async def aclear(self, **kwargs: Any) -> None:
        await self._bridge.call(self._clear, None)


def _stored(generation: Generation) -> dict[str, Any]:
    if isinstance(generation, ChatGeneration):
        return {
            "chat": message_to_dict(generation.message),
            "info": generation.generation_info,
        }
    return {"text": generation.text, "info": generation.generation_info}


def _generation(item: Any) -> Generation:
    if "chat" in item:
        message = messages_from_dict([item["chat"]])[0]
        return ChatGeneration(message=message, generation_info=item.get("info"))
    return Generation(text=item["text"], generation_info=item.get("info"))
