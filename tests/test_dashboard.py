"""The dashboard end to end: ``gathering-cache dashboard`` as a subprocess on a real,
password-protected Redis with traffic from two processes and half an hour of replayed
history; its HTTP surface (token, read-only, JSON, metrics, no password anywhere); and the
page in a real headless browser (Debian's chromium), whose screenshot docs/operations.md
shows (docs/images/dashboard.png)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gathering_cache import AsyncCacheManager, CacheConfig, Operation, Outcome
from gathering_cache.ops.dashboard import render_page
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
            recorder.observe(Operation("pop_index", "rag", Outcome.DONE, 0.0005))
            for _ in range(12):
                recorder.observe(Operation("pop_index", "rag", Outcome.DONE, 0.0005))
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
    assert 'gathering_cache_hits_total{namespace="embedding"}' in metrics
    assert "gathering_cache_breaker_state 0" in metrics
    assert 'gathering_cache_operation_duration_seconds_bucket{operation="rag",le="+Inf"}' in (
        metrics
    )
    families = {family.name: family for family in text_string_to_metric_families(metrics)}
    hits = families["gathering_cache_hits"]  # the parser drops _total from counters
    assert sum(sample.value for sample in hits.samples) == report["fleet"]["hits"]
    assert families["gathering_cache_operation_duration_seconds"].type == "histogram"
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
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "No lookups yet." in page
