"""A server that speaks well-formed RESP of the wrong shape: every call answers degraded.

The fixture is a tiny asyncio TCP server on a free loopback port. It answers the handshake
(HELLO, AUTH, CLIENT SETINFO, SELECT) and PING as Redis would, then one fixed reply to every
other command; every public coroutine of AsyncCacheManager (found with inspect) is called
against it and must return, never raise.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gathering_cache import AsyncCacheManager, BackendError, CacheConfig

REPLIES = {
    "simple-string": b"+OK\r\n",
    "integer": b":1\r\n",
    "array": b"*1\r\n$1\r\nx\r\n",
    "null": b"$-1\r\n",
}

_HANDSHAKE = {b"AUTH": b"+OK\r\n", b"CLIENT": b"+OK\r\n", b"SELECT": b"+OK\r\n"}


class HostileServer:
    """Answers the handshake properly, then ``reply`` to every command."""

    def __init__(self, reply: bytes, *, answer_ping: bool = True) -> None:
        self.reply = reply
        self.answer_ping = answer_ping
        self.commands: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for writer in self._writers:  # Python >= 3.12 waits for open connections
            writer.close()
        self._server.close()
        await self._server.wait_closed()

    def _answer(self, args: list[bytes]) -> bytes:
        name = args[0].upper()
        self.commands.append(name)
        if name in _HANDSHAKE:
            return _HANDSHAKE[name]
        if name == b"HELLO":
            proto = args[1] if len(args) > 1 else b"2"
            if proto == b"3":
                return b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"
            return b"*4\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:2\r\n"
        if name == b"PING" and self.answer_ping:
            return b"+PONG\r\n"
        return self.reply

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                header = await reader.readline()
                if not header:
                    break
                if not header.startswith(b"*"):  # an inline command
                    writer.write(self._answer(header.split() or [b""]))
                    continue
                args = []
                for _ in range(int(header[1:])):
                    size = int((await reader.readline())[1:])
                    args.append((await reader.readexactly(size + 2))[:-2])
                writer.write(self._answer(args))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture(params=list(REPLIES.values()), ids=list(REPLIES))
async def hostile(request: pytest.FixtureRequest) -> AsyncIterator[HostileServer]:
    async with HostileServer(request.param) as server:
        yield server


SAMPLES: dict[str, Any] = {
    "key": "gathering:k",
    "keys": ["gathering:a", "gathering:b"],
    "value": {"v": 1},
    "mapping": {"gathering:a": 1, "gathering:b": 2},
    "pattern": "gathering:*",
    "text": "t",
    "texts": ["t", "u"],
    "embedding": [1.0, 2.0],
    "embeddings": [[1.0], [2.0]],
    "agent_id": 1,
    "query": "q",
    "results": [{"id": "m", "content": "c", "score": 1.0}],
    "circle_id": 1,
    "context": {"members": [1]},
    "model": "m",
    "response": "r",
}
"""A sample argument for every required parameter of a public coroutine, by name."""

OPTIONAL = {"prompt": "p"}
"""Optional arguments some coroutines need (an LLM request needs a prompt or messages)."""

EXTRA = {"temperature": 0}
"""Passed to a coroutine taking ``**params`` (an LLM request is cached when deterministic)."""

COROUTINES = sorted(
    name
    for name, member in inspect.getmembers(AsyncCacheManager, inspect.iscoroutinefunction)
    if not name.startswith("_") and name not in {"aclose", "close"}
)


def arguments(name: str) -> dict[str, Any]:
    """Keyword arguments for ``AsyncCacheManager.<name>`` built from its signature."""
    kwargs: dict[str, Any] = {}
    for param in list(inspect.signature(getattr(AsyncCacheManager, name)).parameters.values())[1:]:
        if param.kind is param.VAR_KEYWORD:
            kwargs.update(EXTRA)
        elif param.kind is param.VAR_POSITIONAL:
            continue
        elif param.default is param.empty:
            assert param.name in SAMPLES, f"add a sample for {name}({param.name}=...)"
            kwargs[param.name] = SAMPLES[param.name]
        elif param.name in OPTIONAL:
            kwargs[param.name] = OPTIONAL[param.name]
    return kwargs


def test_every_public_coroutine_is_covered() -> None:
    assert len(COROUTINES) > 20
    assert {"get_many", "get_rag_results", "clear_all", "get_stats"} <= set(COROUTINES)


@pytest.mark.parametrize("name", COROUTINES)
async def test_a_reply_of_the_wrong_shape_is_a_degraded_answer(
    hostile: HostileServer, name: str
) -> None:
    # The breaker stays closed, so every call reaches the server and meets the wrong shape.
    config = CacheConfig(host="127.0.0.1", port=hostile.port, failure_threshold=1_000_000)
    cache = AsyncCacheManager(config)
    try:
        await getattr(cache, name)(**arguments(name))  # returns, never raises
        assert len(hostile.commands) > 0
    finally:
        await cache.aclose()


@pytest.mark.parametrize("reply", list(REPLIES.values()), ids=list(REPLIES))
async def test_reads_and_writes_of_the_wrong_shape_answer_miss_and_not_stored(
    reply: bytes,
) -> None:
    async with HostileServer(reply) as server:
        config = CacheConfig(host="127.0.0.1", port=server.port, failure_threshold=1_000_000)
        async with AsyncCacheManager(config) as cache:
            assert await cache.get_many(["gathering:a", "gathering:b"]) == [None, None]
            assert await cache.get_rag_results(1, "q") is None
            if reply != b"+OK\r\n":  # +OK is the right reply to SET
                assert await cache.set("gathering:k", 1) is False
                assert await cache.set_many({"gathering:a": 1}) is False
            assert await cache.clear_all() == 0
            stats = await cache.get_stats()
            assert stats["total_keys"] is None
            assert f"127.0.0.1:{server.port}" in stats["breaker"]["last_error"]


@pytest.mark.parametrize("reply", list(REPLIES.values()), ids=list(REPLIES))
async def test_a_wrong_reply_to_ping_fails_connect_naming_the_server(reply: bytes) -> None:
    async with HostileServer(reply, answer_ping=False) as server:
        cache = AsyncCacheManager(CacheConfig(host="127.0.0.1", port=server.port))
        assert await cache.connect() is False
        stats = await cache.get_stats()
        assert "malformed reply to PING" in stats["reason"]
        assert f"127.0.0.1:{server.port}" in stats["reason"]
        await cache.aclose()


async def test_the_store_raises_backend_error_from_the_parsing_error() -> None:
    async with HostileServer(REPLIES["integer"]) as server:
        cache = AsyncCacheManager(CacheConfig(host="127.0.0.1", port=server.port))
        store = cache._core.store
        from gathering_cache.backends import Progress

        with pytest.raises(BackendError, match="malformed reply to SCAN") as caught:
            await store.count("gathering:*", Progress())
        assert isinstance(caught.value.__cause__, TypeError)  # raise ... from
        with pytest.raises(BackendError, match="malformed reply to GET"):
            await store.get("gathering:k")
        await cache.aclose()
