"""The dashboard end to end: ``gathering-cache dashboard`` as a subprocess on a real,
password-protected Redis with traffic from two processes and half an hour of replayed
history; its HTTP surface (token, read-only, JSON, metrics, no password anywhere); and the
page in a real headless browser (Debian's chromium), whose screenshot docs/operations.md
shows (docs/images/dashboard.png)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gathering_cache import AsyncCacheManager, CacheConfig, Operation, Outcome
from gathering_cache.ops.dashboard import Dashboard, make_handler, render_page
from gathering_cache.ops.fleet import FleetRecorder
from tests.servers import RedisServer, free_port, in_ci

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"
BUILD_SHOT = ROOT / "build" / "dashboard.png"
PASSWORD = "dash-s3cret-pw"
TOKEN = "tok-" + uuid.uuid4().hex[:8]
MINUTES = 30


async def replay_history(url: str, prefix: str) -> None:
    """Half an hour of lookups, minute by minute, through a recorder with a clock of its
    own: what a service would have produced (hit rates that climb as the cache warms)."""
    config = CacheConfig(url=url, key_prefix=prefix, stats_flush_interval=0)
    async with AsyncCacheManager(config) as cache:
        now = time.time()
        clock = [now - MINUTES * 60]
        recorder = FleetRecorder(cache.telemetry, 10**6, 86400, clock=lambda: clock[0])
        rates: dict[str, Callable[[int], float]] = {
            "embedding": lambda m: 0.45 + 0.4 * m / MINUTES,
            "rag": lambda m: 0.2 + 0.1 * math.sin(m / 3),
            "circle": lambda m: 0.7,
            "llm": lambda m: 0.25 + 0.35 * m / MINUTES,
        }
        for minute in range(MINUTES):
            clock[0] = now - (MINUTES - minute) * 60 + 1
            for namespace, rate in rates.items():
                lookups = 40
                hits = round(lookups * rate(minute))
                for index in range(lookups):
                    hit = index < hits
                    outcome = Outcome.HIT if hit else Outcome.MISS
                    duration = 0.0004 * (1 + index % 7)
                    recorder.observe(Operation("get", namespace, outcome, duration, 64, 1, hit))
                recorder.observe(Operation("set", namespace, Outcome.STORED, 0.0006, 64, 1))
            for _ in range(13):  # an invalidation: one generation counter incremented
                recorder.observe(Operation("counters", "rag", Outcome.DONE, 0.0005))
        clock[0] = now
        assert await recorder.flush()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD) as started:
        yield started


@pytest.fixture(scope="module")
def dashboard(server: RedisServer) -> Iterator[str]:
    """The dashboard's base URL, serving a prefix with traffic from two processes and a
    replayed history, on a Redis near its maxmemory with noeviction."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    prefix = f"dash-{uuid.uuid4().hex[:6]}:"
    traffic: list[subprocess.Popen[bytes]] = [
        subprocess.Popen([sys.executable, "-m", "tests.ops_traffic", url, prefix], cwd=ROOT)
        for _ in range(2)
    ]
    for process in traffic:
        assert process.wait(timeout=60) == 0
    asyncio.run(replay_history(url, prefix))
    raw = redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD)
    used = int(raw.info("memory")["used_memory"])
    raw.config_set("maxmemory", str(int(used * 1.1)))
    raw.config_set("maxmemory-policy", "noeviction")
    raw.close()
    port = free_port()
    server_process: subprocess.Popen[str] = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gathering_cache",
            "--url",
            url,
            "dashboard",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--minutes",
            str(MINUTES + 2),
        ],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GATHERING_"))},
            "GATHERING_CACHE_KEY_PREFIX": prefix,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert server_process.stdout is not None
        line = server_process.stdout.readline()
        assert line.startswith(f"dashboard on {base}/"), server_process.stderr
        yield base
    finally:
        server_process.send_signal(signal.SIGINT)  # Ctrl-C: a clean exit (coverage saved)
        assert server_process.wait(timeout=10) == 0
        raw = redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD)
        raw.config_set("maxmemory", "0")
        raw.close()


def get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_every_path_needs_the_token(dashboard: str) -> None:
    for path in ("/", "/api/stats", "/metrics", "/nope"):
        status, headers, _ = get(dashboard + path)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == "Bearer"
        assert get(dashboard + path, {"Authorization": "Bearer wrong"})[0] == 401
    assert get(dashboard + "/?token=wrong")[0] == 401
    status, headers, _ = get(dashboard + f"/?token={TOKEN}")
    assert status == 200
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"]
    assert get(dashboard + "/api/stats", {"Cookie": cookie})[0] == 200
    assert get(dashboard + "/nope", BEARER)[0] == 404


def test_it_is_read_only(dashboard: str) -> None:
    for method in ("POST", "PUT", "DELETE"):
        assert get(dashboard + "/api/stats", BEARER, method)[0] == 405


def test_json_and_metrics_carry_the_fleet_and_never_the_password(dashboard: str) -> None:
    status, headers, body = get(dashboard + "/api/stats", BEARER)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    report = json.loads(body)
    assert report["fleet"]["processes"] == 3  # two traffic processes, the replay
    assert report["namespaces"]["embedding"]["keys"] == 6
    assert len(report["history"]["minutes"]) == MINUTES + 2
    titles = {r["title"] for r in report["recommendations"]}
    assert "Memory near maxmemory with noeviction" in titles
    assert "RAG results invalidated faster than they are read" in titles
    assert "Low hit rate in rag" in titles
    status, _, metrics = get(dashboard + "/metrics", BEARER)
    assert status == 200
    assert "gathering_cache_fleet_breaker_state 0" in metrics
    families = {family.name: family for family in text_string_to_metric_families(metrics)}
    # Its own family, never the per-process collector's names (Prometheus may scrape both).
    assert all(name.startswith("gathering_cache_fleet_") for name in families)
    assert all(family.type == "gauge" for family in families.values())
    hits = families["gathering_cache_fleet_hits"]
    assert {sample.labels["namespace"] for sample in hits.samples} >= {"embedding", "rag"}
    assert sum(sample.value for sample in hits.samples) == report["fleet"]["hits"]
    assert families["gathering_cache_fleet_processes"].samples[0].value == 3
    latency = families["gathering_cache_fleet_latency_seconds"]
    assert {s.labels["quantile"] for s in latency.samples} == {"0.5", "0.95", "0.99"}
    page = get(dashboard + "/", BEARER)[2]
    for text in (body, metrics, page):
        assert PASSWORD not in text


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found


def browser(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_the_charts_render_in_a_real_browser(dashboard: str, tmp_path: Path) -> None:
    page = f"{dashboard}/?token={TOKEN}"
    dom = browser("--dump-dom", page, profile=tmp_path / "dom").stdout
    assert 'data-chart="hit-rate"' in dom
    for namespace in ("embedding", "rag", "circle", "llm"):
        assert f'<polyline class="series" data-namespace="{namespace}"' in dom, namespace
        assert f'<rect class="bar" data-namespace="{namespace}"' in dom
    assert 'data-chart="cost"' in dom
    assert "Memory near maxmemory with noeviction" in dom
    assert "Evidence: used_memory" in dom
    shot = tmp_path / "dashboard.png"
    browser(f"--screenshot={shot}", "--window-size=1280,1400", page, profile=tmp_path / "shot")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1400)
    assert len(data) > 50_000  # drawn, not blank
    # Kept in build/ on every run; `make screenshot` (UPDATE_SCREENSHOT=1) refreshes the one
    # docs/operations.md shows, so a test run leaves the tracked tree untouched.
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else BUILD_SHOT
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, target)


def test_the_page_escapes_what_it_shows() -> None:
    report = {
        "time": 0.0,
        "enabled": False,
        "reason": "<script>alert(1)</script>",
        "endpoint": "redis://h:1/0",
        "key_prefix": "<b>",
        "total_keys": None,
        "server": {},
        "breaker": {},
        "namespaces": {
            name: {"keys": None, "memory_bytes": None, "memory_sampled": 0}
            for name in ("embedding", "rag", "circle", "llm")
        },
        "fleet": {
            "processes": 0,
            "hits": 0,
            "misses": 0,
            "hit_rate": 0.0,
            "sets": 0,
            "errors": 0,
            "cost_saved": 0.0,
            "latency_ms": {"p50": None, "p95": None, "p99": None},
            "namespaces": {},
            "by_process": [],
        },
        "recommendations": [],
    }
    page = render_page(report)
    assert "partial" not in page
    assert "partial: not everything" in render_page({**report, "partial": True})
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "No lookups yet." in page


# -- regressions from the review of the ops wing -----------------------------------------------


def test_a_non_ascii_token_is_refused_not_a_crash(dashboard: str) -> None:
    assert get(dashboard + "/?token=%C3%A9")[0] == 401
    assert get(dashboard + "/api/stats", {"Authorization": "Bearer \u00e9"})[0] == 401
    assert get(dashboard + "/api/stats", {"Cookie": "gathering_cache_token=\u00e9"})[0] == 401
    assert get(dashboard + "/api/stats", BEARER)[0] == 200  # still serving


def fetch(port: int, path: str, host: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@contextlib.contextmanager
def in_process(
    config: CacheConfig, token: str | None, **options: Any
) -> Iterator[tuple[int, Dashboard]]:
    """A dashboard served from this process on a free loopback port."""
    board = Dashboard(config, 2, **options)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(board, token))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_port, board
    finally:
        httpd.shutdown()
        httpd.server_close()
        board.close()
        thread.join(timeout=5)


def test_without_a_token_only_a_loopback_host_is_served(server: RedisServer) -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends
    ``Host: evil.example``; without a token it is refused."""
    config = CacheConfig(url=f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
    with in_process(config, None) as (port, _):
        assert fetch(port, "/metrics", f"evil.example:{port}") == 403
        assert fetch(port, "/metrics", "127.0.0.1.evil.example") == 403
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"):
            assert fetch(port, "/metrics", host) == 200, host
    with in_process(config, TOKEN) as (port, _):  # with a token, the token decides
        assert fetch(port, f"/metrics?token={TOKEN}", "dashboard.internal") == 200


def test_the_token_can_come_from_the_environment(server: RedisServer) -> None:
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    process = subprocess.Popen(
        [sys.executable, "-m", "gathering_cache", "--url", url, "dashboard", "--port", str(port)],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GATHERING_"))},
            "GATHERING_CACHE_DASHBOARD_TOKEN": TOKEN,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "(token required)" in process.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/metrics")[0] == 401
        assert get(base + "/metrics", BEARER)[0] == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0


def test_one_collect_at_a_time_and_a_late_one_is_cancelled() -> None:
    """A stalled server: requests do not pile collects up (they get the last report), and a
    collect that outlives the wait is cancelled, its scan stopped."""
    with RedisServer() as stalled:
        config = CacheConfig(url=stalled.url, key_prefix="stall:", bulk_timeout=2.0)
        board = Dashboard(config, 2, fresh=0.0)
        try:
            first = board.report()
            assert board.collects == 1
            stalled.pause()
            waiter = threading.Thread(target=board.report)
            waiter.start()
            for _ in range(200):
                if board.collects == 2:
                    break
                time.sleep(0.01)
            assert board.collects == 2
            for _ in range(5):  # served the last report while one is collected
                assert board.report() is first
            assert board.collects == 2
            waiter.join(timeout=30)
            stalled.resume()
        finally:
            board.close()
        late = Dashboard(config, 2, fresh=0.0, wait=0.2)
        try:
            stalled.pause()
            with pytest.raises(TimeoutError):
                late.report()

            async def pending() -> int:
                return len(asyncio.all_tasks()) - 1  # this coroutine's own task aside

            for _ in range(100):
                if asyncio.run_coroutine_threadsafe(pending(), late._loop).result(5) == 0:
                    break
                time.sleep(0.01)
            assert asyncio.run_coroutine_threadsafe(pending(), late._loop).result(5) == 0
        finally:
            stalled.resume()
            late.close()
