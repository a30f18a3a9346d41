"""LangChain through its own entry points (set_llm_cache + fake chat models, Embeddings,
the ByteStore contract): model calls saved, hit type == miss type, sync and async on one
manager, Redis down → LangChain still works."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from gathering_cache import ArgumentTypeError, AsyncCacheManager, CacheConfig, CacheManager
from tests.servers import RedisServer, free_port

pytest.importorskip("langchain_core")
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import FakeListChatModel, FakeListLLM
from langchain_core.messages import AIMessage

from gathering_cache.integrations.langchain import (
    GatheringByteStore,
    GatheringEmbeddings,
    GatheringLLMCache,
    GatheringVectorStore,
)

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


@pytest.fixture
def down() -> Iterator[CacheManager]:
    with CacheManager(CacheConfig(host="127.0.0.1", port=free_port())) as cache:
        yield cache


@pytest.fixture(autouse=True)
def no_global_cache() -> Iterator[None]:
    yield
    set_llm_cache(None)


class CountingEmbedding(DeterministicFakeEmbedding):
    texts: list[str] = []  # noqa: RUF012 - a pydantic field

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return super().embed_documents(texts)


# -- ByteStore ----------------------------------------------------------------------------------


def test_byte_store_sync(sync_cache: CacheManager) -> None:
    store = GatheringByteStore(sync_cache, namespace="docs", ttl=60)
    store.mset([("a:1", b"\x00one"), ("a:2", b"two"), ("b*[1]", b"three")])
    assert store.mget(["a:1", "missing", "b*[1]"]) == [b"\x00one", None, b"three"]
    assert sorted(store.yield_keys()) == ["a:1", "a:2", "b*[1]"]
    assert sorted(store.yield_keys(prefix="a:")) == ["a:1", "a:2"]
    assert list(store.yield_keys(prefix="b*")) == ["b*[1]"]  # glob characters are literal
    store.mdelete(["a:1", "missing"])
    assert store.mget(["a:1", "a:2"]) == [None, b"two"]
    other = GatheringByteStore(sync_cache, namespace="other")
    assert list(other.yield_keys()) == []


async def test_byte_store_async_on_either_manager(
    cache: AsyncCacheManager, sync_cache: CacheManager
) -> None:
    for manager in (cache, sync_cache):
        store = GatheringByteStore(manager)
        await store.amset([("k", b"v")])
        assert await store.amget(["k", "x"]) == [b"v", None]
        assert [k async for k in store.ayield_keys()] == ["k"]
        await store.amdelete(["k"])
        assert await store.amget(["k"]) == [None]
    with pytest.raises(TypeError, match="CacheManager"):
        GatheringByteStore(cache).mget(["k"])


def test_byte_store_redis_down(down: CacheManager) -> None:
    store = GatheringByteStore(down)
    store.mset([("k", b"v")])
    assert store.mget(["k"]) == [None]
    assert list(store.yield_keys()) == []


# -- Embeddings ----------------------------------------------------------------------------------


async def test_embeddings_only_misses_reach_the_model(sync_cache: CacheManager) -> None:
    model = CountingEmbedding(size=32)
    model.texts = []
    cached = GatheringEmbeddings(model, sync_cache, model="fake-32")
    first = cached.embed_documents(["a", "b"])
    second = cached.embed_documents(["b", "a", "c"])
    third = await cached.aembed_documents(["c", "a"])
    assert model.texts == ["a", "b", "c"]
    assert first == [model.embed_query("a"), model.embed_query("b")]
    assert second[:2] == first[::-1]
    assert third[1] == first[0]
    assert type(second[0]) is type(first[0]) is list
    assert cached.embed_query("a") == first[0]


def test_embeddings_redis_down(down: CacheManager) -> None:
    model = CountingEmbedding(size=8)
    model.texts = []
    cached = GatheringEmbeddings(model, down, model="fake-8")
    assert cached.embed_documents(["a", "b"]) == cached.embed_documents(["a", "b"])
    assert not down.is_enabled()
    # No store: the vectors come from the model (or the in-process LRU), never an error.
    assert model.texts[:2] == ["a", "b"]


# -- LLM cache -----------------------------------------------------------------------------------


async def test_llm_cache_with_a_chat_model(sync_cache: CacheManager) -> None:
    set_llm_cache(GatheringLLMCache(sync_cache))
    chat = FakeListChatModel(responses=["first", "second", "third"])
    miss = chat.invoke("hello")
    hit = chat.invoke("hello")
    ahit = await chat.ainvoke("hello")
    assert type(miss) is type(hit) is type(ahit) is AIMessage
    assert [miss.content, hit.content, ahit.content] == ["first"] * 3
    assert chat.invoke("other").content == "second"  # another prompt reaches the model
    assert sync_cache.get_stats()["hits"] >= 2


async def test_llm_cache_with_a_text_model_async_manager(cache: AsyncCacheManager) -> None:
    llm_cache = GatheringLLMCache(cache, ttl=60)
    set_llm_cache(llm_cache)
    llm = FakeListLLM(responses=["one", "two"])
    assert await llm.ainvoke("q") == "one"
    assert await llm.ainvoke("q") == "one"
    await llm_cache.aclear()
    assert await llm.ainvoke("q") == "two"


def test_llm_cache_clear_and_redis_down(sync_cache: CacheManager, down: CacheManager) -> None:
    llm_cache = GatheringLLMCache(sync_cache)
    set_llm_cache(llm_cache)
    chat = FakeListChatModel(responses=["a", "b", "c"])
    assert chat.invoke("x").content == "a"
    llm_cache.clear()
    assert chat.invoke("x").content == "b"

    set_llm_cache(GatheringLLMCache(down))
    chat = FakeListChatModel(responses=["a", "b"])
    assert [chat.invoke("x").content, chat.invoke("x").content] == ["a", "b"]  # no cache, no error


# -- CacheBackedEmbeddings (langchain-classic) over the ByteStore ---------------------------------


async def test_cache_backed_embeddings_from_bytes_store(sync_cache: CacheManager) -> None:
    pytest.importorskip("langchain_classic")
    from langchain_classic.embeddings import CacheBackedEmbeddings

    model = CountingEmbedding(size=16)
    model.texts = []
    store = GatheringByteStore(sync_cache, namespace="cbe")
    embedder = CacheBackedEmbeddings.from_bytes_store(
        model, store, namespace="fake-16", key_encoder="sha256"
    )
    miss = embedder.embed_documents(["a", "b"])
    hit = embedder.embed_documents(["b", "a"])
    ahit = await embedder.aembed_documents(["a"])
    assert model.texts == ["a", "b"]
    assert hit == miss[::-1]
    assert ahit == miss[:1]
    assert type(hit[0]) is type(miss[0]) is list
    assert len(list(store.yield_keys(prefix="fake-16"))) == 2


def test_cache_backed_embeddings_redis_down(down: CacheManager) -> None:
    pytest.importorskip("langchain_classic")
    from langchain_classic.embeddings import CacheBackedEmbeddings

    model = CountingEmbedding(size=8)
    model.texts = []
    embedder = CacheBackedEmbeddings.from_bytes_store(
        model, GatheringByteStore(down), key_encoder="sha256"
    )
    assert embedder.embed_documents(["a"]) == embedder.embed_documents(["a"])
    assert model.texts == ["a", "a"]  # no store: the model each time, no error


async def test_vector_store_packs_for_cache_backed_embeddings(sync_cache: CacheManager) -> None:
    pytest.importorskip("langchain_classic")
    from langchain_classic.embeddings import CacheBackedEmbeddings

    model = CountingEmbedding(size=16)
    model.texts = []
    store = GatheringVectorStore(sync_cache, namespace="fake-16", ttl=300)
    embedder = CacheBackedEmbeddings(model, store)  # keys: the texts themselves
    written: list[int] = []
    sync_cache.add_observer(
        lambda op: (
            written.append(op.nbytes)
            if op.namespace == "embedding" and op.outcome == "stored"
            else None
        )
    )
    miss = embedder.embed_documents(["a", "b"])
    hit = embedder.embed_documents(["b", "a"])
    assert await embedder.aembed_documents(["a"]) == miss[:1]
    assert model.texts == ["a", "b"]
    assert hit == miss[::-1]
    assert written[0] == 2 * (2 + 16 * 8)  # packed (these fake vectors need float64)
    keys = sorted(store.yield_keys())
    assert len(keys) == 2
    assert [k async for k in store.ayield_keys(prefix=keys[0][:10])] == [keys[0]]
    store.mdelete(keys[:1])
    assert store.mget(keys) == [None, store.mget(keys[1:])[0]]
    await store.amset([("k", [0.5, 0.25])])
    assert await store.amget(["k"]) == [[0.5, 0.25]]
    await store.amdelete(["k"])
    assert sorted(store.yield_keys()) == keys[1:]
    with pytest.raises(ArgumentTypeError):
        GatheringVectorStore(sync_cache, namespace="")


def test_vector_store_redis_down(down: CacheManager) -> None:
    store = GatheringVectorStore(down)
    store.mset([("k", [1.0])])
    assert store.mget(["k"]) in ([None], [[1.0]])  # no store: a miss (or the in-process LRU)
    assert list(store.yield_keys()) == []
