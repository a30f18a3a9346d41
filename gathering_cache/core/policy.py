"""Degradation policy: the one place where infrastructure faults are turned into degraded
answers. A circuit breaker with a time bound.

Every store call goes through :meth:`DegradationPolicy.run`, which

* bounds the call by a timeout (the configured ``operation_timeout``, or ``bulk_timeout`` for
  SCAN-based calls), whatever Redis does;
* turns a fault of the store (``store.fault_types``, or the timeout) into the caller's
  fallback value (``None`` / ``False`` / ``0``) instead of an exception;
* limits the calls in flight to the pool size; a call that cannot get a slot within its
  timeout is *shed* (degraded answer, counted) without counting as a Redis failure;
* treats data-level errors of one key (a foreign value of the wrong type) as a miss for that
  call, not an outage;
* after ``failure_threshold`` consecutive faults *opens*: calls return the fallback without
  touching Redis, and one warning is logged for the whole outage;
* after ``recovery_interval`` lets one call through as a probe (*half-open*); its success
  closes the breaker (logged once), its failure re-opens it.

Programming errors never reach this point (arguments are checked before the store is called),
and exceptions outside ``fault_types`` (bugs) propagate. Cancellation propagates too.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gathering_cache.core.observe import Outcome
from gathering_cache.errors import BackendError

__all__ = ["BreakerState", "DegradationPolicy"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F")


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"


_CLOSED = BreakerState.CLOSED


class DegradationPolicy:
    """Circuit breaker + timeout around store calls. See the module docstring."""

    def __init__(
        self,
        *,
        fault_types: tuple[type[BaseException], ...],
        operation_timeout: float,
        failure_threshold: int,
        recovery_interval: float,
        max_concurrency: int | None = None,
        is_data_error: Callable[[BaseException], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._faults: tuple[type[BaseException], ...] = (
            *fault_types,
            TimeoutError,
            asyncio.TimeoutError,
        )
        self._timeout = operation_timeout
        self._threshold = failure_threshold
        self._recovery = recovery_interval
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.last_error: str | None = None
        #: Where the store lives (a redacted URL or host:port), named in every error message.
        self.endpoint: str | None = None
        self.reason: str | None = None
        self.outages = 0
        self._opened_at = 0.0
        self._degraded_since: float | None = None
        self._degraded_total = 0.0
        self._probing = False
        # At most as many calls in flight as the pool has sockets: a burst waits here, and a
        # call that cannot get a slot in time is *shed* (degraded answer) without counting as
        # a Redis failure.
        self._limiter = _Limiter(max_concurrency) if max_concurrency else None
        self._deadlines = _Deadlines()
        self._is_data_error = is_data_error or (lambda exc: False)
        self.shed = 0
        self.data_errors = 0
        self.bulk_timeouts = 0
        #: How the last call that returned its fallback ended (set just before it returns,
        #: so the awaiting caller reads its own call's: nothing runs in between).
        self.verdict = Outcome.SKIPPED

    # -- state --------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether calls currently reach the store."""
        return self.state is BreakerState.CLOSED

    @property
    def may_use_fallbacks(self) -> bool:
        """Whether in-process fallbacks (the embedding LRU) may answer: yes during an
        outage, no once the cache is disabled or closed."""
        return self.state is not BreakerState.DISABLED

    def disable(self, reason: str) -> None:
        """Never touch the store again (cache disabled, library missing, manager closed)."""
        self.state = BreakerState.DISABLED
        self.reason = reason

    def trip(self) -> None:
        """Open at once, after a failure already recorded (the first connection failed)."""
        if self.state is BreakerState.CLOSED:
            self._open()

    def snapshot(self) -> dict[str, Any]:
        degraded = self._degraded_total
        if self._degraded_since is not None:
            degraded += self._clock() - self._degraded_since
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "outages": self.outages,
            "degraded_seconds": round(degraded, 3),
            "shed": self.shed,
            "data_errors": self.data_errors,
            "bulk_timeouts": self.bulk_timeouts,
        }

    # -- the policy point ---------------------------------------------------------------------

    async def run(
        self,
        operation: Callable[..., Awaitable[T]],
        fallback: F,
        *args: Any,
        timeout: float | None = None,
        bulk: bool = False,
    ) -> T | F:
        """Run ``operation(*args)`` under the policy; ``fallback`` on any infrastructure fault.

        ``bulk`` marks a SCAN-based call (long by nature): it never probes an open breaker,
        and only connection-level faults count against the breaker, not its timeout.
        """
        probing = False
        if self.state is not _CLOSED:
            if (
                bulk
                or self.state is not BreakerState.OPEN
                or self._probing
                or self._clock() - self._opened_at < self._recovery
            ):
                self.verdict = Outcome.SKIPPED
                return fallback
            self.state = BreakerState.HALF_OPEN
            self._probing = probing = True
        limiter = self._limiter
        # The limiter's uncontended path, inlined: this runs on every cache call.
        if limiter is None:
            holding = True
        elif limiter._free > 0 and not limiter._waiters:
            limiter._free -= 1
            holding = True
        else:
            holding = False
        waited_until: float | None = None
        budget = timeout if timeout is not None else self._timeout
        deadlines = self._deadlines
        task = deadlines.enter(budget)
        expired = False
        try:
            try:
                if not holding:
                    await limiter.acquire()  # type: ignore[union-attr]
                    holding = True
                    waited_until = self._clock()
                result = await operation(*args)
            except asyncio.CancelledError:
                if not deadlines.expired(task):
                    raise  # the caller's cancellation, not our deadline
                expired = True
                raise TimeoutError(f"operation exceeded {budget:g} s") from None
        except self._faults as exc:
            if not holding or (
                waited_until is not None and expired and self._clock() - waited_until < budget / 2
            ):
                # Timed out waiting for a connection slot, or left too little of the budget
                # by that wait: local load, not a Redis fault.
                self.shed += 1
                self.verdict = Outcome.SHED
                if probing:
                    self.state = BreakerState.OPEN
            elif self._is_data_error(exc):
                self.data_errors += 1
                self.verdict = Outcome.REJECTED
                logger.debug("data error treated as a miss: %s", exc)
                if probing:
                    self._success(probing=True)
            elif bulk and expired:
                # The whole SCAN ran out of time (a large keyspace); each of its round trips
                # answered in time, or the step bound would have failed it as a fault.
                self.bulk_timeouts += 1
                self.verdict = Outcome.TIMEOUT
                logger.debug("bulk operation ran out of time")
            else:
                self.verdict = Outcome.TIMEOUT if expired else Outcome.FAULT
                self._failure(exc, probing)
            return fallback
        except BaseException:
            if probing and self.state is BreakerState.HALF_OPEN:
                self.state = BreakerState.OPEN  # cancelled or a bug: the next call probes
            raise
        finally:
            deadlines.leave(task)
            if holding and limiter is not None:
                limiter.release()
            if probing:
                self._probing = False
        if self.consecutive_failures or probing:
            self._success(probing)
        return result

    # -- transitions --------------------------------------------------------------------------

    def _record(self, exc: BaseException) -> None:
        self.consecutive_failures += 1
        message = str(exc) or "operation timed out"
        # A timeout or a TLS handshake failure names no endpoint of its own.
        if self.endpoint and self.endpoint not in message:
            message = f"{message} (at {self.endpoint})"
        # A BackendError (a store's fault, mapped) already says what it was; other errors
        # hide their message in repr(). str() never holds the password.
        self.last_error = (
            message if isinstance(exc, BackendError) else f"{type(exc).__name__}: {message}"
        )

    def _failure(self, exc: BaseException, probing: bool) -> None:
        self._record(exc)
        if self.state is BreakerState.HALF_OPEN:
            if probing:  # a call that started before the outage does not decide the probe
                self.state = BreakerState.OPEN
                self._opened_at = self._clock()
                logger.debug("probe failed (%s); still degraded", self.last_error)
        elif self.state is BreakerState.CLOSED:
            if self.consecutive_failures >= self._threshold:
                self._open()
            else:
                logger.debug("store call failed (%s)", self.last_error)

    def _open(self) -> None:
        if self.state is BreakerState.DISABLED:
            return
        self.state = BreakerState.OPEN
        self._opened_at = self._clock()
        if self._degraded_since is None:
            self._degraded_since = self._opened_at
            self.outages += 1
            self.reason = f"Redis unavailable: {self.last_error or 'no answer'}"
            logger.warning(
                "%s; running without cache (degraded mode), retrying every %.1f s",
                self.reason,
                self._recovery,
            )

    def _success(self, probing: bool) -> None:
        if self.state is BreakerState.CLOSED:
            self.consecutive_failures = 0
        elif probing and self.state is BreakerState.HALF_OPEN:
            self.consecutive_failures = 0
            self.state = BreakerState.CLOSED
            now = self._clock()
            outage = now - (self._degraded_since or now)
            self._degraded_total += outage
            self._degraded_since = None
            self.reason = None
            logger.info("Redis cache recovered after %.1f s", outage)


class _Limiter:
    """A counting semaphore whose uncontended path takes no await (cheaper than
    ``asyncio.Semaphore`` on every cache call). FIFO for waiters. The uncontended acquire
    (``_free > 0 and not _waiters``) is inlined in :meth:`DegradationPolicy.run`."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot just as we gave up: pass it on
            elif not future.done():
                future.cancel()
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to the next waiter
                return
        self._free += 1


class _Deadlines:
    """Per-call time limits on one shared timer.

    ``asyncio.timeout()`` schedules and cancels a timer for every call, which measured
    ~8 us of a ~105 us Redis GET here. This keeps the deadline of every call in flight in a
    dict and one loop timer armed at the earliest; when it fires, overdue calls are cancelled
    as ``asyncio.timeout`` would, and :meth:`expired` turns that cancellation into a timeout
    (with ``Task.uncancel`` where Python has it). A call whose cancellation was swallowed on
    the way (``asyncio.wait_for`` in Python 3.11 can) is cancelled again every 10 ms, and a
    cancellation that never surfaced is withdrawn when the call leaves.

    Python 3.10 neither counts cancellations nor has ``uncancel``, and folds the cancels that
    land before a task resumes into one: there :meth:`_fire` notes whether a cancel of the
    caller's was already pending, and marks the task so that one made afterwards shows.
    """

    __slots__ = ("_calls", "_fired", "_loop", "_marks", "_timer", "_when")

    _REFIRE = 0.01

    def __init__(self) -> None:
        # task -> (deadline, how many cancellations it already had pending when it entered)
        self._calls: dict[asyncio.Task[Any], tuple[float, int]] = {}
        self._fired: dict[asyncio.Task[Any], int] = {}  # task -> cancellations we requested
        # Python 3.10 only: task -> (a cancel of the caller's was pending when the deadline
        # first fired, the task's cancel message right after the deadline's last cancel)
        self._marks: dict[asyncio.Task[Any], tuple[bool, object]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._when = math.inf

    def enter(self, budget: float) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - coroutines always run in a task
            raise RuntimeError("gathering_cache operations must run inside an asyncio task")
        loop = task.get_loop()
        if loop is not self._loop:  # first use, or a manager moved to another loop
            if self._timer is not None:
                self._timer.cancel()
            self._calls.clear()
            self._fired.clear()
            self._marks.clear()
            self._loop, self._timer, self._when = loop, None, math.inf
        deadline = loop.time() + budget
        self._calls[task] = (deadline, _cancelling(task))
        if deadline < self._when:
            self._arm(loop, deadline)
        return task

    def leave(self, task: asyncio.Task[Any]) -> None:
        self._calls.pop(task, None)
        self._marks.pop(task, None)
        fired = self._fired.pop(task, 0)
        for _ in range(fired):  # our cancellation never surfaced: withdraw it
            _uncancel(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether the CancelledError ``task`` got is this deadline's alone (and not also a
        cancellation of the caller's, which must then propagate)."""
        fired = self._fired.pop(task, 0)
        if not fired:
            return False
        if not _COUNTS_CANCELS:  # pragma: no cover - Python 3.10
            callers_first, mark = self._marks.pop(task, (False, None))
            # A cancel of the caller's made after ours wrote its own message over our mark.
            return not callers_first and getattr(task, "_cancel_message", None) is mark
        at_entry = self._calls.get(task, (0.0, 0))[1]
        remaining = _cancelling(task)
        for _ in range(fired):
            remaining = _uncancel(task)
        return remaining <= at_entry

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._when = when
        self._timer = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._when = None, math.inf
        loop = self._loop
        if loop is None:  # pragma: no cover
            return
        now = loop.time() + 0.001  # the loop may run a timer up to its clock resolution early
        following = math.inf
        for task, (deadline, at_entry) in list(self._calls.items()):
            if deadline <= now:
                if _COUNTS_CANCELS:
                    task.cancel()
                else:  # pragma: no cover - Python 3.10
                    self._cancel_310(task, first=task not in self._fired)
                self._fired[task] = self._fired.get(task, 0) + 1
                self._calls[task] = (now + self._REFIRE, at_entry)
                deadline = now + self._REFIRE
            following = min(following, deadline)
        if following < math.inf:
            self._arm(loop, following)

    def _cancel_310(self, task: asyncio.Task[Any], first: bool) -> None:  # pragma: no cover
        """Cancel ``task`` for its deadline on Python 3.10, noting what :meth:`expired` needs.

        A cancel already pending at the deadline's first fire is taken for the caller's. At a
        refire a pending cancel may be our own that has not surfaced yet: nothing is done
        then. Otherwise the earlier one was swallowed on the way (redis-py's async_timeout
        turns a cancel that lands with its own timeout into a TimeoutError, and retries), and
        this cancel is the deadline's alone. The second ``cancel`` only writes ``_DEADLINE``
        as the task's message: a later ``task.cancel()`` of the caller's overwrites it, which
        ``expired`` sees. (A task awaiting an inner task passes both cancels on to it and
        keeps its message: a caller's cancel made after ours then leaves no trace, as with
        ``asyncio.wait_for`` on 3.10.)
        """
        pending = _cancel_pending(task)
        if pending and not first:
            return
        task.cancel(_DEADLINE)
        task.cancel(_DEADLINE)
        self._marks[task] = (pending, getattr(task, "_cancel_message", None))


_COUNTS_CANCELS = sys.version_info >= (3, 11)

# The cancel message of a deadline on Python 3.10 (what the caller sees is a TimeoutError).
_DEADLINE = "the deadline of a gathering_cache operation"


def _cancel_pending(future: asyncio.Future[Any], depth: int = 0) -> bool:  # pragma: no cover
    """Python 3.10: whether a cancel of ``future`` (a task) is requested and not yet delivered.

    Either the task will throw it at its next step (``_must_cancel``), or it went to what the
    task awaits: a cancelled future, or an inner task with a cancel pending in turn.
    """
    if getattr(future, "_must_cancel", False) or future.cancelled():
        return True
    waiter = getattr(future, "_fut_waiter", None)
    return isinstance(waiter, asyncio.Future) and depth < 8 and _cancel_pending(waiter, depth + 1)


if sys.version_info >= (3, 11):
    # The C methods themselves, not Python wrappers: enter() runs on every cache call.
    _cancelling: Callable[[asyncio.Task[Any]], int] = asyncio.Task.cancelling
    _uncancel: Callable[[asyncio.Task[Any]], int] = asyncio.Task.uncancel

else:  # pragma: no cover - Python 3.10 does not count cancellations

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return 0

    def _uncancel(task: asyncio.Task[Any]) -> int:
        return 0
