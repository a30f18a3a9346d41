"""Auto-pipelining: commands that concurrent callers issue while the store is busy go out
together, one write and one read per batch, and each caller gets its own reply.

How it works (the idea of ioredis's ``enableAutoPipelining``, written for asyncio):

* When nothing is in flight, a command runs at once on its own: a single sequential caller
  pays nothing extra. It goes on a connection this pipeline keeps between calls (one, taken
  from the client's pool once), written and read directly: no pool checkout and check-in,
  no command wrapper, no task per write (see :func:`_write`), together ~30 us of a ~100 us
  GET through ``execute_command`` here. Replies are the raw ones (no response callbacks),
  as in a batch.
* While a command or a batch is in flight, a new command is queued with a future, and one
  flush is scheduled for the next turn of the event loop. The flush cuts the queue into
  batches of at most ``max_batch`` commands and sends each batch on one pooled connection as
  one packed write (a non-transactional pipeline), then reads the replies in order and
  resolves the futures. Commands of one batch run in the order they were issued.
* Each caller keeps its own deadline: its cancellation (by the policy's deadline, or its
  own) cancels only its future; the batch runs on a task of its own, every read bounded by
  one deadline for the whole batch (``operation_timeout``), and it drops its connection as
  soon as nobody waits for the rest of its replies. An error reply fails only its command.
  A fault fails the commands of that batch that have no reply yet, and the connection is
  dropped; when the connection broke before any reply (a pooled connection a server
  restart left stale), the commands still awaited are sent once more on a fresh one, as
  the client itself would. A timeout is never retried.
* Bounded: the policy's limiter keeps the calls in flight (so the queue) within
  ``max_connections``, and a call alone or a batch holds one connection; the kept one is
  lent to a batch when no call alone needs it. A batch whose callers have all given up is
  cancelled at once (its connection dropped and given back), so abandoned batches do not
  pile up connections while new calls take the callers' places.
* Commands are written and replies read without a timeout of their own (not even the
  socket timeout): the caller's deadline (a call alone) or the batch's (a batch) cancels a
  write or a read that overruns, and a cancelled one drops its connection. (redis-py's
  per-read ``timeout`` is no bound to use: on expiry it returns ``None``, a miss for a
  GET, and leaves the reply unread.)
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections.abc import Awaitable, Coroutine
from typing import Any, Final, TypeVar

from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

_hiredis_pack: Any
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]
    _hiredis_pack = None
"""hiredis's packer (see :func:`_pack`), or None."""

logger = logging.getLogger(__name__)

__all__ = ["CLUSTER_BATCHES", "AutoPipeline", "ClusterAutoPipeline"]

T = TypeVar("T")


class AutoPipeline:
    """Batches the commands of concurrent callers on one ``redis.asyncio`` client."""

    __slots__ = (
        "_batches",
        "_client",
        "_idle",
        "_inflight",
        "_loop",
        "_max_batch",
        "_pool",
        "_queue",
        "_scheduled",
        "_timeout",
        "batched",
        "batches",
    )

    def __init__(self, client: Any, timeout: float, max_batch: int = 128) -> None:
        self._client = client
        self._pool: Any = getattr(client, "connection_pool", None)  # none on a cluster client
        self._idle: Any = None  # the connection kept between calls, when not in use
        self._timeout = timeout
        self._max_batch = max_batch
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._inflight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batches: set[asyncio.Task[None]] = set()  # strong references while they run
        self.batches = 0
        """Batches sent."""
        self.batched = 0
        """Commands sent in batches (the others went alone)."""

    def execute(self, *args: Any) -> Awaitable[Any]:
        """Send one command (``"GET", key``); its reply, or the exception it raised."""
        if not self._inflight and not self._queue:
            return self._alone(args)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    async def _alone(self, args: tuple[Any, ...]) -> Any:
        self._inflight += 1
        try:
            connection = self._idle
            if connection is None:
                connection = await self._pool.get_connection()
            else:
                self._idle = None
            try:
                return await _exchange(connection, args)
            except (RedisConnectionError, OSError) as exc:
                if isinstance(exc, TimeoutError):  # a slow server must not get it twice
                    raise
                # The connection failed before its reply (one a server restart left
                # stale): once more, on the same connection, connecting afresh.
                return await _exchange(connection, args)
            finally:
                await self._give(connection)
        finally:
            self._inflight -= 1

    async def _take(self) -> Any:
        connection = self._idle
        if connection is None:
            return await self._pool.get_connection()
        self._idle = None
        if not connection.is_connected:
            try:
                await connection.connect()  # as the pool would (see _exchange_through_redis_py)
            except BaseException:
                await self._give(connection)
                raise
        return connection

    async def _give(self, connection: Any) -> None:
        """Keep ``connection`` for the next call, or give it back to the pool when one is
        kept already. (A dropped one is kept too: it connects again when next used.)"""
        if self._idle is None:
            self._idle = connection
        else:
            await self._pool.release(connection)

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        loop = self._loop
        assert loop is not None
        for start in range(0, len(queue), self._max_batch):
            batch = [item for item in queue[start : start + self._max_batch] if not item[1].done()]
            if not batch:
                continue
            self._inflight += 1
            self.batches += 1
            self.batched += len(batch)
            task = loop.create_task(self._run(batch))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)
            watch = _Abandonment(task, len(batch))
            for _, future in batch:
                future.add_done_callback(watch.settled)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._inflight -= 1

    async def aclose(self) -> None:
        """Stop the batches still running (their callers are answered with the
        cancellation) and give the kept connection back to the pool (it may be an
        application's own, passed in with its client). Never raises."""
        running = asyncio.get_running_loop()
        batches = [task for task in self._batches if task.get_loop() is running]
        for task in batches:
            task.cancel()
        if batches:
            await asyncio.wait(batches, timeout=self._timeout)
        connection, self._idle = self._idle, None
        if connection is not None and self._pool is not None:
            try:
                await self._pool.release(connection)
            except Exception as exc:  # a pool already closed, or of another loop
                logger.debug("kept connection not given back: %s", exc)

    async def _run(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            # The whole batch within its deadline: taking a connection (connecting, the
            # handshake) and sending can hang on a stopped server as reading can.
            pending = await _within(self._send(batch, retry=True), deadline)
            if pending:
                # The connection failed before any reply (a pooled connection a server
                # restart left stale): once more on a fresh one, for the callers still
                # waiting, as the client's own retry would.
                await _within(self._send(pending, retry=False), deadline)
        except BaseException as exc:  # a fault, or the loop shutting down: no caller hangs
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise

    async def _send(
        self,
        batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]],
        *,
        retry: bool,
    ) -> list[tuple[tuple[Any, ...], asyncio.Future[Any]]]:
        """Send the batch on one connection and resolve its futures (the caller bounds it
        by the batch's deadline, which cancels a read that overruns). A fault drops the
        connection and is raised, except a connection error before any reply when
        ``retry``: then the commands still awaited are returned (a timeout is never
        retried: a slow server must not get the batch twice)."""
        connection = await self._take()
        answered = 0
        try:
            chunks: list[bytes] = []
            for args, _ in batch:
                packed = _pack(connection, args)
                if type(packed) is bytes:
                    chunks.append(packed)
                else:
                    chunks.extend(packed)
            direct = _direct(connection)
            if direct:
                await _direct_io(connection, chunks, read=False)
            else:
                await _write(connection, chunks)
            for index, (_, future) in enumerate(batch):
                error: ResponseError | None = None
                try:
                    if direct:
                        reply = await _direct_io(connection, None, read=True)
                    else:
                        reply = await connection.read_response(timeout=_UNBOUNDED)
                except ResponseError as exc:  # an error reply: that command's alone
                    reply, error = None, exc
                answered += 1
                if not future.done():  # else its caller gave up (deadline, cancellation)
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(reply)
                if all(later.done() for _, later in batch[index + 1 :]):
                    if index + 1 < len(batch):
                        # Nobody waits for the rest: drop the connection (its replies are
                        # unread) rather than hold it for them.
                        await connection.disconnect(nowait=True)
                    break
        except BaseException as exc:
            await connection.disconnect(nowait=True)
            if (
                retry
                and answered == 0
                and isinstance(exc, (RedisConnectionError, OSError))
                and not isinstance(exc, TimeoutError)
            ):
                return [item for item in batch if not item[1].done()]
            raise
        finally:
            await self._give(connection)
        return []


CLUSTER_BATCHES: Final = hasattr(ClusterNode, "release")
"""Whether cluster batches are safe with this redis-py: its cluster nodes give a pipeline's
connection back when the pipeline is cancelled (the versions whose nodes have
``release()``, redis-py 8; redis-py 6.1 keeps it for good, so each batch cut off at its
deadline would cost the node one connection). Without it, a cluster is not
auto-pipelined."""


class ClusterAutoPipeline(AutoPipeline):
    """Auto-pipelining on a ``redis.asyncio.RedisCluster``: a call alone goes through the
    cluster client (its routing, redirections and topology refresh); the commands queued
    in one loop turn go out as one non-transactional cluster pipeline, which the client
    splits per node (one packed write per node, the nodes in parallel) and re-routes on
    MOVED / ASK. Replies come back in order, an error reply in its command's place."""

    __slots__ = ()

    async def _alone(self, args: tuple[Any, ...]) -> Any:
        self._inflight += 1
        try:
            return await self._client.execute_command(*args)
        finally:
            self._inflight -= 1

    async def _run(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            replies = await _within(self._pipelined([args for args, _ in batch]), deadline)
        except BaseException as exc:  # a fault, or the loop shutting down: no caller hangs
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller gave up (deadline, cancellation)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipelined(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command(*args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


class _Abandonment:
    """Cancels a batch whose callers have all given up (cancelled: their own deadline, or
    the application's) while it still waits for the server: its connection is dropped and
    given back at once, rather than held until the batch's own deadline while new calls,
    admitted in the callers' place, take more connections (the pool would run out)."""

    __slots__ = ("_cancelled", "_left", "_task")

    def __init__(self, task: asyncio.Task[None], size: int) -> None:
        self._task = task
        self._left = size
        self._cancelled = False

    def settled(self, future: asyncio.Future[Any]) -> None:
        self._left -= 1
        if future.cancelled():
            self._cancelled = True
        if not self._left and self._cancelled and not self._task.done():
            self._task.cancel()


def _fail(batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]], exc: BaseException) -> None:
    """Fail the commands of ``batch`` still awaited with ``exc``."""
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _exchange(connection: Any, args: tuple[Any, ...]) -> Coroutine[Any, Any, Any]:
    """Send one command on ``connection`` and read its reply. A fault or a cancellation
    while sending or reading drops the connection (redis-py does, and so it never carries
    an unread reply to the next call); an error reply is raised and leaves it in sync.
    (A plain function returning the exchange's coroutine: on an open connection, the
    direct one, with no frame of its own on the path of every call alone.)"""
    if _direct(connection):
        return _direct_io(connection, _pack(connection, args), read=True)
    return _exchange_through_redis_py(connection, args)


async def _exchange_through_redis_py(connection: Any, args: tuple[Any, ...]) -> Any:
    """:func:`_exchange` on a connection not (yet) :func:`_direct`."""
    if not connection.is_connected:
        # connect() itself, as the pool does: a sentinel-managed connection asks the
        # sentinels for the primary there (sending would reconnect to the old address).
        await connection.connect()
    packed = _pack(connection, args)
    if not _direct(connection):
        await _write(connection, packed)
        return await connection.read_response(timeout=_UNBOUNDED)
    return await _direct_io(connection, packed, read=True)


def _pack(connection: Any, args: tuple[Any, ...]) -> Any:
    """``args`` in the wire format. The store's own commands (str keys, bytes values, int
    arguments) are packed by hiredis alone, as redis-py would pack them (UTF-8, the
    encoding of every client the store builds) but without encoding each argument in
    Python first: ~2 us of a GET, ~0.5 ms of an UNLINK of 1,000 keys. Anything else, or a
    connection that encodes otherwise, goes through the connection's own packer (and its
    errors)."""
    if _hiredis_pack is not None and connection.encoder.encoding in _UTF8:
        try:
            return _hiredis_pack(args)
        except Exception:  # what redis-py refuses, it refuses with its own error
            return connection.pack_command(*args)
    return connection.pack_command(*args)


_UTF8: Final = frozenset({"utf-8", "utf8", "UTF-8"})


def _direct(connection: Any) -> bool:
    """Whether ``connection`` is written and read directly (:func:`_direct_io`): an open
    socket connection without health checks. Any other (closed, checking its health before
    commands, or no socket: fakeredis) goes through redis-py's ``send_packed_command`` and
    ``read_response``."""
    writer = connection._writer
    return (
        type(writer) is asyncio.StreamWriter
        and not connection.health_check_interval
        and not writer.transport.is_closing()
    )


async def _write(connection: Any, packed: Any) -> None:
    """Send ``packed`` on ``connection`` without a timeout of its own: redis-py bounds a
    write by the socket timeout with ``asyncio.wait_for``, which on Python < 3.12 runs the
    write as a task of its own (~20 us of a ~75 us GET here). The deadline that cancels
    the caller (or the batch) bounds it instead; a cancelled or failed write drops the
    connection, as redis-py does."""
    timeout = connection.socket_timeout
    connection.socket_timeout = None
    try:
        await connection.send_packed_command(packed)
    finally:
        connection.socket_timeout = timeout


async def _direct_io(connection: Any, packed: Any, *, read: bool) -> Any:
    """On a :func:`_direct` connection: write ``packed`` (unless None), then, if ``read``,
    return the next reply. What ``send_packed_command`` and ``read_response`` do for such a
    connection, less their checks, wrappers and timeout handling (see :func:`_write`: the
    deadline that cancels the call is the bound). Only a write that leaves data buffered
    waits for the transport to drain (what is not sent fails the read that follows if the
    connection is lost). A fault or a cancellation drops the connection; an error reply is
    raised."""
    try:
        if packed is not None:
            writer = connection._writer
            if type(packed) is bytes:
                writer.write(packed)
            else:
                writer.writelines(packed)
            if writer.transport.get_write_buffer_size():
                await writer.drain()
        if not read:
            return None
        response = await connection._parser.read_response(disable_decoding=False)
    except BaseException as exc:
        mapped = await _dropped(connection, exc)
        if mapped is exc:
            raise
        raise mapped from exc
    if isinstance(response, ResponseError):
        raise response
    return response


async def _dropped(connection: Any, exc: BaseException) -> BaseException:
    """Drop ``connection`` after ``exc`` (a fault or a cancellation while writing or
    reading it directly); what to raise: ``exc``, or a redis ConnectionError for an
    OSError (as redis-py raises), or for the TypeError or AttributeError Python 3.12 and
    early 3.13 can leak from a transport the server closed."""
    writer = connection._writer
    closing = writer is not None and writer.transport.is_closing()
    await connection.disconnect(nowait=True)
    if isinstance(exc, OSError) or (isinstance(exc, (TypeError, AttributeError)) and closing):
        return RedisConnectionError(f"Error on the connection: {exc}")
    return exc


_UNBOUNDED: Final = math.inf
"""A read's own timeout: none (the deadline that cancels it is the bound)."""


async def _within(awaitable: Coroutine[Any, Any, T], deadline: float) -> T:
    """``awaitable``, cancelled at ``deadline`` (the loop's clock) with a TimeoutError."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout_at(deadline):
            return await awaitable
    loop = asyncio.get_running_loop()  # pragma: no cover - Python 3.10
    return await asyncio.wait_for(awaitable, max(0.0, deadline - loop.time()))
