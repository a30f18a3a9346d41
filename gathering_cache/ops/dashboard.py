"""The cache analytics dashboard: one read-only local web page, its JSON and its metrics.

``gathering-cache dashboard`` serves, on 127.0.0.1:8765 by default:

    /            the page: hit rate over time per namespace, cost saved, latency percentiles,
                 keys and memory per namespace, the breaker of each process, and tuning
                 recommendations with their evidence (charts are inline SVG drawn by the
                 server: no script, no CDN, works offline)
    /api/stats   the same data as JSON (``gathering-cache stats --json`` plus the history)
    /metrics     the fleet's counters in the Prometheus text format

It runs on the standard library (``http.server`` in threads) with one
:class:`~gathering_cache.AsyncCacheManager` on a private event loop thread. With a token,
every path answers 401 unless the request carries ``Authorization: Bearer <token>``, the
session cookie, or ``?token=<token>`` (which sets the cookie, so one link opens the page).
The Redis password is never shown or served: the endpoint is the redacted URL.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from gathering_cache.config import CacheConfig
from gathering_cache.manager import AsyncCacheManager
from gathering_cache.ops.fleet import BUCKETS
from gathering_cache.ops.metrics import BREAKER_STATES
from gathering_cache.ops.report import NAMESPACES_SHOWN, collect

__all__ = ["Dashboard", "render_metrics", "render_page", "serve"]

COOKIE: Final = "gathering_cache_token"
COLORS: Final = {
    "embedding": "#2563eb",
    "rag": "#16a34a",
    "circle": "#d97706",
    "llm": "#9333ea",
    "generic": "#64748b",
}
_CACHE_SECONDS: Final = 5.0


class Dashboard:
    """The data behind the page: a manager on a private loop thread, and the last report
    (kept a few seconds, so a reload does not rescan).

    Args:
        config: the cache configuration.
        minutes: the history's length.
    """

    def __init__(self, config: CacheConfig, minutes: int = 60) -> None:
        self.minutes = minutes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        # Fleet statistics off: the dashboard reads the fleet, it is not part of it.
        self._cache = AsyncCacheManager(config.model_copy(update={"stats_flush_interval": 0}))
        self._lock = threading.Lock()
        self._report: dict[str, Any] | None = None
        self._taken = 0.0

    def report(self) -> dict[str, Any]:
        """The current report (at most a few seconds old)."""
        with self._lock:
            if self._report is None or time.monotonic() - self._taken > _CACHE_SECONDS:
                future = asyncio.run_coroutine_threadsafe(
                    collect(self._cache, minutes=self.minutes), self._loop
                )
                self._report = future.result(timeout=60)
                self._taken = time.monotonic()
            return self._report

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cache.aclose(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


# -- the page ---------------------------------------------------------------------------------

_STYLE: Final = """
body{font:14px system-ui,sans-serif;margin:24px;color:#0f172a;background:#f8fafc}
h1{font-size:20px;margin:0 0 4px} h2{font-size:15px;margin:0 0 8px}
.meta{color:#475569;margin-bottom:16px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:16px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:14px}
table{border-collapse:collapse;width:100%} td,th{padding:3px 6px;text-align:right}
td:first-child,th:first-child{text-align:left} th{color:#475569;font-weight:600}
.big{font-size:28px;font-weight:700} .legend span{margin-right:12px}
.rec{border-left:4px solid #f59e0b;padding:6px 10px;margin:8px 0;background:#fffbeb}
.evidence{color:#475569;font-size:12px} .ok{color:#16a34a} .bad{color:#dc2626}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _line_chart(series: dict[str, list[float | None]], *, top: float, unit: str, kind: str) -> str:
    """An SVG line chart: one polyline per series (gaps where a value is None)."""
    width, height, left, bottom = 420, 180, 52, 20
    plot_w, plot_h = width - left - 8, height - bottom - 8
    parts = [
        f'<svg class="chart" data-chart="{kind}" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    for fraction in (0, 0.5, 1):
        y = 8 + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e8f0"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" '
            f'fill="#64748b">{_e(unit[:1] if unit == "$" else "")}{top * fraction:.3g}'
            f"{_e('' if unit == '$' else unit)}</text>"
        )
    for name, values in series.items():
        count = len(values)
        segments: list[list[str]] = [[]]
        for index, value in enumerate(values):
            if value is None:
                if segments[-1]:
                    segments.append([])
                continue
            x = left + (plot_w * index / max(count - 1, 1))
            y = 8 + plot_h * (1 - min(value, top) / top if top else 1)
            segments[-1].append(f"{x:.1f},{y:.1f}")
        for points in segments:
            if not points:
                continue
            if len(points) == 1:  # one minute of data: a dot
                cx, cy = points[0].split(",")
                parts.append(
                    f'<circle class="series" data-namespace="{_e(name)}" cx="{cx}" cy="{cy}" '
                    f'r="3" fill="{COLORS.get(name, "#000")}"/>'
                )
            else:
                parts.append(
                    f'<polyline class="series" data-namespace="{_e(name)}" fill="none" '
                    f'stroke-width="2" stroke="{COLORS.get(name, "#000")}" '
                    f'points="{" ".join(points)}"/>'
                )
    parts.append(
        f'<text x="{left}" y="{height - 4}" font-size="10" fill="#64748b">'
        f"{len(next(iter(series.values()), []))} min ago</text>"
        f'<text x="{width - 8}" y="{height - 4}" font-size="10" text-anchor="end" '
        f'fill="#64748b">now</text></svg>'
    )
    return "".join(parts)


def _bars(rows: list[tuple[str, float, str]], kind: str) -> str:
    """A horizontal bar chart in SVG: (label, value, text shown)."""
    width, row_h = 420, 24
    top = max((value for _, value, _ in rows), default=0) or 1
    parts = [
        f'<svg class="chart" data-chart="{kind}" viewBox="0 0 {width} {row_h * len(rows) + 4}" '
        f'width="100%" role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    for index, (label, value, text) in enumerate(rows):
        y = index * row_h + 2
        bar = (width - 190) * value / top
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="12">{_e(label)}</text>'
            f'<rect class="bar" data-namespace="{_e(label)}" x="80" y="{y + 3}" '
            f'width="{bar:.1f}" height="{row_h - 8}" fill="{COLORS.get(label, "#64748b")}"/>'
            f'<text x="{84 + bar:.1f}" y="{y + 15}" font-size="11" fill="#334155">'
            f"{_e(text)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    if value < 1024:
        return f"{value} B"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value / 1024 / 1024:.1f} MiB"


def render_page(report: dict[str, Any]) -> str:
    """The dashboard's HTML for one report (self-contained: inline CSS and SVG)."""
    fleet = report["fleet"]
    history = report.get("history") or {"minutes": [], "namespaces": {}}
    rates = {
        name: series["hit_rate"]
        for name, series in history["namespaces"].items()
        if any(value is not None for value in series["hit_rate"])
    }
    cumulative: list[float | None] = []
    running = 0.0
    for index in range(len(history["minutes"])):
        running += sum(series["cost"][index] for series in history["namespaces"].values())
        cumulative.append(round(running, 6))
    cost_top = max(running, 0.0001)
    server = report["server"]
    namespaces = report["namespaces"]
    latency_rows = []
    for name, figures in fleet["namespaces"].items():
        if figures["hits"] + figures["misses"] + figures["sets"]:
            ms = figures["latency_ms"]
            latency_rows.append(
                f"<tr><td>{_e(name)}</td><td>{ms['p50']}</td><td>{ms['p95']}</td>"
                f"<td>{ms['p99']}</td></tr>"
            )
    total_ms = fleet["latency_ms"]
    latency_rows.append(
        f"<tr><th>all</th><th>{total_ms['p50']}</th><th>{total_ms['p95']}</th>"
        f"<th>{total_ms['p99']}</th></tr>"
    )
    key_rows = [
        (name, float(namespaces[name]["keys"] or 0), f"{namespaces[name]['keys']} keys")
        for name in NAMESPACES_SHOWN
    ]
    memory_rows = [
        (
            name,
            float(namespaces[name]["memory_bytes"] or 0),
            f"{_size(namespaces[name]['memory_bytes'])} "
            f"({namespaces[name]['memory_sampled']} sampled)",
        )
        for name in NAMESPACES_SHOWN
    ]
    process_rows = "".join(
        f'<tr><td>{_e(p["process"])}</td><td class="{"ok" if p["breaker"] == "closed" else "bad"}'
        f'">{_e(p["breaker"])}</td><td>{p["hits"]}</td><td>{p["misses"]}</td>'
        f"<td>{p['hit_rate']}%</td><td>{_e(_ago(p['flushed'], report['time']))}</td></tr>"
        for p in fleet["by_process"]
    )
    recommendations = (
        "".join(
            f'<div class="rec"><b>{_e(r["title"])}</b><div>{_e(r["advice"])}</div>'
            f'<div class="evidence">Evidence: {_e(r["evidence"])}</div></div>'
            for r in report["recommendations"]
        )
        or "<p class='ok'>Nothing to tune from the data so far.</p>"
    )
    table_rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{f['hits']}</td><td>{f['misses']}</td>"
        f"<td>{f['hit_rate']}%</td><td>{f['sets']}</td><td>{f['errors']}</td>"
        f"<td>${f['cost_saved']:.4f}</td></tr>"
        for name, f in fleet["namespaces"].items()
    )
    legend = "".join(f'<span style="color:{COLORS[name]}">&#9632; {name}</span>' for name in rates)
    status = "up" if report["enabled"] else f"DOWN: {report['reason']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="15">
<title>gathering-cache dashboard</title><style>{_STYLE}</style></head>
<body>
<h1>gathering-cache</h1>
<div class="meta">{_e(report["endpoint"])} &middot; Redis {_e(server.get("redis_version", "?"))}
&middot; prefix <code>{_e(report["key_prefix"])}</code> &middot; {report["total_keys"]} keys
&middot; {fleet["processes"]} process(es) &middot; cache {_e(status)}</div>
<div class="grid">
<div class="card" id="hit-rate"><h2>Hit rate over time (%, per minute)</h2>
{_line_chart(rates, top=100, unit="%", kind="hit-rate") if rates else "<p>No lookups yet.</p>"}
<div class="legend">{legend}</div></div>
<div class="card" id="cost"><h2>Cost saved</h2>
<div class="big">${fleet["cost_saved"]:.4f}</div>
{_line_chart({"generic": cumulative}, top=cost_top, unit="$", kind="cost")}
<div class="evidence">Estimated: dollars per hit of an embedding, a RAG recall, an LLM call.</div>
</div>
<div class="card" id="namespaces"><h2>Fleet counters</h2><table>
<tr><th>namespace</th><th>hits</th><th>misses</th><th>hit rate</th><th>sets</th><th>errors</th>
<th>saved</th></tr>{table_rows}
<tr><th>all</th><th>{fleet["hits"]}</th><th>{fleet["misses"]}</th><th>{fleet["hit_rate"]}%</th>
<th>{fleet["sets"]}</th><th>{fleet["errors"]}</th><th>${fleet["cost_saved"]:.4f}</th></tr>
</table></div>
<div class="card" id="latency"><h2>Latency percentiles (ms, bucket bounds)</h2><table>
<tr><th>namespace</th><th>p50</th><th>p95</th><th>p99</th></tr>{"".join(latency_rows)}
</table></div>
<div class="card" id="keys"><h2>Keys per namespace</h2>{_bars(key_rows, "keys")}</div>
<div class="card" id="memory"><h2>Memory per namespace (MEMORY USAGE, sampled)</h2>
{_bars(memory_rows, "memory")}</div>
<div class="card" id="processes"><h2>Processes and their breakers</h2><table>
<tr><th>process</th><th>breaker</th><th>hits</th><th>misses</th><th>hit rate</th>
<th>last flush</th></tr>{process_rows}</table></div>
<div class="card" id="recommendations"><h2>Tuning recommendations</h2>{recommendations}</div>
</div></body></html>
"""


def _ago(then: object, now: float) -> str:
    if not isinstance(then, (int, float)):
        return "?"
    return f"{max(0, now - then):.0f} s ago"


def render_metrics(report: dict[str, Any]) -> str:
    """The fleet's counters in the Prometheus text format (the names of
    :mod:`gathering_cache.ops.metrics`; durations per namespace under ``operation``)."""
    fleet = report["fleet"]
    lines: list[str] = []
    for metric, field, doc in (
        ("gathering_cache_hits_total", "hits", "Lookups answered from the cache (fleet)."),
        ("gathering_cache_misses_total", "misses", "Lookups not answered (fleet)."),
        ("gathering_cache_sets_total", "sets", "Values stored (fleet)."),
        ("gathering_cache_cost_saved_dollars_total", "cost_saved", "Estimated dollars saved."),
    ):
        lines += [f"# HELP {metric} {doc}", f"# TYPE {metric} counter"]
        for name, figures in fleet["namespaces"].items():
            lines.append(f'{metric}{{namespace="{name}"}} {figures[field]}')
    lines += [
        "# HELP gathering_cache_errors_total Failed operations and refused entries (fleet).",
        "# TYPE gathering_cache_errors_total counter",
    ]
    for name, figures in fleet["namespaces"].items():
        lines.append(
            f'gathering_cache_errors_total{{namespace="{name}",kind="all"}} {figures["errors"]}'
        )
    metric = "gathering_cache_operation_duration_seconds"
    lines += [
        f"# HELP {metric} Store operation durations per namespace (fleet; the sum is estimated "
        "from the bucket bounds).",
        f"# TYPE {metric} histogram",
    ]
    for name, figures in fleet["namespaces"].items():
        counts = figures["latency_histogram"]
        if not sum(counts):
            continue
        cumulative, estimate = 0, 0.0
        for bound, count in zip((*BUCKETS, None), counts, strict=True):
            cumulative += count
            estimate += count * (BUCKETS[-1] if bound is None else bound)
            le = "+Inf" if bound is None else repr(bound)
            lines.append(f'{metric}_bucket{{operation="{name}",le="{le}"}} {cumulative}')
        lines.append(f'{metric}_count{{operation="{name}"}} {cumulative}')
        lines.append(f'{metric}_sum{{operation="{name}"}} {estimate:.6f}')
    states = [BREAKER_STATES.get(str(p["breaker"]), 2) for p in fleet["by_process"]]
    lines += [
        "# HELP gathering_cache_breaker_state 0 closed, 1 half-open, 2 open (worst process).",
        "# TYPE gathering_cache_breaker_state gauge",
        f"gathering_cache_breaker_state {max(states, default=0)}",
    ]
    return "\n".join(lines) + "\n"


# -- the server -------------------------------------------------------------------------------


def make_handler(dashboard: Dashboard, token: str | None) -> type[BaseHTTPRequestHandler]:
    """The request handler: GET only, token checked on every path."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "gathering-cache"

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: a dashboard reloads every 15 s

        def _send(self, status: int, body: str, content_type: str, extra: dict[str, str]) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            )
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _authorized(self, query: dict[str, list[str]]) -> tuple[bool, dict[str, str]]:
            if token is None:
                return True, {}
            header = self.headers.get("Authorization", "")
            if header.startswith("Bearer ") and hmac.compare_digest(header[7:], token):
                return True, {}
            for part in self.headers.get("Cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE and hmac.compare_digest(value, token):
                    return True, {}
            given = query.get("token", [""])[0]
            if given and hmac.compare_digest(given, token):
                cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
                return True, {"Set-Cookie": cookie}
            return False, {}

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            ok, extra = self._authorized(parse_qs(url.query))
            if not ok:
                self._send(
                    HTTPStatus.UNAUTHORIZED,
                    "401 unauthorized: pass the token (Authorization: Bearer T, or ?token=T)\n",
                    "text/plain; charset=utf-8",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            if url.path not in ("/", "/api/stats", "/metrics"):
                self._send(HTTPStatus.NOT_FOUND, "404 not found\n", "text/plain", extra)
                return
            try:
                report = dashboard.report()
            except Exception as exc:  # the page says what failed; the server keeps serving
                self._send(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"503 the cache could not be read: {type(exc).__name__}\n",
                    "text/plain; charset=utf-8",
                    extra,
                )
                return
            if url.path == "/api/stats":
                self._send(200, json.dumps(report), "application/json", extra)
            elif url.path == "/metrics":
                self._send(200, render_metrics(report), "text/plain; version=0.0.4", extra)
            else:
                self._send(200, render_page(report), "text/html; charset=utf-8", extra)

        do_HEAD = do_GET

        def _refuse(self) -> None:
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, "405 read-only\n", "text/plain", {})

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    return Handler


def serve(
    config: CacheConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    minutes: int = 60,
    echo: Callable[[str], object] = print,
) -> None:
    """Serve the dashboard until interrupted (Ctrl-C)."""
    dashboard = Dashboard(config, minutes)
    server = ThreadingHTTPServer((host, port), make_handler(dashboard, token))
    server.daemon_threads = True
    where = f"http://{host}:{server.server_port}/"
    echo(f"dashboard on {where}" + (" (token required)" if token else ""))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        dashboard.close()
