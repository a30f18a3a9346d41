"""Knowing at once that a tracking connection ended, for the near cache.

A :class:`~gathering_cache.backends.base.Tracker` reports a lost connection through its
``get``, which the core's tracking task reads: a few turns of the event loop after the loop
saw the connection's end. A read served from the near cache in those turns could return a
value changed since (the invalidation will never come). :func:`on_end` closes that gap: it
has a callback called by the event loop's own handling of the socket (the protocol's
``eof_received`` / ``connection_lost``), in the very turn the end is seen, before any task
resumes, so before any caller could have learnt of a later write through this loop.

It reads the tracker's redis-py connections (``RedisTracker`` keeps them); it belongs on
``RedisTracker`` itself as a method, where it can move unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gathering_cache.backends.base import Tracker

__all__ = ["on_end"]

logger = logging.getLogger(__name__)


def on_end(tracker: Tracker, callback: Callable[[], None]) -> bool:
    """Have ``callback`` called as soon as the event loop handles the end of one of
    ``tracker``'s connections (at once if one has already ended). Call it right after
    ``tracker.start()``, without awaiting in between.

    Args:
        tracker: a started tracker.
        callback: quick, never raises (it runs inside the event loop's I/O handling); it
            may be called more than once.

    Returns:
        Whether the tracker's connections could be watched. ``False``: its losses are
        known from :meth:`Tracker.get` only (a few loop turns later).
    """
    connections: Any = getattr(tracker, "_connections", None)
    if not connections:
        return False
    watched = []
    for connection in connections:
        reader = getattr(connection, "_reader", None)
        writer = getattr(connection, "_writer", None)
        transport = getattr(writer, "transport", None)
        if reader is None or transport is None:  # not connected (any more)
            callback()
            return True
        protocol = transport.get_protocol()
        if not (hasattr(protocol, "eof_received") and hasattr(protocol, "connection_lost")):
            return False  # an unknown transport: rely on get()
        watched.append((reader, transport, protocol))
    for reader, transport, protocol in watched:
        _chain(protocol, "eof_received", callback)
        _chain(protocol, "connection_lost", callback)
        if reader.at_eof() or transport.is_closing():  # ended before we looked
            callback()
    return True


def _chain(protocol: Any, name: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` first whenever the loop calls ``protocol.<name>``."""
    original = getattr(protocol, name)

    def hooked(*args: Any) -> Any:
        try:
            callback()
        except Exception:  # never break the loop's handling of the socket
            logger.exception("near cache: the end-of-tracking callback failed")
        return original(*args)

    setattr(protocol, name, hooked)
