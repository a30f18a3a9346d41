"""Load drivers and a figures recorder for the fault-injection suite.

Every figure a fault test measures (longest call, time to recover, exceptions leaked) is
recorded here; at the end of the session they are printed and written to
``build/reliability.json``, the source of the table in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIGURES: dict[str, dict[str, Any]] = {}
OUT = Path(__file__).resolve().parent.parent / "build" / "reliability.json"


class Probe:
    """Cache calls made while a topology changes or a fault lasts: the longest, how many,
    and what leaked out of them (nothing may)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.calls = 0
        self.leaked: list[BaseException] = []

    async def call(self, operation: Awaitable[Any]) -> Any:
        started = time.monotonic()
        try:
            return await operation
        except BaseException as exc:  # what we measure: nothing may leak
            self.leaked.append(exc)
            return None
        finally:
            self.calls += 1
            self.longest = max(self.longest, time.monotonic() - started)


@dataclass
class Load:
    """Calls made by a load driver: how long each took, what it returned, what it raised."""

    calls: int = 0
    longest: float = 0.0
    exceptions: list[BaseException] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)  # times of successful calls
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, started: float, ok: bool) -> None:
        ended = time.monotonic()
        with self.lock:
            self.calls += 1
            self.longest = max(self.longest, ended - started)
            if ok:
                self.successes.append(ended)

    def first_success_after(self, moment: float) -> float | None:
        later = [t for t in self.successes if t >= moment]
        return min(later) - moment if later else None


async def drive(
    call: Callable[[int], Awaitable[bool]], workers: int, seconds: float, load: Load
) -> None:
    """``workers`` coroutines calling ``call(i)`` for ``seconds``; bounded in time."""
    stop = time.monotonic() + seconds

    async def worker(n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                ok = await call(n * 1_000_000 + i)
            except BaseException as exc:  # a leak is what we measure
                load.exceptions.append(exc)
                ok = False
            load.record(started, ok)
            i += 1
            await asyncio.sleep(0)

    await asyncio.gather(*(worker(n) for n in range(workers)))


def record(name: str, **figures: Any) -> None:
    FIGURES[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}


def write_figures() -> None:
    if not FIGURES:
        return
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
