"""LlamaIndex through its own entry points (IngestionPipeline with an IngestionCache,
embeddings_cache=, an embedding model wrapped): work saved, hit type == miss type, get_all
and clear(), sync and async on one manager, Redis down → LlamaIndex still works."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis

from gathering_cache import AsyncCacheManager, CacheConfig, CacheManager
from tests.servers import RedisServer, free_port

pytest.importorskip("llama_index.core")
from llama_index.core import Document
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.ingestion import IngestionCache, IngestionPipeline
from llama_index.core.schema import BaseNode, TextNode, TransformComponent

from gathering_cache.integrations.llama_index import GatheringEmbedding, GatheringKVStore

SYNC_BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.integration)]


@pytest.fixture(params=SYNC_BACKENDS)
def sync_cache(request: pytest.FixtureRequest) -> Iterator[CacheManager]:
    if request.param == "memory":
        config = CacheConfig(backend="memory")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        flush = redis.Redis.from_url(server.url)
        flush.flushdb()
        flush.close()
        config = CacheConfig(url=server.url)
    with CacheManager(config) as cache:
        yield cache


class Upper(TransformComponent):
    """A transformation that counts the nodes it is given (outside its fields: they are part
    of the cache key LlamaIndex computes)."""

    _seen: list[int] = PrivateAttr(default_factory=list)

    @property
    def seen(self) -> int:
        return sum(self._seen)

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        self._seen.append(len(nodes))
        return [TextNode(text=node.get_content().upper(), id_=node.node_id) for node in nodes]


class CountingEmbedding(MockEmbedding):
    texts: int = 0

    def _get_text_embedding(self, text: str) -> list[float]:
        self.texts += 1
        return [float(len(text)), 0.5] + [0.25] * (self.embed_dim - 2)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [self._get_text_embedding(t) for t in texts]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)


DOCS = [Document(text="hello world", id_="d1"), Document(text="second doc", id_="d2")]


def test_ingestion_pipeline_skips_what_it_has_done(sync_cache: CacheManager) -> None:
    upper = Upper()
    store = GatheringKVStore(sync_cache, ttl=600)
    pipeline = IngestionPipeline(transformations=[upper], cache=IngestionCache(cache=store))
    miss = pipeline.run(documents=DOCS)
    hit = pipeline.run(documents=DOCS)
    assert upper.seen == 2  # the second run came from the cache
    assert [type(n) for n in hit] == [type(n) for n in miss]
    assert [n.get_content() for n in hit] == ["HELLO WORLD", "SECOND DOC"]
    assert len(store.get_all(collection="llama_cache")) == 1
    assert pipeline.cache.cache is store
    pipeline.cache.clear()
    assert store.get_all(collection="llama_cache") == {}
    pipeline.run(documents=DOCS)
    assert upper.seen == 4


async def test_kv_store_async_and_collections(
    cache: AsyncCacheManager, sync_cache: CacheManager
) -> None:
    for manager in (cache, sync_cache):
        store = GatheringKVStore(manager)
        await store.aput("k", {"a": 1}, collection="c1")
        await store.aput_all([("k", {"b": 2}), ("*", {"c": 3})], collection="c[2]")
        assert await store.aget("k", collection="c1") == {"a": 1}
        assert await store.aget_all(collection="c[2]") == {"k": {"b": 2}, "*": {"c": 3}}
        assert await store.adelete("k", collection="c1")
        assert await store.aget("k", collection="c1") is None
    store = GatheringKVStore(sync_cache)
    store.put("x", {"v": 1})
    assert store.get("x") == {"v": 1}
    assert store.delete("x")
    assert not store.delete("x")


def test_embedding_wrapper_and_embeddings_cache(sync_cache: CacheManager) -> None:
    inner = CountingEmbedding(embed_dim=8)
    wrapped = GatheringEmbedding(inner, sync_cache, model_name="mock-8")
    first = wrapped.get_text_embedding_batch(["a", "bb"])
    second = wrapped.get_text_embedding_batch(["bb", "a", "ccc"])
    assert inner.texts == 3
    assert second[:2] == first[::-1]
    assert type(second[0]) is type(first[0]) is list
    assert wrapped.get_query_embedding("a") == first[0]
    assert inner.texts == 3

    # LlamaIndex's own embeddings_cache= takes the KV store as it is.
    native = CountingEmbedding(embed_dim=8, embeddings_cache=GatheringKVStore(sync_cache))
    assert native.get_text_embedding_batch(["z"]) == native.get_text_embedding_batch(["z"])
    assert native.texts == 1


async def test_embedding_wrapper_async(cache: AsyncCacheManager) -> None:
    inner = CountingEmbedding(embed_dim=4)
    wrapped = GatheringEmbedding(inner, cache, model_name="mock-4")
    one = await wrapped.aget_text_embedding_batch(["a", "b"])
    two = await wrapped.aget_text_embedding_batch(["a", "b"])
    assert one == two
    assert inner.texts == 2
    assert await wrapped.aget_query_embedding("a") == one[0]


def test_redis_down_llama_index_still_works() -> None:
    with CacheManager(CacheConfig(host="127.0.0.1", port=free_port())) as down:
        upper = Upper()
        store = GatheringKVStore(down)
        pipeline = IngestionPipeline(transformations=[upper], cache=IngestionCache(cache=store))
        assert len(pipeline.run(documents=DOCS)) == len(pipeline.run(documents=DOCS)) == 2
        assert upper.seen == 4  # no cache, no error
        assert store.get_all() == {}
        inner = CountingEmbedding(embed_dim=4)
        wrapped = GatheringEmbedding(inner, down, model_name="m")
        assert len(wrapped.get_text_embedding_batch(["a"])) == 1
