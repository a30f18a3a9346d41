"""Degradation policy: the one place where infrastructure faults are turned into degraded
answers. A circuit breaker with a time bound.

Every store call goes through :meth:`DegradationPolicy.run`, which

* bounds the call by a timeout (the configured ``operation_timeout``, or ``bulk_timeout`` for
  SCAN-based calls), whatever Redis does;
* turns a fault of the store (``store.fault_types``, or the timeout) into the caller's
  fallback value (``None`` / ``False`` / ``0``) instead of an exception;
* after ``failure_threshold`` consecutive faults *opens*: calls return the fallback without
  touching Redis, and one warning is logged for the whole outage;
* after ``recovery_interval`` lets one call through as a probe (*half-open*); its success
  closes the breaker (logged once), its failure re-opens it.

Programming errors never reach this point (arguments are checked before the store is called),
and exceptions outside ``fault_types`` (bugs) propagate. Cancellation propagates too.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout as _timeout

__all__ = ["BreakerState", "DegradationPolicy"]

logger = logging.getLogger("gathering_cache")

T = TypeVar("T")


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"


class DegradationPolicy:
    """Circuit breaker + timeout around store calls. See the module docstring."""

    def __init__(
        self,
        *,
        fault_types: tuple[type[BaseException], ...],
        operation_timeout: float,
        failure_threshold: int,
        recovery_interval: float,
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
        self.reason: str | None = None
        self.outages = 0
        self._opened_at = 0.0
        self._degraded_since: float | None = None
        self._degraded_total = 0.0
        self._probing = False

    # -- state --------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether calls currently reach the store."""
        return self.state is BreakerState.CLOSED

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
        }

    # -- the policy point ---------------------------------------------------------------------

    async def run(
        self, operation: Callable[[], Awaitable[T]], fallback: T, *, timeout: float | None = None
    ) -> T:
        """Run ``operation`` under the policy; ``fallback`` on any infrastructure fault."""
        probing = False
        if self.state is not BreakerState.CLOSED:
            if (
                self.state is not BreakerState.OPEN
                or self._probing
                or self._clock() - self._opened_at < self._recovery
            ):
                return fallback
            self.state = BreakerState.HALF_OPEN
            self._probing = probing = True
        try:
            async with _timeout(timeout if timeout is not None else self._timeout):
                result = await operation()
        except self._faults as exc:
            self._failure(exc)
            return fallback
        except BaseException:
            if probing:  # cancelled or a bug: let the next call probe again
                self.state = BreakerState.OPEN
            raise
        finally:
            if probing:
                self._probing = False
        if self.consecutive_failures or probing:
            self._success()
        return result

    # -- transitions --------------------------------------------------------------------------

    def _record(self, exc: BaseException) -> None:
        self.consecutive_failures += 1
        message = str(exc) or "operation timed out"
        # redis errors hide their message in repr(); str() never holds the password.
        self.last_error = f"{type(exc).__name__}: {message}"

    def _failure(self, exc: BaseException) -> None:
        self._record(exc)
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()
            logger.debug("gathering_cache: probe failed (%s); still degraded", self.last_error)
        elif self.state is BreakerState.CLOSED:
            if self.consecutive_failures >= self._threshold:
                self._open()
            else:
                logger.debug("gathering_cache: store call failed (%s)", self.last_error)

    def _open(self) -> None:
        if self.state is BreakerState.DISABLED:
            return
        self.state = BreakerState.OPEN
        self._opened_at = self._clock()
        if self._degraded_since is None:
            self._degraded_since = self._opened_at
            self.outages += 1
            self.reason = f"Redis unavailable: {self.last_error}"
            logger.warning(
                "gathering_cache: %s; running without cache (degraded mode), retrying every %.1f s",
                self.reason,
                self._recovery,
            )

    def _success(self) -> None:
        self.consecutive_failures = 0
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.CLOSED
            now = self._clock()
            outage = now - (self._degraded_since or now)
            self._degraded_total += outage
            self._degraded_since = None
            self.reason = None
            logger.info("gathering_cache: Redis cache recovered after %.1f s", outage)
