"""The ``gathering-cache`` command line (also ``python -m gathering_cache``).

Configured like the library (the environment and ``.env``: ``REDIS_URL``, ``REDIS_HOST`` ...,
``GATHERING_CACHE_<FIELD>``), plus ``--url``. Every command reads Redis with SCAN only,
through the cache's own guarded calls. A failure prints one ``error: ...`` line on stderr and
exits with status 1: no traceback, never the password.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from gathering_cache.config import CacheConfig
from gathering_cache.errors import CacheError
from gathering_cache.manager import AsyncCacheManager
from gathering_cache.ops.report import NAMESPACES_SHOWN, collect

try:
    import click
except ImportError:  # pragma: no cover - the cli extra is installed in tests
    sys.stderr.write("error: the command line needs click: pip install 'gathering-cache[cli]'\n")
    raise SystemExit(1) from None

__all__ = ["cli", "main"]

T = TypeVar("T")


class Failure(Exception):
    """A failure the command reports as one ``error:`` line."""


def fail(message: str) -> NoReturn:
    raise Failure(message)


def _config(url: str | None, env_file: str | None) -> CacheConfig:
    config = CacheConfig.from_env(env_file)
    # The CLI reads the fleet's statistics; it is not part of the fleet.
    update: dict[str, Any] = {"stats_flush_interval": 0}
    if url is not None:
        update["url"] = url
    return config.model_copy(update=update)


def _run(ctx: click.Context, action: Callable[[AsyncCacheManager], Coroutine[Any, Any, T]]) -> T:
    """Run ``action`` on a connected manager; an unreachable store is a failure."""
    config: CacheConfig = ctx.obj["config"]

    async def main() -> T:
        cache = AsyncCacheManager(config)
        try:
            if not await cache.connect():
                fail(f"cannot use the cache: {cache.telemetry.reason}")
            return await action(cache)
        finally:
            await cache.aclose()

    return asyncio.run(main())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", help="redis:// or rediss:// URL (default: REDIS_URL, REDIS_HOST ...).")
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    help="The .env file to read (default: ./.env when present).",
)
@click.pass_context
def cli(ctx: click.Context, url: str | None, env_file: str | None) -> None:
    """Operate a gathering-cache: ping, stats, keys, clear, warm, demo, dashboard."""
    ctx.obj = {"config": _config(url, env_file)}


@cli.command()
@click.pass_context
def ping(ctx: click.Context) -> None:
    """Round-trip time and server version."""

    async def action(cache: AsyncCacheManager) -> str:
        started = time.perf_counter()
        await cache.exists(f"{cache.config.key_prefix}ping")
        elapsed = (time.perf_counter() - started) * 1000
        if not cache.is_enabled():
            fail(f"no answer: {cache.telemetry.reason}")
        info = await cache.telemetry.server_info()
        version = info.get("redis_version", "unknown version")
        return f"PONG from {cache.telemetry.endpoint} in {elapsed:.2f} ms (Redis {version})"

    click.echo(_run(ctx, action))


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)  # pragma: no cover


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--sample", default=20, show_default=True, help="Keys sampled per namespace.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool, sample: int) -> None:
    """Keys, memory, hits, misses, hit rate, sets, errors, cost saved per namespace, for
    every process (fleet-wide), and the breaker states."""
    report = _run(ctx, lambda cache: collect(cache, sample=sample, history=False))
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    fleet = report["fleet"]
    server = report["server"]
    click.echo(
        f"{report['endpoint']}  Redis {server.get('redis_version', '?')}  "
        f"prefix {report['key_prefix']!r}  {report['total_keys']} keys  "
        f"{fleet['processes']} process(es)"
    )
    header = (
        f"{'namespace':<10} {'keys':>8} {'memory':>10} {'hits':>8} {'misses':>8} "
        f"{'hit rate':>8} {'sets':>8} {'errors':>7} {'saved $':>9}"
    )
    click.echo(header)
    for name in NAMESPACES_SHOWN:
        row = report["namespaces"][name]
        keys = "-" if row["keys"] is None else str(row["keys"])
        click.echo(
            f"{name:<10} {keys:>8} {_fmt_bytes(row['memory_bytes']):>10} {row['hits']:>8} "
            f"{row['misses']:>8} {row['hit_rate']:>7.1f}% {row['sets']:>8} {row['errors']:>7} "
            f"{row['cost_saved']:>9.4f}"
        )
    generic = fleet["namespaces"]["generic"]
    click.echo(
        f"{'generic':<10} {'':>8} {'':>10} {generic['hits']:>8} {generic['misses']:>8} "
        f"{generic['hit_rate']:>7.1f}% {generic['sets']:>8} {generic['errors']:>7} "
        f"{generic['cost_saved']:>9.4f}"
    )
    click.echo(
        f"{'total':<10} {'':>8} {'':>10} {fleet['hits']:>8} {fleet['misses']:>8} "
        f"{fleet['hit_rate']:>7.1f}% {fleet['sets']:>8} {fleet['errors']:>7} "
        f"{fleet['cost_saved']:>9.4f}"
    )
    latency = fleet["latency_ms"]
    click.echo(
        f"latency (ms, bucket bounds): p50 {latency['p50']}  p95 {latency['p95']}  "
        f"p99 {latency['p99']}"
    )
    for process in fleet["by_process"]:
        click.echo(
            f"process {process['process']}: breaker {process['breaker']}, "
            f"{process['hits']} hits, {process['misses']} misses"
        )
    for advice in report["recommendations"]:
        click.echo(f"recommendation: {advice['title']}: {advice['advice']} ({advice['evidence']})")


@cli.command()
@click.argument("pattern", required=False)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def keys(ctx: click.Context, pattern: str | None, limit: int) -> None:
    """List keys under the prefix with their TTLs (SCAN only). PATTERN is a glob pattern,
    under the prefix (prepended when missing)."""

    async def action(cache: AsyncCacheManager) -> list[tuple[str, int | None]]:
        prefix = cache.config.key_prefix
        glob = None
        if pattern is not None:
            glob = pattern if pattern.startswith(prefix) else prefix + pattern
        listed: list[tuple[str, int | None]] = []
        async for key in cache.scan_keys(glob):
            listed.append((key, await cache.ttl(key)))
            if len(listed) >= limit:
                break
        return listed

    listed = _run(ctx, action)
    for key, ttl in listed:
        click.echo(f"{key}\t{'-' if ttl is None else ttl}")
    if len(listed) >= limit:
        click.echo(f"(first {limit} keys; --limit N for more)", err=True)


@cli.command()
@click.option("--namespace", help=f"Only this namespace: {', '.join(NAMESPACES_SHOWN)}.")
@click.option("--yes", is_flag=True, help="Do not ask (needed without a terminal).")
@click.pass_context
def clear(ctx: click.Context, namespace: str | None, yes: bool) -> None:
    """Delete every key under the prefix (or one namespace), with a progress bar."""
    config: CacheConfig = ctx.obj["config"]
    if namespace is not None and namespace not in NAMESPACES_SHOWN:
        fail(f"unknown namespace {namespace!r} (one of {', '.join(NAMESPACES_SHOWN)})")
    what = f"namespace {namespace!r}" if namespace else "every key"
    if not yes:
        if not sys.stdin.isatty():
            fail("refusing to clear without --yes (no terminal to confirm on)")
        if not click.confirm(f"Delete {what} under {config.key_prefix!r}?"):
            fail("cancelled")

    async def action(cache: AsyncCacheManager) -> int:
        pattern = f"{config.key_prefix}{namespace}:*" if namespace else f"{config.key_prefix}*"
        total = await cache.telemetry.count(pattern) or 0
        deleted = 0
        with click.progressbar(length=total, label="clearing", file=sys.stderr) as bar:
            batch: list[str] = []
            async for key in cache.scan_keys(namespace=namespace, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    done = await cache.telemetry.delete(batch)
                    deleted += done
                    bar.update(len(batch))
                    batch = []
            if batch:
                deleted += await cache.telemetry.delete(batch)
                bar.update(len(batch))
        if not cache.is_enabled():
            fail(f"stopped after {deleted} keys: {cache.telemetry.reason}")
        return deleted

    deleted = _run(ctx, action)
    click.echo(f"deleted {deleted} keys ({what})")


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--batch", default=64, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def warm(ctx: click.Context, file: str, batch: int) -> None:
    """Warm the embedding cache from FILE (one text a line) with the provider configured by
    OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_EMBEDDING_MODEL: only texts not cached yet are
    sent. (RAG results are warmed from code, with ``warm_rag_cache``: they need the
    application's own recall.)"""
    from gathering_cache.agents.cached_embedder import CachedEmbedder
    from gathering_cache.agents.providers import OpenAIEmbeddings

    texts = [line.strip() for line in Path(file).read_text().splitlines() if line.strip()]
    provider = OpenAIEmbeddings.from_env()

    async def action(cache: AsyncCacheManager) -> tuple[int, int]:
        embedder = CachedEmbedder(provider, cache)
        try:
            with click.progressbar(length=len(texts), label="warming", file=sys.stderr) as bar:
                for start in range(0, len(texts), batch):
                    chunk = texts[start : start + batch]
                    await embedder.embed_many(chunk)
                    bar.update(len(chunk))
        finally:
            await provider.aclose()
        return embedder.stats.requested, embedder.stats.texts_sent

    requested, computed = _run(ctx, action)
    click.echo(f"warmed {requested} texts: {computed} embedded, {requested - computed} cached")


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """A short tour: set/get, embeddings, RAG invalidation, stats (keys under
    ``gathering-demo:``)."""
    from gathering_cache.ops.demo import run_demo

    config: CacheConfig = ctx.obj["config"]
    asyncio.run(run_demo(config.model_copy(update={"key_prefix": "gathering-demo:"}), click.echo))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", help="Require this token (Bearer header, or ?token= once).")
@click.option("--minutes", default=60, show_default=True, help="History shown.")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, token: str | None, minutes: int) -> None:
    """Serve the analytics dashboard (read-only): /, /api/stats, /metrics."""
    from gathering_cache.ops.dashboard import serve

    serve(ctx.obj["config"], host=host, port=port, token=token, minutes=minutes, echo=click.echo)


def main(argv: list[str] | None = None) -> None:
    """The console script: run the CLI, every failure as one ``error:`` line, exit 1."""
    # The library's warnings (Redis unavailable ...) would repeat the error line.
    logging.disable(logging.WARNING)
    try:
        cli.main(args=argv, prog_name="gathering-cache", standalone_mode=False)
    except click.exceptions.Abort:
        _error("aborted")
    except click.ClickException as exc:
        _error(exc.format_message())
    except (Failure, CacheError, ValueError, OSError) as exc:
        _error(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        _error("interrupted")
    sys.exit(0)


def _error(message: str) -> NoReturn:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    sys.stderr.write(f"error: {first}\n")
    sys.exit(1)
