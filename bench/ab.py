"""A/B benchmark of two source trees of gathering_cache, each as a ratio to raw redis.asyncio.

    python -m bench.ab --before-ref f944234             # default, 2-4 minutes
    python -m bench.ab --before-ref f944234 --quick     # under ~40 s
    python -m bench.ab --before DIR --after DIR --rounds 7

"before" is a git ref checked out into a temporary worktree (``--before-ref``, removed at the
end) or an existing tree (``--before``); "after" is a tree, the repository root by default.
One redis-server is started on a free loopback port. Each round runs one fresh Python process
per tree, in alternating order (before first in odd rounds, after first in even ones), with
``PYTHONPATH=<tree>`` first so that that tree's ``gathering_cache`` is the one imported (the
child checks it and fails otherwise). Each child measures raw redis.asyncio + orjson and the
library against the same server, interleaved call by call (throughput: in alternating blocks),
so each ratio ours/raw comes from one process and a slow spell of the machine falls on both of
its sides.

Metrics: W1 small JSON (~200 B) get p50, set p50 and get/s with 64 coroutines; W2 a 1536-float
embedding get_embedding p50 and set_embedding p50. Latency ratios: lower is better; the get/s
ratio: higher is better. The table shows each round's ratio and the median over rounds; JSON
(with the absolute figures) goes to build/bench-ab.json.

Run as a script with ``--child`` this file is the measuring process; it imports nothing from
this repository at module level, so the tree under test supplies ``gathering_cache``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "bench-ab.json"
RESULT_MARK = "BENCH-AB-RESULT "

SMALL = {
    "agent_id": 17,
    "query": "What are the user's preferences?",
    "results": [{"id": i, "content": f"memory {i}", "score": 0.9 - i / 10} for i in range(3)],
    "model": "text-embedding-3-small",
}  # ~200 bytes of JSON, as in bench/run.py

# (key, label, unit, better): the order of the tables.
METRICS: list[tuple[str, str, str, str]] = [
    ("w1_get_p50", "W1 get p50", "µs", "lower"),
    ("w1_set_p50", "W1 set p50", "µs", "lower"),
    ("w1_get_tput", "W1 get/s @64", "get/s", "higher"),
    ("w2_get_p50", "W2 get_embedding p50", "µs", "lower"),
    ("w2_set_p50", "W2 set_embedding p50", "µs", "lower"),
]


Calls = dict[str, Callable[[], Awaitable[Any]]]


class Params(TypedDict):
    w1_get: int  # sequential gets per client, raw and ours interleaved call by call
    w1_set: int
    tput_blocks: int  # alternating raw/ours throughput blocks
    tput_total: int  # gets per client per throughput block, over 64 coroutines
    w2_get: int
    w2_set: int
    warmup: int


QUICK: Params = {
    "w1_get": 1200,
    "w1_set": 600,
    "tput_blocks": 6,
    "tput_total": 1280,
    "w2_get": 600,
    "w2_set": 300,
    "warmup": 200,
}
FULL: Params = {
    "w1_get": 8000,
    "w1_set": 4000,
    "tput_blocks": 16,
    "tput_total": 3072,
    "w2_get": 5000,
    "w2_set": 2500,
    "warmup": 500,
}


# -- the child: one tree, raw and ours interleaved in one process ---------------------------------


def f32_vector(n: int, seed: int) -> list[float]:
    """Floats exactly representable as float32 (as an embedding API returns them)."""
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


async def paired(
    raw: Callable[[], Awaitable[Any]], ours: Callable[[], Awaitable[Any]], n: int
) -> tuple[list[float], list[float]]:
    """``n`` latencies (µs) of each, interleaved call by call, raw first in even pairs: a
    slow spell of the machine (another process, a frequency change) falls on both sides."""
    raw_out, ours_out = [], []
    clock = time.perf_counter
    for i in range(n):
        if i % 2 == 0:
            t0 = clock()
            await raw()
            t1 = clock()
            await ours()
            t2 = clock()
            raw_out.append((t1 - t0) * 1e6)
            ours_out.append((t2 - t1) * 1e6)
        else:
            t0 = clock()
            await ours()
            t1 = clock()
            await raw()
            t2 = clock()
            ours_out.append((t1 - t0) * 1e6)
            raw_out.append((t2 - t1) * 1e6)
    return raw_out, ours_out


async def throughput(call: Callable[[], Awaitable[Any]], total: int, workers: int = 64) -> float:
    per = total // workers

    async def worker() -> None:
        for _ in range(per):
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return per * workers / (time.perf_counter() - start)


def check_import(tree: Path) -> str:
    """Import gathering_cache and fail loudly unless it comes from ``tree``."""
    import gathering_cache

    where = Path(gathering_cache.__file__ or "").resolve()
    if not where.is_relative_to(tree.resolve()):
        raise SystemExit(
            f"bench.ab child: gathering_cache was imported from {where}, not from the tree "
            f"under test {tree} (PYTHONPATH={os.environ.get('PYTHONPATH')!r}, "
            f"sys.path={sys.path!r})"
        )
    return str(where)


async def measure(
    url: str, p: Params
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]], dict[str, float]]:
    """The figures of raw and ours ({"raw": {metric: value}, "ours": {...}}), for each metric
    the spread behind its figure (p10/p50/p90/mean, or min/median/max of get/s), and the
    ratios ours/raw."""
    import orjson
    import redis.asyncio as redis_asyncio

    from gathering_cache import AsyncCacheManager, CacheConfig

    raw = redis_asyncio.Redis.from_url(url, max_connections=128)  # as bench/clients.py Raw
    ours = AsyncCacheManager(CacheConfig.from_url(url, max_connections=64))  # as Ours
    if not await ours.connect():
        raise SystemExit(f"bench.ab child: the library did not connect to {url}")
    vector = f32_vector(1536, 7)

    async def raw_get() -> Any:
        data = await raw.get("bench:ab:w1:raw")
        return None if data is None else orjson.loads(data)

    async def raw_set() -> Any:
        return await raw.set("bench:ab:w1:raw", orjson.dumps(SMALL), ex=3600)

    async def raw_emb_get() -> Any:
        data = await raw.get("bench:ab:w2:raw")
        return None if data is None else orjson.loads(data)

    async def raw_emb_set() -> Any:
        return await raw.set("bench:ab:w2:raw", orjson.dumps(vector), ex=3600)

    async def ours_get() -> Any:
        return await ours.get("bench:ab:w1:ours")

    async def ours_set() -> Any:
        return await ours.set("bench:ab:w1:ours", SMALL, ttl=3600)

    async def ours_emb_get() -> Any:
        return await ours.get_embedding("bench ab doc", model="m")

    async def ours_emb_set() -> Any:
        return await ours.set_embedding("bench ab doc", vector, model="m")

    raw_calls: Calls = {
        "get": raw_get,
        "set": raw_set,
        "emb_get": raw_emb_get,
        "emb_set": raw_emb_set,
    }
    ours_calls: Calls = {
        "get": ours_get,
        "set": ours_set,
        "emb_get": ours_emb_get,
        "emb_set": ours_emb_set,
    }
    for side, c in (("raw", raw_calls), ("ours", ours_calls)):
        await c["set"]()
        await c["emb_set"]()
        assert await c["get"]() == SMALL, side
        assert await c["emb_get"]() == vector, side
        await latencies(c["get"], p["warmup"])
        await latencies(c["emb_get"], p["warmup"] // 2)
        await throughput(c["get"], 64 * 8)  # opens the 64 connections the get/s blocks use

    figures: dict[str, dict[str, float]] = {"raw": {}, "ours": {}}
    spread: dict[str, dict[str, dict[str, float]]] = {"raw": {}, "ours": {}}
    for metric, op, n in (
        ("w1_get_p50", "get", p["w1_get"]),
        ("w1_set_p50", "set", p["w1_set"]),
        ("w2_get_p50", "emb_get", p["w2_get"]),
        ("w2_set_p50", "emb_set", p["w2_set"]),
    ):
        gc.collect()
        raw_got, ours_got = await paired(raw_calls[op], ours_calls[op], n)
        for side, got in (("raw", raw_got), ("ours", ours_got)):
            figures[side][metric] = pct(got, 0.5)
            spread[side][metric] = {
                "p10": pct(got, 0.1),
                "p50": pct(got, 0.5),
                "p90": pct(got, 0.9),
                "mean": statistics.fmean(got),
            }
    ratios = {m: figures["ours"][m] / figures["raw"][m] for m in figures["raw"]}
    # get/s: blocks of each in turn (raw first in even blocks); the ratio is the median of the
    # ratios of the two blocks of each turn, which a slow spell of a few blocks does not move.
    rates: dict[str, list[float]] = {"raw": [], "ours": []}
    for block in range(p["tput_blocks"]):
        for side in ("raw", "ours") if block % 2 == 0 else ("ours", "raw"):
            gc.collect()
            calls = raw_calls if side == "raw" else ours_calls
            rates[side].append(await throughput(calls["get"], p["tput_total"]))
    for side, got in rates.items():
        figures[side]["w1_get_tput"] = statistics.median(got)
        spread[side]["w1_get_tput"] = {"min": min(got), "median": statistics.median(got),
                                       "max": max(got)}  # fmt: skip
    ratios["w1_get_tput"] = statistics.median(
        o / r for r, o in zip(rates["raw"], rates["ours"], strict=True)
    )
    await raw.aclose()
    await ours.aclose()
    return figures, spread, ratios


def child_main(tree: Path, url: str, p: Params, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    imported = check_import(tree)
    import redis

    figures, spread, ratios = asyncio.run(measure(url, p))
    result = {
        "gathering_cache": imported,
        "python": platform.python_version(),
        "redis-py": redis.__version__,
        "cpu": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "figures": figures,
        "ratios": ratios,
        "spread": spread,
    }
    print(RESULT_MARK + json.dumps(result), flush=True)


# -- the parent: trees, redis-server, rounds, report ------------------------------------------------


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def describe(tree: Path) -> dict[str, Any]:
    """The commit of a tree and whether its gathering_cache/ differs from it."""
    try:
        head = git("rev-parse", "HEAD", cwd=tree)
        dirty = bool(git("status", "--porcelain", "--", "gathering_cache", cwd=tree))
    except (subprocess.CalledProcessError, OSError):
        return {"path": str(tree), "commit": None, "dirty": None}
    return {"path": str(tree), "commit": head, "dirty": dirty}


def fingerprint(tree: Path) -> str:
    """A hash of the tree's gathering_cache/ sources: shows whether a tree edited while the
    benchmark runs was the same code in every round."""
    digest = hashlib.sha256()
    for path in sorted((tree / "gathering_cache").rglob("*.py")):
        digest.update(str(path.relative_to(tree)).encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """``git worktree add --detach`` of ``ref`` into a temporary directory, removed after."""
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"bench.ab: {ref!r} is not a commit of {ROOT}") from None
    parent = Path(tempfile.mkdtemp(prefix="gathering-cache-ab-"))
    path = parent / "before"
    try:
        git("worktree", "add", "--detach", "--quiet", str(path), commit)
        yield path
    finally:
        try:
            git("worktree", "remove", "--force", str(path))
        except (subprocess.CalledProcessError, OSError):
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                git("worktree", "prune")  # drops the entry of the directory just removed
        shutil.rmtree(parent, ignore_errors=True)


def run_child(tree: Path, url: str, p: Params, label: str, cpu: int | None) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tree), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    )
    env.pop("PYTHONSAFEPATH", None)
    # Run this file as a script: sys.path[0] is then bench/, which holds no gathering_cache,
    # so the tree first on PYTHONPATH wins (``-c`` or ``-m`` would put the cwd first).
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree), url,
               json.dumps(p), "" if cpu is None else str(cpu)]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"the {label} child ({tree}) failed with exit code {done.returncode}:\n"
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line.removeprefix(RESULT_MARK))
            return result
    raise RuntimeError(f"the {label} child printed no result:\n{done.stdout}\n{done.stderr}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def tree_label(tree: dict[str, Any]) -> str:
    label = str(tree["label"])
    if tree["commit"] and tree["commit"][:7] not in label:
        label += f" ({tree['commit'][:7]})"
    return label + (" + uncommitted changes in gathering_cache/" if tree["dirty"] else "")


def render(report: dict[str, Any]) -> str:
    rounds = report["rounds"]
    sides = ("before", "after")
    trees = report["trees"]
    out = [
        f"# A/B: gathering_cache before vs after{' (quick)' if report['quick'] else ''}",
        "",
        " · ".join(f"{side}: {tree_label(trees[side])}" for side in sides),
        f"{report['machine']['date']} · Python {report['machine']['python']} · redis-py "
        f"{report['machine']['redis-py']} · {report['machine']['redis-server']} · "
        f"{report['machine']['cores']} cores · {len(rounds)} rounds · {report['elapsed s']} s"
        + (" · redis-server and children pinned to two CPUs" if report.get("pinned") else ""),
        "",
        "Ratio ours/raw redis.asyncio+orjson, measured in one process per tree and round "
        "(latency: lower is better; get/s: higher is better). Latencies: p50 of each side, "
        "raw and ours called in turn; get/s: median of the ratios of consecutive blocks.",
        "",
    ]
    headers = ["metric", "tree", *(f"r{i + 1}" for i in range(len(rounds))), "median"]
    rows: list[list[Any]] = []
    for key, label, _unit, _better in METRICS:
        for side in sides:
            per_round = [r[side]["ratios"][key] for r in rounds]
            rows.append([label, side, *per_round, report["median"][side][key]])
    out += [_table(headers, rows), ""]
    for side in sides:
        states = list(dict.fromkeys(r[side]["source"] for r in rounds))
        if len(states) > 1:
            out += [f"**Warning:** the {side} tree's gathering_cache/ changed during the run: "
                    f"{len(states)} different sources over the rounds "
                    f"({', '.join(r[side]['source'] for r in rounds)}).", ""]  # fmt: skip
    rows = []
    for key, label, unit, better in METRICS:
        b, a = report["median"]["before"][key], report["median"]["after"][key]
        absolute = [
            statistics.median(r[side]["figures"][who][key] for r in rounds)
            for side, who in (
                ("before", "raw"),
                ("after", "raw"),
                ("before", "ours"),
                ("after", "ours"),
            )
        ]
        rows.append(
            [f"{label} ({unit}, {better} better)", b, a, f"{(a / b - 1) * 100:+.1f} %", *absolute]
        )
    headers = ["metric", "before ×raw", "after ×raw", "change", "raw (before runs)",
               "raw (after runs)", "ours before", "ours after"]  # fmt: skip
    out += [
        "Medians over rounds; change = after/before of the median ratio; absolute figures are "
        "medians over rounds of each child's figure.",
        "",
        _table(headers, rows),
        "",
    ]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    version = ""
    with contextlib.suppress(OSError):
        version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True
        ).stdout
    try:
        import redis

        redis_py = redis.__version__
    except ImportError:
        redis_py = "?"
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "redis-py": redis_py,
        "redis-server": " ".join(version.split()[:3]) if version else "?",
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def pin_cpus(redis_pid: int | None) -> dict[str, int] | None:
    """``--pin``: redis-server on one CPU this process may use, each child on another, so the
    scheduler never puts both on one core. ``None`` (no pinning) with fewer than two CPUs."""
    if redis_pid is None or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    os.sched_setaffinity(redis_pid, {allowed[0]})
    return {"redis-server": allowed[0], "child": allowed[1]}


def run(args: argparse.Namespace, before: Path, after: Path, before_label: str) -> dict[str, Any]:
    if str(ROOT) not in sys.path:  # run as a file rather than with -m from the root
        sys.path.insert(0, str(ROOT))
    from tests.servers import RedisServer  # only the stdlib: no gathering_cache in the parent

    p: Params = QUICK if args.quick else FULL
    n_rounds: int = args.rounds
    started = time.perf_counter()
    trees = {"before": before, "after": after}
    report: dict[str, Any] = {
        "machine": machine(),
        "quick": bool(args.quick),
        "params": dict(p),
        "trees": {
            "before": {**describe(before), "label": before_label},
            "after": {**describe(after), "label": str(after)},
        },
        "rounds": [],
    }
    # RedisServer already passes --save "" --appendonly no; it binds 127.0.0.1 on a free port.
    with RedisServer("--maxmemory", "0") as server:
        cpus = pin_cpus(server.process.pid if server.process else None) if args.pin else None
        report["pinned"] = cpus
        print(
            f"redis-server on 127.0.0.1:{server.port}"
            + (
                f", pinned to CPU {cpus['redis-server']}; each child to CPU {cpus['child']}"
                if cpus
                else ""
            ),
            flush=True,
        )
        for i in range(n_rounds):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            result: dict[str, Any] = {"order": list(order)}
            for side in order:
                t0 = time.perf_counter()
                source = fingerprint(trees[side])
                result[side] = run_child(
                    trees[side], server.url, p, side, cpus["child"] if cpus else None
                )
                result[side]["source"] = source
                ratios = result[side]["ratios"]
                print(
                    f"round {i + 1}/{n_rounds} {side:6} ({time.perf_counter() - t0:4.1f} s): "
                    + ", ".join(f"{label} {ratios[key]:.3f}" for key, label, *_ in METRICS),
                    flush=True,
                )
            report["rounds"].append(result)
    report["median"] = {
        side: {key: statistics.median(r[side]["ratios"][key] for r in report["rounds"])
               for key, *_ in METRICS}
        for side in ("before", "after")
    }  # fmt: skip
    report["elapsed s"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        tree, url, params, cpu = argv[1], argv[2], argv[3], argv[4]
        child_main(Path(tree), url, json.loads(params), int(cpu) if cpu else None)
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--before-ref", metavar="REF", help="git ref checked out as 'before'")
    source.add_argument("--before", metavar="DIR", type=Path, help="an existing 'before' tree")
    parser.add_argument("--after", metavar="DIR", type=Path, default=ROOT,
                        help="the 'after' tree (default: this repository's root)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds, each one process per tree (default 5)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small counts: under ~40 s")
    parser.add_argument("--pin", action="store_true",
                        help="pin redis-server and each child to two different CPUs (on a "
                        "2-core VM this raised latencies and did not reduce the spread)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default {OUT})")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    after = args.after.resolve()
    for name, tree in (("--after", after), ("--before", args.before)):
        if tree is not None and not (tree / "gathering_cache" / "__init__.py").is_file():
            parser.error(f"{name} {tree}: no gathering_cache/__init__.py there")

    # A SIGTERM unwinds like Ctrl-C, so the worktree and redis-server are removed either way.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        report = measure_trees(args, after)
    except RuntimeError as error:  # a child failed: its message says which and why
        print(f"bench.ab: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the worktree, redis-server and child are gone by now
        print("bench.ab: interrupted", file=sys.stderr)
        return 130
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(render(report))
    print(f"\nJSON: {args.out}")
    return 0


def measure_trees(args: argparse.Namespace, after: Path) -> dict[str, Any]:
    """The before tree (a temporary worktree, removed after, or --before), then the rounds."""
    with contextlib.ExitStack() as stack:
        if args.before_ref is not None:
            before = stack.enter_context(worktree(args.before_ref))
            label = f"{args.before_ref} ({git('rev-parse', '--short', 'HEAD', cwd=before)})"
        else:
            before = args.before.resolve()
            label = str(before)
        print(f"before: {label} at {before}\nafter:  {after}", flush=True)
        return run(args, before, after, label)


if __name__ == "__main__":
    sys.exit(main())
