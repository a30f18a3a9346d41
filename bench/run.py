"""gathering-cache benchmark: ours against raw redis.asyncio + orjson, aiocache and cashews,
side by side on one redis-server this program starts on a free loopback port.

    python -m bench.run            # full (make bench), under 5 minutes
    python -m bench.run --quick    # make bench-quick, under 1 minute

Every workload runs each client in alternating order over several repetitions; the tables
show medians and ratios to the raw baseline measured in the same run. Results go to
docs/benchmarks/results[-quick].json, docs/benchmarks/latest[-quick].md and chart[-quick].svg.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import random
import re
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as redis_asyncio

from bench.chart import ratio_chart
from bench.clients import COMPARED, AioCache, Cashews, OursStatsOff, Raw, RawPacked
from gathering_cache import AsyncCacheManager, CacheConfig, CachedEmbedder, CacheManager
from tests.near_writer import Writer
from tests.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks"
SMALL = {
    "agent_id": 17,
    "query": "What are the user's preferences?",
    "results": [{"id": i, "content": f"memory {i}", "score": 0.9 - i / 10} for i in range(3)],
    "model": "text-embedding-3-small",
}  # ~200 bytes of JSON


def f32_vector(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [struct.unpack("<f", struct.pack("<f", rng.uniform(-1, 1)))[0] for _ in range(n)]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latencies(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    """Per-call latencies in microseconds, sequential."""
    out = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        await call()
        out.append((clock() - start) * 1e6)
    return out


async def throughput(call: Callable[[], Awaitable[Any]], total: int, workers: int = 64) -> float:
    return (await concurrent(call, total, workers))[0]


async def concurrent(
    call: Callable[[], Awaitable[Any]], total: int, workers: int
) -> tuple[float, float]:
    """Calls per second with ``workers`` coroutines calling back to back, and the p99 of one
    call's latency (µs) meanwhile."""
    per = max(1, total // workers)
    samples: list[float] = []

    async def worker() -> None:
        clock = time.perf_counter
        for _ in range(per):
            began = clock()
            await call()
            samples.append(clock() - began)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return per * workers / (time.perf_counter() - start), pct(samples, 0.99)


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[Any]]], n: int, block: int = 50
) -> dict[str, list[float]]:
    """``n`` sequential latencies (µs) of each call, measured in alternating blocks of
    ``block`` calls (the order of the clients rotating each round): each block runs warm,
    as a loop of one client's calls does, while a slow spell of the machine (another
    process, a frequency change, the wake-up from an idle wait growing) falls on every
    client alike instead of on whichever client's calls it overlapped."""
    names = list(calls)
    out: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for turn, start in enumerate(range(0, n, block)):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            call, samples = calls[name], out[name]
            for _ in range(min(block, n - start)):
                began = clock()
                await call()
                samples.append((clock() - began) * 1e6)
    return out


def rotations(items: list[Any], reps: int) -> list[list[Any]]:
    """Alternate the order each repetition so no client always runs first (warm caches)."""
    return [items[r % len(items) :] + items[: r % len(items)] for r in range(reps)]


# -- W1 / W2: single get and set ---------------------------------------------------------------


async def single_value(
    url: str, value: Any, tag: str, n: int, total: int, reps: int, extra: tuple[type, ...] = ()
) -> dict:
    clients = [cls(url) for cls in (*COMPARED, *extra)]
    metrics = ["get_p50", "get_p99", "set_p50", "get_tput", "get_tput8", "get_tput512", "p99@64"]
    samples: dict[str, dict[str, list[float]]] = {
        c.name: {metric: [] for metric in metrics} for c in clients
    }
    keys = {c.name: f"bench:{tag}:{c.name}" for c in clients}
    gets = {c.name: functools.partial(c.get, keys[c.name]) for c in clients}
    sets = {c.name: functools.partial(c.set, keys[c.name], value) for c in clients}
    for order in rotations(clients, reps):
        for client in clients:
            await client.set(keys[client.name], value)
            assert await client.get(keys[client.name]) == value, client.name
        await interleaved(gets, 200)  # warm up
        got = await interleaved(gets, n)
        put = await interleaved(sets, n // 2)
        for client in clients:
            s = samples[client.name]
            s["get_p50"].append(pct(got[client.name], 0.5))
            s["get_p99"].append(pct(got[client.name], 0.99))
            s["set_p50"].append(pct(put[client.name], 0.5))
        for client in order:
            key = keys[client.name]
            s = samples[client.name]
            rate, p99 = await concurrent(lambda: client.get(key), total, 64)
            s["get_tput"].append(rate)
            s["p99@64"].append(p99)
            s["get_tput8"].append((await concurrent(lambda: client.get(key), total, 8))[0])
            # aiocache and cashews fail with "Too many connections" at 512 with their default
            # pools: measured for the clients that queue instead (nan for the others).
            if getattr(client, "wide", False):
                s["get_tput512"].append((await concurrent(lambda: client.get(key), total, 512))[0])
            else:
                s["get_tput512"].append(float("nan"))
    for client in clients:
        await client.close()
    return {name: {k: statistics.median(v) for k, v in m.items()} for name, m in samples.items()}


async def memory_usage(url: str, vector: list[float]) -> dict[str, int]:
    raw = redis_asyncio.Redis.from_url(url)
    out = {}
    await raw.set("bench:mem:float32-bytes", struct.pack(f"<{len(vector)}f", *vector))
    out["raw float32 bytes"] = await raw.memory_usage("bench:mem:float32-bytes")
    ours = AsyncCacheManager(CacheConfig(url=url))
    await ours.set_embedding("doc", vector, model="text-embedding-3-small")
    out["gathering_cache"] = await raw.memory_usage(
        ours.embeddings.key("doc", "text-embedding-3-small", None)
    )
    await ours.aclose()
    for cls in (Raw, AioCache, Cashews):
        client = cls(url)
        await client.set("bench:mem:" + cls.name, vector)
        await client.close()
    out["raw redis.asyncio+orjson"] = await raw.memory_usage("bench:mem:" + Raw.name)
    out["aiocache"] = await raw.memory_usage("bench:mem:" + AioCache.name)
    cashews_keys = [k async for k in raw.scan_iter(match="*bench:mem:cashews*")]
    out["cashews"] = await raw.memory_usage(cashews_keys[0]) if cashews_keys else -1
    await raw.aclose()
    return out


async def embedding_single(url: str, n: int, total: int, reps: int) -> dict:
    vector = f32_vector(1536, 7)
    results: dict[str, Any] = {}
    clients = [Raw(url), AioCache(url), Cashews(url)]
    ours = AsyncCacheManager(CacheConfig(url=url, max_connections=64))
    await ours.set_embedding("doc", vector, model="m")
    assert await ours.get_embedding("doc", model="m") == vector
    samples: dict[str, dict[str, list[float]]] = {}

    class OursEmbedding:
        name = "gathering_cache"

        async def get(self, key: str) -> Any:
            return await ours.get_embedding("doc", model="m")

        async def set(self, key: str, value: Any) -> None:
            await ours.set_embedding("doc", value, model="m")

    everyone = [*clients, OursEmbedding()]
    for client in everyone:
        samples[client.name] = {"get_p50": [], "set_p50": [], "get_tput": []}
        await client.set(f"bench:emb:{client.name}", vector)
    gets = {c.name: functools.partial(c.get, f"bench:emb:{c.name}") for c in everyone}
    sets = {c.name: functools.partial(c.set, f"bench:emb:{c.name}", vector) for c in everyone}
    for order in rotations(everyone, reps):
        got = await interleaved(gets, n)
        put = await interleaved(sets, n // 4)
        for client in everyone:
            samples[client.name]["get_p50"].append(pct(got[client.name], 0.5))
            samples[client.name]["set_p50"].append(pct(put[client.name], 0.5))
        for client in order:
            key = f"bench:emb:{client.name}"
            samples[client.name]["get_tput"].append(
                await throughput(lambda: client.get(key), total)
            )
    for client in clients:
        await client.close()
    await ours.aclose()
    results = {name: {k: statistics.median(v) for k, v in m.items()} for name, m in samples.items()}
    return results


# -- W3: a batch of 100 embeddings at 90 % hits --------------------------------------------------


async def embedding_batch(url: str, reps: int, inner: int) -> dict[str, float]:
    texts = [f"document {i}" for i in range(100)]
    vectors = [f32_vector(1536, i) for i in range(100)]
    keys = [f"bench:batch:{i}" for i in range(100)]
    cache = AsyncCacheManager(CacheConfig(url=url, max_connections=64))
    await cache.set_embeddings(texts[:90], vectors[:90], model="m")
    sent = 0

    async def provider(batch: list[str]) -> list[list[float]]:
        nonlocal sent
        sent += len(batch)
        return [f32_vector(1536, 999) for _ in batch]

    embedder = CachedEmbedder(provider, cache, model="m")
    raw, packed, aio, cash = Raw(url), RawPacked(url), AioCache(url), Cashews(url)
    own_keys = {c.name: [f"{k}:{c.name}" for k in keys] for c in (raw, packed, aio, cash)}
    for client in (raw, packed, aio, cash):
        for key, vector in zip(own_keys[client.name][:90], vectors[:90], strict=True):
            await client.set(key, vector)
    counter = iter(range(10**9))

    async def loop_of_gets() -> Any:
        return [await raw.get(k) for k in own_keys[raw.name]]

    async def embed_many() -> Any:
        n = next(counter)  # ten fresh misses each time, as at 90 % hits
        return await embedder.embed_many(texts[:90] + [f"new {n} {i}" for i in range(10)])

    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "raw MGET float32": lambda: packed.get_many(own_keys[packed.name]),
        "gathering_cache get_embeddings": lambda: cache.get_embeddings(texts, model="m"),
        "gathering_cache get_embeddings numpy": lambda: cache.get_embeddings(
            texts, model="m", as_numpy=True
        ),
        "gathering_cache CachedEmbedder.embed_many": embed_many,
        "loop of awaited GETs (raw)": loop_of_gets,
        "aiocache multi_get": lambda: aio.get_many(own_keys[aio.name]),
        "cashews get_many": lambda: cash.get_many(own_keys[cash.name]),
    }
    got = await cache.get_embeddings(texts, model="m")
    assert got[:90] == vectors[:90] and got[90:] == [None] * 10
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for order in rotations(list(cases), reps):
        for name in order:
            call = cases[name]
            await call()
            times = await latencies(call, inner)
            samples[name].append(statistics.median(times) / 1000)  # ms
    for client in (raw, packed, aio, cash):
        await client.close()
    await cache.aclose()
    return {name: statistics.median(v) for name, v in samples.items()}


# -- W4: invalidating one agent's RAG entries ---------------------------------------------------


async def invalidation(url: str, sizes: list[int], reps: int) -> dict[str, dict[str, float]]:
    raw = redis_asyncio.Redis.from_url(url)
    cache = AsyncCacheManager(CacheConfig(url=url))
    from cashews import Cache

    cashews = Cache()
    cashews.setup(url, client_side=False)
    out: dict[str, dict[str, float]] = {}

    async def fill() -> None:
        generation = await cache.get_rag_generation(1)
        await asyncio.gather(
            *(
                cache.set_rag_results(1, f"query {i}", [{"id": i}], generation=generation)
                for i in range(1000)
            )
        )

    async def scan_del() -> int:
        deleted = 0
        batch = []
        async for key in raw.scan_iter(match="gathering:rag:agent:1:*", count=1000):
            batch.append(key)
        if batch:
            deleted = await raw.delete(*batch)
        return deleted

    for size in sizes:
        await raw.flushdb()
        await raw.execute_command("DEBUG", "POPULATE", size, "other")
        methods: dict[str, Callable[[], Awaitable[Any]]] = {
            "gathering_cache invalidate_rag_results": lambda: cache.invalidate_rag_results(1),
            "SCAN COUNT 1000 + DEL": scan_del,
            "cashews delete_match": lambda: cashews.delete_match("gathering:rag:agent:1:*"),
        }
        samples: dict[str, list[float]] = {name: [] for name in methods}
        for order in rotations(list(methods), reps):
            for name in order:
                await fill()
                start = time.perf_counter()
                await methods[name]()
                samples[name].append((time.perf_counter() - start) * 1000)
                assert await cache.get_rag_results(1, "query 5") is None, name
                assert not [
                    k async for k in raw.scan_iter(match="gathering:rag:agent:1:*", count=1000)
                ], name
        out[f"{size:,}"] = {name: statistics.median(v) for name, v in samples.items()}
    await cashews.close()
    await cache.aclose()
    await raw.flushdb()
    await raw.aclose()
    return out


# -- W5: the floor ----------------------------------------------------------------------------


def redis_benchmark(port: int, requests: int) -> dict[str, float]:
    """The C client's GET / SET rates: 50 clients with and without ``-P 16``, and GET with
    as many clients as W1 has coroutines (8, 64, 512), the floor of W1's figures."""
    out = {}
    runs = [("get,set", 50, 1, " -P {p}"), ("get,set", 50, 16, " -P {p}")]
    runs += [("get", clients, 1, " -c {c}") for clients in (8, 64, 512)]
    for tests, clients, pipeline, label in runs:
        result = subprocess.run(
            ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", tests,
             "-n", str(requests), "-c", str(clients), "-P", str(pipeline), "-q"],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        for line in result.stdout.replace("\r", "\n").splitlines():
            match = re.match(r"(GET|SET): ([\d.]+) requests per second", line.strip())
            if match:
                name = match.group(1) + label.format(p=pipeline, c=clients)
                out[name] = float(match.group(2))
    return out


# -- W6: breaker open ---------------------------------------------------------------------------


async def breaker_open(n: int) -> dict[str, float]:
    cache = AsyncCacheManager(
        CacheConfig(host="127.0.0.1", port=free_port(), recovery_interval=3600)
    )
    assert await cache.connect() is False
    times = await latencies(lambda: cache.get("k"), n)
    await cache.aclose()
    return {
        "get p50 us (Redis down, breaker open)": pct(times, 0.5),
        "get p99 us (Redis down, breaker open)": pct(times, 0.99),
    }


# -- W7: an agent trace -----------------------------------------------------------------------


async def agent_trace(
    url: str, agents: int, queries: int, embed_s: float, search_s: float, near: bool = False
) -> dict:
    rng = random.Random(42)
    distinct = [f"query {i}" for i in range(200)]
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(distinct))]  # Zipf
    plans = [rng.choices(distinct, weights, k=queries) for _ in range(agents)]
    price = 0.0001
    results: dict[str, Any] = {}

    for mode in ("without cache", "with gathering_cache"):
        calls = 0

        async def provider(texts: list[str]) -> list[list[float]]:
            nonlocal calls
            calls += 1
            await asyncio.sleep(embed_s)
            return [f32_vector(64, hash(t) & 0xFFFF) for t in texts]

        cache = AsyncCacheManager(CacheConfig(url=url, key_prefix="trace:", near_cache=near))
        await cache.clear_all()
        embedder = CachedEmbedder(provider, cache, model="trace-model")
        latencies_ms: list[float] = []

        async def recall(agent: int, query: str) -> Any:
            start = time.perf_counter()
            if mode == "with gathering_cache":
                hit = await cache.get_rag_results(agent, query)
                if hit is not None:
                    latencies_ms.append((time.perf_counter() - start) * 1000)
                    return hit
                await embedder.embed(query)
            else:
                await provider([query])
            await asyncio.sleep(search_s)  # vector search + filtering
            found = [{"content": f"memory for {query}", "score": 0.9}]
            if mode == "with gathering_cache":
                await cache.set_rag_results(agent, query, found)
            latencies_ms.append((time.perf_counter() - start) * 1000)
            return found

        async def run_agent(agent: int) -> None:
            for query in plans[agent]:
                await recall(agent, query)

        start = time.perf_counter()
        await asyncio.gather(*(run_agent(a) for a in range(agents)))
        wall = time.perf_counter() - start
        near_stats = (await cache.get_stats())["near_cache"]
        await cache.clear_all()
        await cache.aclose()
        results[mode] = {
            "recalls": agents * queries,
            "provider calls": calls,
            "cost $": round(calls * price, 4),
            "wall s": round(wall, 2),
            "mean recall ms": round(statistics.mean(latencies_ms), 2),
        }
        if near and mode == "with gathering_cache":
            looked = near_stats["hits"] + near_stats["misses"]
            results["near cache hit rate %"] = round(100 * near_stats["hits"] / max(looked, 1), 1)
    a, b = results["without cache"], results["with gathering_cache"]
    results["provider calls saved %"] = round(
        100 * (1 - b["provider calls"] / a["provider calls"]), 1
    )
    results["recall speed-up x"] = round(a["mean recall ms"] / b["mean recall ms"], 1)
    return results


# -- W9: the near cache -------------------------------------------------------------------------


async def near_cache(url: str, n: int, rounds: int, reps: int) -> dict[str, float]:
    """L1 hit cost per get vs the same get from Redis (the median of ``reps`` alternated
    repetitions' p50), and the delay until a write made by another process is gone from
    this one's near cache: from the moment the write returned in that process (its clock:
    time.monotonic, system-wide) to the first read here that answers the new value
    (polling every loop turn)."""
    out: dict[str, float] = {}
    p50s: dict[str, list[float]] = {"redis get p50 us": [], "near cache hit p50 us": []}
    async with (
        AsyncCacheManager(CacheConfig(url=url)) as plain,
        AsyncCacheManager(CacheConfig(url=url, near_cache=True)) as near,
    ):
        await near.set_circle_context(1, {"topic": "bench"})
        await _near_holds(near, 1, {"topic": "bench"})
        for _ in range(reps):  # alternated; the median of the repetitions' p50
            for label, cache in (("redis get p50 us", plain), ("near cache hit p50 us", near)):
                samples = await latencies(lambda c=cache: c.get_circle_context(1), n)
                p50s[label].append(pct(samples, 0.5))
    for label, values in p50s.items():
        out[label] = statistics.median(values)
    delays = []
    async with AsyncCacheManager(CacheConfig(url=url, near_cache=True)) as a:
        await a.connect()
        writer = await Writer.start({"url": url})
        try:
            for i in range(rounds):
                await writer.do("set_circle", circle=2, value={"v": i})
                await _near_holds(a, 2, {"v": i})
                new = {"v": i + 0.5}
                await writer.send("set_circle", circle=2, value=new)
                # Polling: a's near cache answers the old value until invalidated.
                while await a.get_circle_context(2) != new:  # noqa: ASYNC110 (a poll)
                    await asyncio.sleep(0)
                seen = time.monotonic()
                done = (await writer.answer())["done"]
                delays.append(max(seen - done, 0.0) * 1000)  # seen before the ack: 0
        finally:
            await writer.close()
    out["invalidation delay p50 ms"] = round(pct(delays, 0.5), 3)
    out["invalidation delay max ms"] = round(max(delays), 3)
    return out


async def _near_holds(cache: AsyncCacheManager, circle: int, value: Any) -> None:
    """Read until ``value`` is a near-cache hit (bounded: 5 s)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        hits = (await cache.get_stats())["near_cache"]["hits"]
        found = await cache.get_circle_context(circle)
        if found == value and (await cache.get_stats())["near_cache"]["hits"] > hits:
            return
        await asyncio.sleep(0.001)
    raise RuntimeError("the near cache did not keep the value within 5 s")


# -- W8: the sync facade ------------------------------------------------------------------------


async def async_get_p50(url: str, n: int) -> float:
    async with AsyncCacheManager(CacheConfig(url=url)) as cache:
        await cache.set("bench:w8", SMALL)
        await latencies(lambda: cache.get("bench:w8"), 200)
        return pct(await latencies(lambda: cache.get("bench:w8"), n), 0.5)


def sync_get_p50(url: str, n: int) -> float:
    cache = CacheManager(CacheConfig(url=url))
    cache.set("bench:w8", SMALL)
    out = []
    for _ in range(200 + n):
        start = time.perf_counter()
        cache.get("bench:w8")
        out.append((time.perf_counter() - start) * 1e6)
    cache.close()
    return pct(out[200:], 0.5)


# -- the program ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import redis

    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return {
        "python": platform.python_version(),
        "redis-py": redis.__version__,
        "redis-server": version.split()[2].removeprefix("v=") if version else "?",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def run_loop(coro_factory: Callable[[], Awaitable[Any]], use_uvloop: bool = False) -> Any:
    if use_uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro_factory())  # type: ignore[arg-type]
    return asyncio.run(coro_factory())  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short run (under a minute)")
    args = parser.parse_args()
    quick = args.quick
    p = {
        "n": 500 if quick else 3000,
        "total": 4000 if quick else 20000,
        "reps": 3 if quick else 5,
        "emb_n": 200 if quick else 1000,
        "batch_inner": 10 if quick else 30,
        "sizes": [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000],
        "w4_reps": 3 if quick else 5,
        "bench_requests": 20_000 if quick else 200_000,
        "agents": 8,
        "queries": 12 if quick else 50,
    }
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "quick": quick, "params": p}
    with RedisServer("--maxmemory", "0") as server:
        url = server.url
        print(
            f"redis-server {report['machine']['redis-server']} on 127.0.0.1:{server.port}",
            flush=True,
        )
        for loop_name, uv in (("asyncio", False), ("uvloop", True)):
            print(f"W1 small JSON get/set ({loop_name}) ...", flush=True)
            report[f"W1 {loop_name}"] = run_loop(
                lambda: single_value(
                    url, SMALL, "w1", p["n"], p["total"], p["reps"], (OursStatsOff,)
                ),
                uv,
            )
        print("W2 1536-float embedding ...", flush=True)
        report["W2"] = run_loop(
            lambda: embedding_single(url, p["emb_n"], p["total"] // 8, p["reps"])
        )
        report["W2 memory"] = run_loop(lambda: memory_usage(url, f32_vector(1536, 3)))
        print("W3 batch of 100 embeddings at 90 % hits ...", flush=True)
        report["W3"] = run_loop(lambda: embedding_batch(url, p["reps"], p["batch_inner"]))
        print("W4 invalidation ...", flush=True)
        report["W4"] = run_loop(lambda: invalidation(url, p["sizes"], p["w4_reps"]))
        print("W5 redis-benchmark ...", flush=True)
        report["W5"] = redis_benchmark(server.port, p["bench_requests"])
        print("W6 breaker open ...", flush=True)
        report["W6"] = run_loop(lambda: breaker_open(20_000))
        print("W7 agent trace ...", flush=True)
        report["W7"] = run_loop(lambda: agent_trace(url, p["agents"], p["queries"], 0.150, 0.080))
        print("W9 near cache ...", flush=True)
        report["W9"] = run_loop(lambda: near_cache(url, p["n"], 50, p["reps"]))
        report["W9 trace"] = run_loop(
            lambda: agent_trace(url, p["agents"], p["queries"], 0.150, 0.080, near=True)
        )
        print("W8 sync facade ...", flush=True)
        rounds: list[tuple[float, float]] = []  # alternated, as W1 and W2 alternate blocks
        for _ in range(5):
            asynchronous = run_loop(lambda: async_get_p50(url, p["n"]))
            rounds.append((asynchronous, sync_get_p50(url, p["n"])))
        w8_async = statistics.median(a for a, _ in rounds)
        w8_sync = statistics.median(s for _, s in rounds)
        report["W8"] = {"async get p50 us": w8_async, "sync facade get p50 us": w8_sync}
    report["elapsed s"] = round(time.perf_counter() - started, 1)
    report["targets"] = targets(report)
    suffix = "-quick" if quick else ""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"results{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render(report)
    (OUT / f"latest{suffix}.md").write_text(markdown)
    (OUT / f"chart{suffix}.svg").write_text(chart(report))
    print()
    print(markdown)


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    raw, ours = "raw redis.asyncio+orjson", "gathering_cache"
    w1, w2, w3, w4 = r["W1 asyncio"], r["W2"], r["W3"], r["W4"]
    mem = r["W2 memory"]
    biggest = list(w4)[-1]
    rows = [
        ("W1 get p50", w1[ours]["get_p50"] / w1[raw]["get_p50"], "<=", 1.10),
        ("W1 get p50, auto-pipelining target", w1[ours]["get_p50"] / w1[raw]["get_p50"], "<=", 1.05),
        ("W1 throughput @64, auto-pipelining", w1[ours]["get_tput"] / w1[raw]["get_tput"], ">=", 2.0),
        ("W1 throughput @64", w1[ours]["get_tput"] / w1[raw]["get_tput"], ">=", 0.90),
        ("W2 embedding get p50", w2[ours]["get_p50"] / w2[raw]["get_p50"], "<=", 0.80),
        ("W2 embedding get p50, write-path target", w2[ours]["get_p50"] / w2[raw]["get_p50"], "<=", 0.75),
        ("W2 set_embedding p50", w2[ours]["set_p50"] / w2[raw]["set_p50"], "<=", 1.0),
        ("W2 memory per vector / raw float32", mem[ours] / mem["raw float32 bytes"], "<=", 1.10),
        ("W3 batch / raw MGET float32",
         w3["gathering_cache get_embeddings"] / w3["raw MGET float32"], "<=", 1.5),
        ("W3 batch, numpy out / raw MGET float32",
         w3["gathering_cache get_embeddings numpy"] / w3["raw MGET float32"], "<=", 1.2),
        ("W3 aiocache multi_get / ours",
         w3["aiocache multi_get"] / w3["gathering_cache get_embeddings"], ">=", 10.0),
        (f"W4 invalidation ms at {biggest} keys",
         w4[biggest]["gathering_cache invalidate_rag_results"], "<=", 5.0),
        ("W9 near cache hit p50 µs", r["W9"]["near cache hit p50 us"], "<=", 2.0),
        ("W9 invalidation delay max ms", r["W9"]["invalidation delay max ms"], "<=", 50.0),
        ("W8 sync facade / async get p50",
         r["W8"]["sync facade get p50 us"] / r["W8"]["async get p50 us"], "<=", 2.5),
    ]  # fmt: skip
    return [
        {"target": name, "measured": round(value, 3), "goal": f"{op} {goal}",
         "met": value <= goal if op == "<=" else value >= goal}
        for name, value, op, goal in rows
    ]  # fmt: skip


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render(r: dict[str, Any]) -> str:
    raw = "raw redis.asyncio+orjson"
    m = r["machine"]
    out = [f"# Benchmark results{' (quick)' if r['quick'] else ''}", "",
           f"{m['date']} · Python {m['python']} · redis-py {m['redis-py']} · redis-server "
           f"{m['redis-server']} · {m['cores']} cores ({m['cpu']}) · {r['elapsed s']} s", ""]  # fmt: skip
    for loop in ("asyncio", "uvloop"):
        w1 = r[f"W1 {loop}"]
        base = w1[raw]
        out += [f"## W1 small JSON (~200 B), {loop}", "", _table(
            ["client", "get p50 µs", "get p99 µs", "set p50 µs", "get/s @8", "get/s @64",
             "get/s @512", "p99 µs @64", "p50 ×raw", "get/s @64 ×raw"],
            [[n, v["get_p50"], v["get_p99"], v["set_p50"], v["get_tput8"], v["get_tput"],
              v["get_tput512"], v["p99@64"] * 1e6, v["get_p50"] / base["get_p50"],
              v["get_tput"] / base["get_tput"]] for n, v in w1.items()],
        ), ""]  # fmt: skip
    floor = [r["W5"].get(f"GET -c {c}") for c in (8, 64, 512)]
    if all(floor):
        out += ["The floor, the C client `redis-benchmark` on the same server (W5): GET/s "
                f"{floor[0]:,.0f} @8, {floor[1]:,.0f} @64, {floor[2]:,.0f} @512 clients.", ""]  # fmt: skip
    w2, mem = r["W2"], r["W2 memory"]
    out += ["## W2 1536-float embedding", "", _table(
        ["client", "get p50 µs", "set p50 µs", "get/s @64", "get p50 ×raw", "MEMORY USAGE B"],
        [[n, v["get_p50"], v["set_p50"], v["get_tput"], v["get_p50"] / w2[raw]["get_p50"],
          mem.get(n, "")] for n, v in w2.items()],
    ), "", f"Raw float32 bytes under one key: {mem['raw float32 bytes']:,} B.", ""]  # fmt: skip
    w3 = r["W3"]
    out += ["## W3 batch of 100 embeddings, 90 % hits", "", _table(
        ["method", "ms", "× raw MGET float32"],
        [[n, v, v / w3["raw MGET float32"]] for n, v in w3.items()],
    ), ""]  # fmt: skip
    w4 = r["W4"]
    methods = list(next(iter(w4.values())))
    out += ["## W4 invalidate one agent's 1,000 RAG entries (ms)", "", _table(
        ["other keys", *methods], [[size, *(v[mth] for mth in methods)] for size, v in w4.items()],
    ), ""]  # fmt: skip
    out += ["## W5 redis-benchmark (requests/s; 50 clients unless -c says)", "",
            _table(["test", "req/s"], [[k, v] for k, v in r["W5"].items()]), ""]  # fmt: skip
    out += ["## W6 Redis down", "", _table(["measure", "µs"], [[k, v] for k, v in r["W6"].items()]),
            ""]  # fmt: skip
    w7 = r["W7"]
    modes = ["without cache", "with gathering_cache"]
    keys = list(w7[modes[0]])
    out += ["## W7 agent trace (Zipf queries, 150 ms / $0.0001 embedding, 80 ms search)", "",
            _table(["", *modes], [[k, *(w7[mode][k] for mode in modes)] for k in keys]), "",
            f"Provider calls saved: {w7['provider calls saved %']} %; "
            f"mean recall {w7['recall speed-up x']}× faster.", ""]  # fmt: skip
    w9 = r.get("W9")
    if w9 is not None:
        rate = r["W9 trace"].get("near cache hit rate %", 0.0)
        out += ["## W9 near cache (L1)", "", _table(["measure", "value"], [[k, v] for k, v in w9.items()]),
                "", f"W7 agent trace with the near cache: hit rate {rate} % of its lookups "
                "(embeddings; RAG results are never served from it).", ""]  # fmt: skip
    w8 = r["W8"]
    out += ["## W8 sync facade", "", _table(["measure", "µs"], [[k, v] for k, v in w8.items()]), ""]
    out += ["## Targets (ratios to raw redis.asyncio + orjson in the same run)", "", _table(
        ["target", "measured", "goal", "met"],
        [[t["target"], t["measured"], t["goal"], "yes" if t["met"] else "**no**"] for t in r["targets"]],
    ), ""]  # fmt: skip
    return "\n".join(out)


def chart(r: dict[str, Any]) -> str:
    raw = "raw redis.asyncio+orjson"
    groups = []
    for title, data, metric in (
        ("W1 get p50", r["W1 asyncio"], "get_p50"),
        ("W1 get/s @64", r["W1 asyncio"], "get_tput"),
        ("W2 embedding get p50", r["W2"], "get_p50"),
    ):
        groups.append((title, {n: v[metric] / data[raw][metric] for n, v in data.items()}))
    w3 = r["W3"]
    groups.append(("W3 batch of 100", {n: v / w3["raw MGET float32"] for n, v in w3.items()
                                       if n in ("raw MGET float32", "gathering_cache get_embeddings",
                                                "aiocache multi_get", "cashews get_many")}))  # fmt: skip
    return ratio_chart(groups, "Ratios to the baseline measured in the same run (lower is better for "
                       "latency, higher for get/s)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
