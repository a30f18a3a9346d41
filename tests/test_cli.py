"""The ``gathering-cache`` command line, run as a person runs it: a subprocess against a
real Redis, with traffic from two other processes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ops_traffic
from tests.servers import RedisServer, free_port
from tests.stub_openai import StubEmbeddingServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "cli-s3cret-pw"


def cli(
    *args: str, prefix: str = "gathering:", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REDIS_", "GATHERING_CACHE_", "OPENAI_"))
    }
    environment["GATHERING_CACHE_KEY_PREFIX"] = prefix
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gathering_cache", *args],
        cwd=ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *absent: str) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for secret in absent:
        assert secret not in result.stderr
        assert secret not in result.stdout
    return lines[0]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A password-protected Redis of this module's own."""
    with RedisServer(password=PASSWORD) as started:
        yield started


@pytest.fixture(scope="module")
def url(server: RedisServer) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"


@pytest.fixture
def prefix(url: str) -> str:
    """A fresh prefix with two processes' traffic under it."""
    chosen = f"cli-{uuid.uuid4().hex[:6]}:"
    processes = [
        subprocess.Popen([sys.executable, "-m", "tests.ops_traffic", url, chosen], cwd=ROOT)
        for _ in range(2)
    ]
    for process in processes:
        assert process.wait(timeout=60) == 0
    return chosen


def test_ping_reports_round_trip_and_version(url: str) -> None:
    result = cli("--url", url, "ping")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PONG from redis://")
    assert "Redis 7." in result.stdout or "Redis 8." in result.stdout
    assert PASSWORD not in result.stdout


def test_the_url_comes_from_the_environment_too(url: str) -> None:
    result = cli("ping", env={"REDIS_URL": url})
    assert result.returncode == 0, result.stderr


def test_stats_json_adds_up_both_processes(url: str, prefix: str) -> None:
    result = cli("--url", url, "stats", "--json", prefix=prefix)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert PASSWORD not in result.stdout
    fleet = report["fleet"]
    assert fleet["processes"] == 2  # the CLI itself is not part of the fleet
    embedding = report["namespaces"]["embedding"]
    assert embedding["keys"] == 6
    assert embedding["memory_bytes"] > 0
    assert embedding["memory_sampled"] == 6
    assert embedding["hits"] == 2 * ops_traffic.EMBEDDING_HITS
    assert embedding["misses"] == 2 * ops_traffic.EMBEDDING_MISSES
    assert report["namespaces"]["circle"]["hit_rate"] == 50.0
    assert [p["breaker"] for p in fleet["by_process"]] == ["closed", "closed"]
    assert report["breaker"]["state"] == "closed"
    titles = [r["title"] for r in report["recommendations"]]
    assert "Persistence on for a pure cache" not in titles  # the server runs with save ''


def test_stats_table_lists_every_namespace(url: str, prefix: str) -> None:
    result = cli("--url", url, "stats", prefix=prefix)
    assert result.returncode == 0, result.stderr
    for name in ("embedding", "rag", "circle", "llm", "total"):
        assert f"\n{name} " in result.stdout
    assert "2 process(es)" in result.stdout
    assert "breaker closed" in result.stdout


def test_keys_lists_with_ttls_within_the_prefix(url: str, prefix: str) -> None:
    result = cli("--url", url, "keys", "circle:*", prefix=prefix)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert sorted(key for key, _ in rows) == [f"{prefix}circle:1", f"{prefix}circle:2"]
    assert all(0 < int(ttl) <= 600 for _, ttl in rows)
    limited = cli("--url", url, "keys", "--limit", "3", prefix=prefix)
    assert len(limited.stdout.splitlines()) == 3
    assert "--limit" in limited.stderr


def test_clear_refuses_without_a_terminal_and_clears_with_yes(url: str, prefix: str) -> None:
    refused = cli("--url", url, "clear", prefix=prefix)
    assert "--yes" in assert_one_error_line(refused)
    kept = cli("--url", url, "keys", prefix=prefix)
    assert len(kept.stdout.splitlines()) > 6
    cleared = cli("--url", url, "clear", "--namespace", "circle", "--yes", prefix=prefix)
    assert cleared.returncode == 0, cleared.stderr
    assert "deleted 2 keys" in cleared.stdout
    assert cli("--url", url, "keys", "circle:*", prefix=prefix).stdout == ""
    assert cli("--url", url, "keys", "embedding:*", prefix=prefix).stdout.count("\n") == 6
    everything = cli("--url", url, "clear", "--yes", prefix=prefix)
    assert everything.returncode == 0, everything.stderr
    assert "clearing" in everything.stderr  # the progress bar
    assert cli("--url", url, "keys", prefix=prefix).stdout == ""


def test_errors_are_one_line_without_traceback_or_secret(url: str, server: RedisServer) -> None:
    unreachable = cli("--url", f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0", "ping")
    assert "Error 111" in assert_one_error_line(unreachable, PASSWORD)
    wrong = cli("--url", f"redis://:wrong-pw-42@127.0.0.1:{server.port}/0", "stats")
    assert_one_error_line(wrong, "wrong-pw-42", PASSWORD)
    malformed = cli("--url", "http://cache.example", "ping")
    assert "url" in assert_one_error_line(malformed)
    namespace = cli("--url", url, "clear", "--namespace", "nope", "--yes")
    assert "nope" in assert_one_error_line(namespace)
    usage = cli("--url", url, "keys", "--limit", "0")
    assert_one_error_line(usage)
    missing = cli("--url", url, "warm", "/no/such/file")
    assert_one_error_line(missing)


def test_warm_embeds_only_what_is_not_cached(url: str, tmp_path: Path) -> None:
    prefix = f"warm-{uuid.uuid4().hex[:6]}:"
    texts = tmp_path / "texts.txt"
    texts.write_text("alpha\nbeta\n\ngamma\n")
    with StubEmbeddingServer() as stub:
        env = {"OPENAI_BASE_URL": stub.base_url, "OPENAI_EMBEDDING_MODEL": "stub-model"}
        first = cli("--url", url, "warm", str(texts), prefix=prefix, env=env)
        assert first.returncode == 0, first.stderr
        assert "warmed 3 texts: 3 embedded, 0 cached" in first.stdout
        assert "warming" in first.stderr
        again = cli("--url", url, "warm", str(texts), prefix=prefix, env=env)
        assert "warmed 3 texts: 0 embedded, 3 cached" in again.stdout
        assert stub.texts_embedded() == 3


def test_demo_runs_and_cleans_up(url: str) -> None:
    result = cli("--url", url, "demo")
    assert result.returncode == 0, result.stderr
    assert "hit_rate=" in result.stdout
    assert "cleaned up" in result.stdout
    assert cli("--url", url, "keys", prefix="gathering-demo:").stdout == ""


def test_help_lists_every_command() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("ping", "stats", "keys", "clear", "warm", "demo", "dashboard"):
        assert command in result.stdout


def test_clear_asks_on_a_terminal(url: str, prefix: str) -> None:
    """On a terminal, ``clear`` asks; "n" keeps everything, "y" clears."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("GATHERING_CACHE_")
    }
    environment["GATHERING_CACHE_KEY_PREFIX"] = prefix
    for answer, expected_status in (("n", 1), ("y", 0)):
        controller, terminal = pty.openpty()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "gathering_cache", "--url", url, "clear"],
                cwd=ROOT,
                env=environment,
                stdin=terminal,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            os.write(controller, f"{answer}\n".encode())
            out, err = process.communicate(timeout=60)
        finally:
            os.close(controller)
            os.close(terminal)
        assert process.returncode == expected_status, err
        assert f"Delete every key under {prefix!r}?" in out
        left = cli("--url", url, "keys", prefix=prefix).stdout
        assert (left != "") is (answer == "n")
