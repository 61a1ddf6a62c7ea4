"""The hot paths of the NATS backend, and the one place that relies on nats-py internals.

nats-py turns every delivered message into a ``Msg`` (parsing its headers into a dict that
drops repeated names and mangles binary values), queues it, and hands it to a task; a plain
JetStream pull consumer built on that reached ~20k messages/s here, and ``publish_async`` ~30k.
The backend needs neither the ``Msg`` nor the queue, so :class:`Client` adds two things to
nats-py 2.x's client:

- **sinks**: a subscription whose messages are handed, raw, to a plain function in the
  connection's reader (:meth:`Client.subscribe_sink`). Consumption and publish
  acknowledgements go through sinks; everything else (requests, KV watches) stays nats-py's.
- **raw commands**: :meth:`Client.send_raw` queues ``PUB``/``HPUB`` commands the backend built
  itself, so a batch is written with one call and its header blocks keep repeated names.

Both use nats-py's private ``_process_msg``, ``_send_command``, ``_flush_pending`` and
``_pending_data_size``, stable through nats-py 2.x; tests/brokers/test_nats.py exercises them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeAlias

import nats.aio.client
import nats.errors
from nats.aio.subscription import Subscription

from brokers import json
from brokers._errors import BrokerUnavailableError
from brokers._nats_support import ApiError, log

__all__ = ("Client", "Publisher", "Sink", "hpub", "pub")

Sink: TypeAlias = Callable[[bytes, bytes, bytes, bytes | None], None]
"""Called with ``(subject, reply, payload, header block or None)`` for each message."""


def pub(subject: bytes, reply: bytes, payload: bytes) -> bytes:
    """A ``PUB`` protocol command."""
    return b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)


def hpub(subject: bytes, reply: bytes, header: bytes, payload: bytes) -> bytes:
    """An ``HPUB`` protocol command (``header`` is a complete header block)."""
    size = len(header)
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        subject,
        reply,
        size,
        size + len(payload),
        header,
        payload,
    )


class Client(nats.aio.client.Client):
    """nats-py's client with sinks and raw commands (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._np_sinks: dict[int, Sink] = {}

    async def _process_msg(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: bytes | None,
    ) -> None:
        sink = self._np_sinks.get(sid)
        if sink is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]  # nats-py passes None for no headers
            return
        try:
            sink(subject, reply, data, headers)
        except Exception:  # noqa: BLE001 - a failing sink must never stop the connection's reader
            log.exception("nats: dropping a message on %r that could not be handled", subject)

    async def close(self) -> None:
        """Close, also while reconnecting.

        nats-py 2.16's close writes its outbound buffer to the transport first; while
        reconnecting that transport is dead, the write raises, and close stops half-way,
        leaving subscription tasks running. What was buffered can no longer be sent anyway.
        """
        if not self.is_connected:
            self._pending = []
            self._pending_data_size = 0
        try:
            await super().close()
        finally:
            for sub in list(self._subs.values()):  # what an interrupted close left behind
                task: asyncio.Task[None] | None = getattr(sub, "_wait_for_msgs_task", None)
                if task is not None and not task.done():
                    task.cancel()

    async def subscribe_sink(self, subject: str, sink: Sink) -> Subscription:
        """Subscribe ``subject`` with its messages handed to ``sink`` in the reader."""
        sub = await self.subscribe(subject)
        self._np_sinks[sub._id] = sink
        return sub

    async def unsubscribe_sink(self, sub: Subscription) -> None:
        self._np_sinks.pop(sub._id, None)
        if not self.is_closed and not sub._closed:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                log.debug("nats: unsubscribe failed: %s", exc)

    async def send_raw(self, commands: bytes) -> None:
        """Queue protocol commands and wake the flusher (nats-py's ``publish`` does the same)."""
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if not self.is_connected and (
            self._pending_data_size + len(commands) > self._max_pending_size
        ):
            raise nats.errors.OutboundBufferLimitError
        await self._send_command(commands)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


class _Acks:
    """Acknowledgements awaited for one chunk of published messages."""

    __slots__ = ("done", "error", "remaining", "seqs")

    def __init__(self, count: int, done: asyncio.Future[None]) -> None:
        self.seqs = [0] * count
        self.remaining = count
        self.error: tuple[int, ApiError] | None = None
        self.done = done


class Publisher:
    """Publishes to JetStream pipelined: all of a batch's messages go out before any ack is
    awaited, with at most ``_DEPTH`` chunks unacknowledged. Acks arrive on one wildcard inbox
    (``<inbox>.<chunk>.<index>``) and are matched in a sink, without a future per message.
    """

    _CHUNK_MESSAGES = 1024
    _CHUNK_BYTES = 1 << 20
    _DEPTH = 8

    def __init__(self, client: Client, url: str) -> None:
        self._client = client
        self._url = url
        self._inbox = client.new_inbox()
        self._skip = len(self._inbox) + 1
        self._ids = itertools.count()
        self._waiting: dict[int, _Acks] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._client.subscribe_sink(f"{self._inbox}.*.*", self._on_ack)

    def fail_waiting(self, error: BaseException) -> None:
        """Give up on every unacknowledged publish (the connection was lost under them)."""
        for acks in self._waiting.values():
            if not acks.done.done():
                acks.done.set_exception(error)
        self._waiting.clear()

    async def stop(self) -> None:
        self.fail_waiting(nats.errors.ConnectionClosedError())
        if self._sub is not None:
            await self._client.unsubscribe_sink(self._sub)
            self._sub = None

    def _on_ack(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        chunk, _, index = subject[self._skip :].partition(b".")
        acks = self._waiting.get(int(chunk))
        if acks is None:
            return  # given up on (timeout or error)
        i = int(index)
        if headers is not None and not data:  # a status: 503 = no stream for the subject
            status = headers[9:12].decode("ascii", "replace")
            error: ApiError | None = ApiError(
                int(status) if status.isdigit() else 0, 0, "no stream"
            )
        else:
            try:
                answer = json.loads(data)
            except json.JSONDecodeError:
                answer = {"error": {"code": 0, "description": f"unreadable ack {data[:80]!r}"}}
            problem = answer.get("error")
            if problem is None:
                acks.seqs[i] = answer["seq"]
                error = None
            else:
                error = ApiError(
                    problem.get("code", 0),
                    problem.get("err_code", 0),
                    problem.get("description", ""),
                )
        if error is not None and acks.error is None:
            acks.error = (i, error)
        acks.remaining -= 1
        if acks.remaining == 0 and not acks.done.done():
            acks.done.set_result(None)

    async def publish(
        self, messages: Sequence[tuple[bytes, bytes | None, bytes]], timeout: float
    ) -> tuple[list[int], int]:
        """Publish ``(subject, header block or None, payload)`` messages.

        Returns the stream sequence of each message, in order, and the time of the last
        acknowledgement (ms since the epoch).

        Raises:
            ApiError: JetStream refused a message; ``index`` says which. Messages before it
                were stored; later ones may have been.
            BrokerUnavailableError: no acknowledgement within ``timeout`` seconds of a chunk
                being sent.
        """
        loop = asyncio.get_running_loop()
        seqs: list[int] = []
        window: deque[tuple[int, int, _Acks]] = deque()
        inbox = self._inbox.encode()
        try:
            start = 0
            while start < len(messages):
                chunk_id = next(self._ids)
                reply = b"%s.%d." % (inbox, chunk_id)
                commands: list[bytes] = []
                size = 0
                end = start
                while end < len(messages) and (
                    end - start < self._CHUNK_MESSAGES and size < self._CHUNK_BYTES
                ):
                    subject, header, payload = messages[end]
                    number = b"%d" % (end - start)
                    command = (
                        pub(subject, reply + number, payload)
                        if header is None
                        else hpub(subject, reply + number, header, payload)
                    )
                    commands.append(command)
                    size += len(command)
                    end += 1
                acks = _Acks(end - start, loop.create_future())
                self._waiting[chunk_id] = acks
                window.append((chunk_id, start, acks))
                await self._client.send_raw(b"".join(commands))
                start = end
                if len(window) > self._DEPTH:
                    seqs += await self._wait(*window.popleft(), timeout)
            while window:
                seqs += await self._wait(*window.popleft(), timeout)
        finally:
            for chunk_id, _, _ in window:
                self._waiting.pop(chunk_id, None)
        return seqs, time.time_ns() // 1_000_000

    async def _wait(self, chunk_id: int, start: int, acks: _Acks, timeout: float) -> list[int]:
        try:
            async with asyncio.timeout(timeout):
                await acks.done
        except BrokerUnavailableError as exc:
            raise BrokerUnavailableError(self._url, exc.reason) from None
        except TimeoutError:
            raise BrokerUnavailableError(
                self._url, f"no acknowledgement of a publish within {timeout:g} s"
            ) from None
        finally:
            self._waiting.pop(chunk_id, None)
        if acks.error is not None:
            index, error = acks.error
            error.index = start + index
            raise error
        return acks.seqs
