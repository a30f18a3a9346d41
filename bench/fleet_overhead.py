"""What fleet statistics cost on W1 (small JSON get, 64 concurrent callers), on vs off in the
same run, interleaved repetitions, against a redis-server started here.

    python -m bench.fleet_overhead [--reps 7] [--total 20000]

"on" records every operation (the FleetRecorder observer) and flushes every second (ten times
more often than the default); "off" is ``stats_flush_interval=0``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bench.run import latencies, pct, throughput
from gathering_cache import AsyncCacheManager, CacheConfig
from tests.servers import RedisServer

SMALL = {"agent": 7, "text": "x" * 160, "tags": ["a", "b"]}


async def measure(url: str, reps: int, total: int) -> dict[str, dict[str, float]]:
    managers = {
        "on (flush every 1 s)": AsyncCacheManager(
            CacheConfig(url=url, stats_flush_interval=1.0, max_connections=64)
        ),
        "off": AsyncCacheManager(CacheConfig(url=url, stats_flush_interval=0, max_connections=64)),
    }
    samples: dict[str, dict[str, list[float]]] = {
        name: {"get_p50": [], "get_tput": []} for name in managers
    }
    for name, cache in managers.items():
        await cache.set(f"gathering:bench:{name}", SMALL)
    names = list(managers)
    for rep in range(reps):
        for name in names[rep % 2 :] + names[: rep % 2]:
            cache = managers[name]
            key = f"gathering:bench:{name}"
            await latencies(lambda: cache.get(key), 200)
            gets = await latencies(lambda: cache.get(key), 2000)
            samples[name]["get_p50"].append(pct(gets, 0.5))
            samples[name]["get_tput"].append(await throughput(lambda: cache.get(key), total))
    flushes = managers["on (flush every 1 s)"].fleet
    for cache in managers.values():
        await cache.aclose()
    result = {name: {k: statistics.median(v) for k, v in m.items()} for name, m in samples.items()}
    result["on (flush every 1 s)"]["flushes"] = float(flushes.flushes if flushes else 0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--total", type=int, default=20000)
    args = parser.parse_args()
    started = time.perf_counter()
    with RedisServer() as server:
        result = asyncio.run(measure(server.url, args.reps, args.total))
    print(f"W1 small JSON get, fleet statistics on vs off ({args.reps} interleaved reps)")
    for name, figures in result.items():
        print(
            f"  {name:22} get p50 {figures['get_p50']:7.1f} us   "
            f"get/s @64 {figures['get_tput']:9.0f}"
            + (f"   flushes {figures['flushes']:.0f}" if "flushes" in figures else "")
        )
    on, off = result["on (flush every 1 s)"], result["off"]
    print(f"  on/off throughput {on['get_tput'] / off['get_tput']:.3f}")
    print(f"  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
