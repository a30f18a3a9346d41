"""The degradation policy (circuit breaker) on its own, with an injected clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gathering_cache.core.policy import BreakerState, DegradationPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fault(ConnectionError):
    pass


def make(clock: Clock, **kwargs: object) -> DegradationPolicy:
    settings: dict[str, object] = {
        "fault_types": (Fault,),
        "operation_timeout": 0.5,
        "failure_threshold": 3,
        "recovery_interval": 5.0,
        "clock": clock,
    }
    settings.update(kwargs)
    return DegradationPolicy(**settings)  # type: ignore[arg-type]


def ok(value: object = "ok") -> Callable[[], Awaitable[Any]]:
    async def operation() -> Any:
        return value

    return operation


async def fail() -> Any:
    raise Fault("connection refused")


async def open_breaker(policy: DegradationPolicy) -> None:
    for _ in range(3):
        assert await policy.run(fail, "fallback") == "fallback"
    assert policy.state is BreakerState.OPEN


async def test_opens_after_threshold_and_answers_without_io() -> None:
    clock = Clock()
    policy = make(clock)
    assert await policy.run(fail, None) is None
    assert await policy.run(fail, None) is None
    assert policy.state is BreakerState.CLOSED
    assert await policy.run(ok(), None) == "ok"  # success resets the count
    assert policy.consecutive_failures == 0
    await open_breaker(policy)
    called = []

    async def spy() -> Any:
        called.append(1)
        return "io"

    assert await policy.run(spy, "fallback") == "fallback"
    assert called == []
    assert policy.outages == 1
    assert policy.last_error == "Fault: connection refused"


async def test_one_probe_at_a_time_then_closes() -> None:
    clock = Clock()
    policy = make(clock)
    await open_breaker(policy)
    clock.now += 5
    gate = asyncio.Event()

    async def slow_probe() -> Any:
        await gate.wait()
        return "probe"

    probe = asyncio.create_task(policy.run(slow_probe, "fallback"))
    await asyncio.sleep(0)
    assert policy.state is BreakerState.HALF_OPEN
    assert await policy.run(ok(), "fallback") == "fallback"  # not a second probe
    gate.set()
    assert await probe == "probe"
    assert policy.state is BreakerState.CLOSED
    assert policy.snapshot()["degraded_seconds"] == 5.0


async def test_failed_probe_reopens_for_another_interval() -> None:
    clock = Clock()
    policy = make(clock)
    await open_breaker(policy)
    clock.now += 5
    assert await policy.run(fail, "fallback") == "fallback"
    assert policy.state is BreakerState.OPEN
    clock.now += 4
    assert await policy.run(ok(), "fallback") == "fallback"  # still cooling down
    clock.now += 1
    assert await policy.run(ok(), "fallback") == "ok"
    assert policy.outages == 1


async def test_stale_failure_does_not_decide_the_probe() -> None:
    clock = Clock()
    policy = make(clock)
    gate = asyncio.Event()

    async def stale() -> Any:
        await gate.wait()
        raise Fault("late")

    old_call = asyncio.create_task(policy.run(stale, "fallback"))  # started while closed
    await asyncio.sleep(0)
    await open_breaker(policy)
    clock.now += 5
    probe_gate = asyncio.Event()

    async def probe() -> Any:
        await probe_gate.wait()
        return "probe"

    probing = asyncio.create_task(policy.run(probe, "fallback"))
    await asyncio.sleep(0)
    gate.set()
    assert await old_call == "fallback"
    assert policy.state is BreakerState.HALF_OPEN  # the stale failure changed nothing
    probe_gate.set()
    assert await probing == "probe"
    assert policy.state is BreakerState.CLOSED


async def test_cancelled_probe_lets_the_next_call_probe() -> None:
    clock = Clock()
    policy = make(clock)
    await open_breaker(policy)
    clock.now += 5
    task = asyncio.create_task(policy.run(asyncio.Event().wait, "fallback"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert policy.state is BreakerState.OPEN
    assert await policy.run(ok(), "fallback") == "ok"


async def test_disable_during_a_probe_stays_disabled() -> None:
    clock = Clock()
    policy = make(clock)
    await open_breaker(policy)
    clock.now += 5
    task = asyncio.create_task(policy.run(asyncio.Event().wait, "fallback"))
    await asyncio.sleep(0)
    policy.disable("closed")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert policy.state is BreakerState.DISABLED
    assert await policy.run(ok(), "fallback") == "fallback"


async def test_timeout_is_a_fault() -> None:
    policy = make(Clock(), operation_timeout=0.01)
    assert await policy.run(asyncio.Event().wait, "fallback") == "fallback"
    assert policy.consecutive_failures == 1
    assert "TimeoutError" in (policy.last_error or "")


async def test_bugs_propagate() -> None:
    policy = make(Clock())

    async def bug() -> Any:
        raise KeyError("our own mistake")

    with pytest.raises(KeyError):
        await policy.run(bug, "fallback")
    assert policy.consecutive_failures == 0


async def test_saturation_is_shed_not_an_outage() -> None:
    policy = make(Clock(), operation_timeout=0.05, max_concurrency=1)
    gate = asyncio.Event()

    async def hold() -> Any:
        await gate.wait()
        return "held"

    holder = asyncio.create_task(policy.run(hold, "fallback", timeout=5.0))
    await asyncio.sleep(0)
    results = await asyncio.gather(*(policy.run(ok(), "fallback") for _ in range(5)))
    assert results == ["fallback"] * 5
    assert policy.shed == 5
    assert policy.state is BreakerState.CLOSED
    assert policy.consecutive_failures == 0
    gate.set()
    assert await holder == "held"
    assert await policy.run(ok(), "fallback") == "ok"


async def test_data_errors_are_misses_not_outages() -> None:
    policy = make(Clock(), is_data_error=lambda exc: "WRONGTYPE" in str(exc))

    async def wrongtype() -> Any:
        raise Fault("WRONGTYPE Operation against a key holding the wrong kind of value")

    for _ in range(10):
        assert await policy.run(wrongtype, None) is None
    assert policy.state is BreakerState.CLOSED
    assert policy.data_errors == 10


async def test_bulk_calls_never_probe_and_their_timeout_is_not_an_outage() -> None:
    clock = Clock()
    policy = make(clock)
    for _ in range(5):
        result = await policy.run(asyncio.Event().wait, 0, timeout=0.01, bulk=True)
        assert result == 0
    assert policy.state is BreakerState.CLOSED
    assert policy.bulk_timeouts == 5
    await open_breaker(policy)
    clock.now += 5
    assert await policy.run(ok(), 0, bulk=True) == 0  # a bulk call is not a probe
    assert policy.state is BreakerState.OPEN
    assert await policy.run(ok(), "fallback") == "ok"


async def test_the_callers_cancellation_propagates() -> None:
    policy = make(Clock(), operation_timeout=5.0)
    task = asyncio.create_task(policy.run(asyncio.Event().wait, "fallback"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert policy.consecutive_failures == 0
    assert policy.state is BreakerState.CLOSED


async def test_deadlines_are_per_call() -> None:
    policy = make(Clock(), operation_timeout=0.05)

    async def quick() -> Any:
        await asyncio.sleep(0.01)
        return "quick"

    slow = asyncio.create_task(policy.run(asyncio.Event().wait, "fallback"))
    results = [await policy.run(quick, "fallback") for _ in range(8)]  # 80 ms in all
    assert results == ["quick"] * 8
    assert await slow == "fallback"
    assert "TimeoutError" in (policy.last_error or "")  # the slow call timed out alone


async def test_a_cancel_of_the_callers_own_that_lands_with_the_deadline_propagates() -> None:
    policy = make(Clock(), operation_timeout=0.1)
    loop = asyncio.get_running_loop()

    async def caller() -> Any:
        result = await policy.run(asyncio.Event().wait, "fallback")
        await asyncio.sleep(0.05)
        return result

    task = loop.create_task(caller())
    await asyncio.sleep(0)
    loop.call_at(loop.time() + 0.05, task.cancel)  # the caller's own cancel...
    loop.call_soon(time.sleep, 0.2)  # ...and the deadline both due in one loop pass
    with pytest.raises(asyncio.CancelledError):
        await task
