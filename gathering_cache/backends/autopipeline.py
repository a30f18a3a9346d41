"""Auto-pipelining: commands that concurrent callers issue while the store is busy go out
together, one write and one read per batch, and each caller gets its own reply.

How it works (the idea of ioredis's ``enableAutoPipelining``, written for asyncio):

* When nothing is in flight, a command runs at once on its own, through the client's
  ``execute_command`` (its retries and response callbacks included): a single sequential
  caller pays nothing extra.
* While a command or a batch is in flight, a new command is queued with a future, and one
  flush is scheduled for the next turn of the event loop. The flush cuts the queue into
  batches of at most ``max_batch`` commands and sends each batch on one pooled connection as
  one packed write (a non-transactional pipeline), then reads the replies in order and
  resolves the futures. Commands of one batch run in the order they were issued.
* Each caller keeps its own deadline: its cancellation (by the policy's deadline, or its
  own) cancels only its future; the batch runs to its end on a task of its own, bounded by
  the socket timeout. An error reply fails only its command. A connection fault fails the
  commands of that batch that have no reply yet, and the connection is dropped; a batch
  whose first reply never came is retried once on a fresh connection (the pooled one may
  have been stale after a server restart), as the client itself would.
* Bounded: the policy's limiter keeps the calls in flight (so the queue) within
  ``max_connections``, and a batch holds one connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from redis.exceptions import ResponseError

logger = logging.getLogger(__name__)

__all__ = ["AutoPipeline"]


class AutoPipeline:
    """Batches the commands of concurrent callers on one ``redis.asyncio`` client."""

    __slots__ = (
        "_batches",
        "_client",
        "_inflight",
        "_loop",
        "_max_batch",
        "_queue",
        "_scheduled",
        "batched",
        "batches",
    )

    def __init__(self, client: Any, max_batch: int = 128) -> None:
        self._client = client
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
            return await self._client.execute_command(*args)
        finally:
            self._inflight -= 1

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

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._inflight -= 1

    async def _run(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            if not await self._send(batch, retry=True):
                # Nothing came back: the pooled connection may have gone stale (a server
                # restart); once more on a fresh one, as the client's own retry would.
                await self._send(batch, retry=False)
        except BaseException as exc:  # a fault, or the loop shutting down: no caller hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _send(
        self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]], *, retry: bool
    ) -> bool:
        """Send the batch on one connection and resolve its futures. A fault drops the
        connection and is raised, except when no reply came and ``retry``: then False."""
        pool = self._client.connection_pool
        connection = await pool.get_connection()
        answered = 0
        try:
            await connection.send_packed_command(
                connection.pack_commands([args for args, _ in batch])
            )
            for _, future in batch:
                error: ResponseError | None = None
                try:
                    reply = await connection.read_response()
                except ResponseError as exc:  # an error reply: that command's alone
                    reply, error = None, exc
                answered += 1
                if future.done():
                    continue  # its caller gave up (deadline, cancellation)
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(reply)
        except BaseException as exc:
            await connection.disconnect(nowait=True)
            if retry and answered == 0 and isinstance(exc, Exception):
                return False
            raise
        finally:
            await pool.release(connection)
        return True
