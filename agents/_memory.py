"""``agents.Memory``: a key-value memory whose every write is an event on the log.

Each Memory folds the whole namespace topic (every partition, no consumer group), so any process
reads any key locally; writes are appended to the key's partition and answered with the outcome
the fold decided (see :mod:`agents._kv_fold`).

This module holds the Memory's lifecycle (open, close, a failed view) and its public calls:
reads, writes, batches and bulk transfer, observing. It owns two helpers: the view they read
and wait on, with the loops that keep it (:class:`agents._kv_view.KVView`; a read at
``eventual`` reads it directly), and the writer that appends ops and waits for their outcomes
(:class:`agents._kv_write.KVWriter`). Arguments become ops in :mod:`agents._kv_check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import reactivex
from reactivex.scheduler.eventloop import AsyncIOScheduler

import brokers
from agents._errors import ViewFailedError
from agents._kv_batch import Batch, BatchResult, summarize
from agents._kv_check import (
    MISSING,
    Exported,
    cas_op,
    check_key,
    delete_op,
    import_op,
    increment_op,
    set_op,
)
from agents._kv_consistency import CausalContext, Consistency, check_level
from agents._kv_fold import Change, Entry
from agents._kv_snapshot import load_snapshot, save_snapshot
from agents._kv_view import KVView
from agents._kv_write import KVWriter, WriteResult
from brokers import (
    Broker,
    ClosedError,
    ConfigurationError,
    ResourceStateError,
    TopicSpec,
)
from brokers._tasks import stop_task
from operators import ChangeBuffer, OverflowPolicy, feed_observable
from streams import App

__all__ = ("Memory",)

log = logging.getLogger("neuroplex.memory")


class Memory:
    """The KV memory of one namespace.

    Args:
        broker: a broker URL, an open :class:`brokers.Broker`, or a started
            :class:`streams.App` (its broker).
        namespace: names the topic ``kv.<namespace>`` (letters, digits, ``_``, ``-``).
        partitions: the topic's partition count when this Memory creates it.
        consistency: the default read level (``eventual``, ``strong``, ``causal``,
            ``monotonic``); each read may choose its own.
        janitor: append expiry ticks when deadlines pass on the wall clock, so keys expire
            even when nobody writes.
        snapshot_dir: keep a local snapshot of the view there (``<dir>/kv.<namespace>.db``),
            written every ``snapshot_every`` seconds and on close, so opening folds only the
            log's tail.

    Example:
        >>> async with Memory("memory://", namespace="app") as mem:
        ...     await mem.set("user:1", {"name": "Ann"})
        ...     await mem.get("user:1", consistency="strong")
    """

    def __init__(
        self,
        broker: str | Broker | App,
        *,
        namespace: str = "default",
        partitions: int = 8,
        consistency: Consistency = "eventual",
        janitor: bool = True,
        snapshot_dir: str | Path | None = None,
        snapshot_every: float = 60.0,
    ) -> None:
        self.topic = brokers.TopicSpec(f"kv.{namespace}", partitions=partitions).name
        self.namespace = namespace
        self._broker_arg = broker
        self._partitions_wanted = partitions
        self.consistency = check_level(consistency)
        self._janitor_on = janitor
        self._snapshot = None if snapshot_dir is None else Path(snapshot_dir) / f"{self.topic}.db"
        self._snapshot_every = snapshot_every
        self.loaded_from_snapshot = 0
        self._broker: Broker | None = None
        self._owns_broker = False
        self._view = KVView(self.topic)
        self._writer = KVWriter(self._view, self._check_open)
        self._tasks: list[asyncio.Task[None]] = []
        self._state = "new"  # open, closed, or failed (its view stopped: see _fail)
        self._failure: BaseException | None = None

    @property
    def rejected_records(self) -> int:
        """Records of the topic that are not ops (or not on their key's partition): skipped."""
        return self._view.rejected_records

    @property
    def records_read(self) -> int:
        """Records the fold took from the log since this Memory opened."""
        return self._view.records_read

    # ------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise ResourceStateError("a Memory is opened once: make a new one")
        arg = self._broker_arg
        if isinstance(arg, App):
            arg = arg.broker  # raises if the app is not started
        if isinstance(arg, str):
            self._broker = await brokers.connect(arg).open()
            self._owns_broker = True
        else:
            self._broker = arg
        spec = await self._broker.create_topic(
            TopicSpec(self.topic, partitions=self._partitions_wanted)
        )
        view = self._view
        view.start(spec.partitions)
        ends = await self._broker.end_offsets(self.topic)
        if self._snapshot is not None:
            self.loaded_from_snapshot = await asyncio.to_thread(
                load_snapshot, self._snapshot, view.parts, ends
            )
        self._state = "open"
        self._start(self._fold(self._broker), "fold")
        if self._janitor_on:
            self._start(view.janitor(self._broker), "janitor")
        if self._snapshot is not None:
            self._start(view.snapshots(self._snapshot, self._snapshot_every), "snapshots")
        try:
            await view.reach(ends)  # opened = caught up with what the log held
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the view and write its snapshot; observers are completed, subscriptions end,
        and calls still waiting on the view get :class:`brokers.ClosedError`. Idempotent."""
        if self._state == "closed":
            return
        was_open = self._state == "open"
        self._state = "closed"
        await self._stop_tasks()
        if was_open and self._snapshot is not None:
            await asyncio.to_thread(save_snapshot, self._snapshot, self._view.parts)
        self._view.feed.complete()
        self._view.end_waiters(ClosedError(f"memory {self.namespace!r}"))
        if self._owns_broker and self._broker is not None:
            await self._broker.aclose()

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=f"{name} {self.topic}"))

    async def _fold(self, broker: Broker) -> None:
        try:
            await self._view.fold(broker)
        except Exception as exc:  # noqa: BLE001 - handed to everyone waiting on the view
            await self._fail(exc)

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            await stop_task(task)

    async def _fail(self, exc: Exception) -> None:
        """The fold stopped: the view is not trusted past this point (no snapshot is written)."""
        if self._state != "open":
            return
        self._state = "failed"
        self._failure = exc
        log.error("the view of %s stopped", self.topic, exc_info=exc)
        self._view.end_waiters(self._failed_error())
        self._view.feed.fail(self._failed_error())
        await self._stop_tasks()  # the janitor and the snapshots

    def _failed_error(self) -> ViewFailedError:
        failure = self._failure
        error = ViewFailedError(self.topic, f"{type(failure).__name__}: {failure}")
        error.__cause__ = failure
        return error

    def _check_open(self) -> Broker:
        if self._state != "open" or self._broker is None:
            if self._state == "failed":
                raise self._failed_error()
            raise (
                ClosedError(f"memory {self.namespace!r}")
                if self._state == "closed"
                else (ResourceStateError("memory not open: use 'async with Memory(...) as mem'"))
            )
        return self._broker

    # ------------------------------------------------------------ reads
    def partition_of(self, key: str) -> int:
        """The partition of the namespace's topic that holds ``key``."""
        return self._view.partition_of(key)

    async def _level(
        self,
        keys: Iterable[str] | None,
        consistency: Consistency | None,
        context: CausalContext | None,
    ) -> None:
        """Wait until the view is as fresh as the level asks for the keys' partitions (every
        partition: ``keys=None``); then note in ``context`` where the session read."""
        broker = self._check_open()
        level = check_level(consistency or self.consistency)
        await self._view.reach_level(broker, keys, level, context)

    async def get(
        self,
        key: str,
        default: Any = None,
        *,
        consistency: Consistency | None = None,
        context: CausalContext | None = None,
    ) -> Any:
        """The value of ``key`` (``default`` if absent or expired) at the chosen consistency."""
        if context is None and (consistency or self.consistency) == "eventual":
            return self.get_nowait(key, default)  # nothing to wait for, nothing to note
        await self._level([key], consistency, context)
        entry = self._view.entry(key)
        return default if entry is None else entry.value

    def get_nowait(self, key: str, default: Any = None) -> Any:
        """The value in this process's view now (``eventual``), without awaiting anything."""
        if self._state != "open":
            self._check_open()
        view = self._view
        entry = view.parts[view.partition_of(key)].get(key)
        return default if entry is None else entry.value

    async def get_entry(
        self,
        key: str,
        *,
        consistency: Consistency | None = None,
        context: CausalContext | None = None,
    ) -> Entry | None:
        """The value with its version (the log offset that last changed it) and deadline."""
        await self._level([key], consistency, context)
        return self._view.entry(key)

    async def exists(
        self,
        key: str,
        *,
        consistency: Consistency | None = None,
        context: CausalContext | None = None,
    ) -> bool:
        await self._level([key], consistency, context)
        return self._view.entry(key) is not None

    async def multi_get(
        self,
        keys: Iterable[str],
        *,
        consistency: Consistency | None = None,
        context: CausalContext | None = None,
    ) -> dict[str, Any]:
        """The values of the keys that exist."""
        keys = list(keys)
        await self._level(keys, consistency, context)
        found = {k: self._view.entry(k) for k in keys}
        return {k: e.value for k, e in found.items() if e is not None}

    async def scan(
        self,
        pattern: str = "*",
        *,
        limit: int | None = None,
        offset: int = 0,
        consistency: Consistency | None = None,
        context: CausalContext | None = None,
    ) -> list[str]:
        """Keys matching a glob pattern (``user:*``), sorted, paged by ``offset``/``limit``.

        The consistency applies to every partition (a pattern may match keys in any)."""
        await self._level(None, consistency, context)
        keys = self._view.matching(pattern)
        return keys[offset:] if limit is None else keys[offset : offset + limit]

    # ------------------------------------------------------------ writes
    async def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        wait: bool = True,
        context: CausalContext | None = None,
    ) -> WriteResult:
        """Set ``key``; with ``ttl`` seconds it expires that long after the write (event time)."""
        return await self._writer.write(set_op(key, value, ttl), wait=wait, context=context)

    async def delete(
        self, key: str, *, wait: bool = True, context: CausalContext | None = None
    ) -> WriteResult:
        return await self._writer.write(delete_op(key), wait=wait, context=context)

    async def compare_and_swap(
        self,
        key: str,
        value: Any,
        *,
        expected_version: int | None = MISSING,
        expected_value: Any = MISSING,
        ttl: float | None = None,
        context: CausalContext | None = None,
    ) -> WriteResult:
        """Set ``key`` only if it is still as the caller saw it; the fold decides.

        Pass ``expected_version`` (the version read, or ``None`` for "must be absent") or
        ``expected_value``. Of many writers racing from one version exactly one wins; the others
        get ``applied=False`` with the current version and value, to read again and retry.
        """
        op = cas_op(
            key, value, expected_version=expected_version, expected_value=expected_value, ttl=ttl
        )
        return await self._writer.write(op, wait=True, context=context)

    async def increment(
        self, key: str, delta: int | float = 1, *, context: CausalContext | None = None
    ) -> WriteResult:
        """Add ``delta`` (absent counts as 0); the result's ``value`` is the new number."""
        return await self._writer.write(increment_op(key, delta), wait=True, context=context)

    async def decrement(
        self, key: str, delta: int | float = 1, *, context: CausalContext | None = None
    ) -> WriteResult:
        return await self.increment(key, -delta, context=context)

    async def multi_set(
        self,
        items: Mapping[str, Any],
        *,
        ttl: float | None = None,
        context: CausalContext | None = None,
    ) -> list[WriteResult]:
        """Set many keys: one atomic record per partition (the keys of a partition together)."""
        return await self._writer.batch([set_op(k, v, ttl) for k, v in items.items()], context)

    async def multi_delete(
        self, keys: Iterable[str], *, context: CausalContext | None = None
    ) -> list[WriteResult]:
        return await self._writer.batch([delete_op(k) for k in keys], context)

    def create_batch(self) -> Batch:
        """A builder: ``mem.create_batch().set(...).increment(...).delete(...)``."""
        return Batch(self)

    async def execute_batch(
        self, batch: Batch, *, context: CausalContext | None = None
    ) -> BatchResult:
        """Apply a batch: the ops of a partition atomically, at one log position, in order."""
        started = time.perf_counter()
        ops = list(batch.ops)
        results = await self._writer.batch(ops, context) if ops else []
        return summarize(ops, results, started)

    async def bulk_set(
        self,
        items: Iterable[tuple[str, Any]] | Mapping[str, Any],
        *,
        chunk: int = 1000,
        progress: Callable[[int], None] | None = None,
        context: CausalContext | None = None,
    ) -> int:
        """Set many keys, ``chunk`` at a time; ``progress(done)`` after each chunk. Returns done."""
        pairs = items.items() if isinstance(items, Mapping) else items
        return await self._writer.bulk(
            (set_op(k, v, None) for k, v in pairs), chunk, progress, context
        )

    async def bulk_delete(
        self,
        keys: Iterable[str],
        *,
        chunk: int = 1000,
        progress: Callable[[int], None] | None = None,
        context: CausalContext | None = None,
    ) -> int:
        """Delete many keys, ``chunk`` at a time, reporting progress like :meth:`bulk_set`."""
        return await self._writer.bulk((delete_op(k) for k in keys), chunk, progress, context)

    async def import_keys(
        self,
        items: Iterable[Exported] | AsyncIterable[Exported],
        *,
        chunk: int = 1000,
        progress: Callable[[int], None] | None = None,
        context: CausalContext | None = None,
    ) -> int:
        """Import what :meth:`export` gave: ``(key, value, expires_at)``, deadlines kept (event
        time; a deadline already passed reads as absent). ``await other.import_keys(
        mem.export())`` copies a namespace. Returns how many keys were written."""
        if isinstance(items, AsyncIterable):
            return await self._writer.bulk(
                (import_op(i) async for i in items), chunk, progress, context
            )
        return await self._writer.bulk((import_op(i) for i in items), chunk, progress, context)

    async def export(
        self,
        pattern: str = "*",
        *,
        consistency: Consistency | None = "strong",
        context: CausalContext | None = None,
    ) -> AsyncGenerator[Exported, None]:
        """``(key, value, expires_at)`` of every key matching ``pattern`` (strong by default), in
        key order; ``expires_at`` is the key's deadline in event time (ms), or None.
        :meth:`import_keys` imports them, deadlines kept (into another namespace or
        deployment)."""
        await self._level(None, consistency, context)
        for key in self._view.matching(pattern):
            entry = self._view.entry(key)
            if entry is not None:
                yield key, entry.value, entry.expires_at
            await asyncio.sleep(0)  # a big export lets the fold and others run

    async def stream_changes(
        self, *, since: Mapping[int, int] | None = None
    ) -> AsyncGenerator[Change, None]:
        """Every change, replayed from the log: those at or after ``since`` (per partition, an
        offset; all of history by default) up to now, then live ones. A private fold re-reads
        the log from its start, so old values are exact."""
        broker = self._check_open()
        async with contextlib.aclosing(self._view.replay(broker, since)) as changes:
            async for change in changes:
                yield change

    # ------------------------------------------------------------ events API
    def on(self, key: str, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback`` on every change of ``key``; returns what :meth:`off` takes."""
        self._check_open()
        return self._view.feed.attach(callback, key=check_key(key))

    def on_pattern(self, pattern: str, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback`` on every change of keys matching the glob ``pattern``."""
        return self.listen(pattern, callback)

    def off(self, handle: Callable[[], None]) -> None:
        """Stop a callback registered with :meth:`on` / :meth:`on_pattern`."""
        handle()

    async def emit(self, key: str, value: Any) -> WriteResult:
        """Announce ``value`` under ``key`` through the log: its observers get it as a ``set``,
        in log order with every other change of the key."""
        return await self.set(key, value)

    # ------------------------------------------------------------ observing
    def listen(self, pattern: str | None, listener: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``listener`` with every change of keys matching ``pattern`` (all: ``None``),
        in log order per partition. Returns the function that stops it."""
        self._check_open()
        return self._view.feed.attach(listener, pattern=pattern)

    def observe(self, key: str) -> reactivex.Observable[Change]:
        """The key's current state (op ``current``), then every change: no gap, no duplicate.

        A reactivex Observable: every operator works on it. Time-based operators need the
        asyncio scheduler, :attr:`scheduler`. It completes when this Memory closes and errors
        with :class:`ViewFailedError` if its view fails (subscribing then errors at once).
        """
        check_key(key)

        def initial() -> list[Change]:
            self._check_open()
            return [self.current(key)]

        return feed_observable(lambda observer: self._view.feed.attach(observer, key=key), initial)

    def observe_pattern(self, pattern: str) -> reactivex.Observable[Change]:
        """The current state of every key matching the glob ``pattern``, then their changes."""

        def initial() -> list[Change]:
            self._check_open()
            return [self.current(k) for k in self._view.matching(pattern)]

        return feed_observable(
            lambda observer: self._view.feed.attach(observer, pattern=pattern), initial
        )

    @property
    def scheduler(self) -> AsyncIOScheduler:
        """The asyncio scheduler for time-based operators (``debounce``, ``throttle`` ...)."""
        return AsyncIOScheduler(asyncio.get_running_loop())

    def subscribe(
        self, pattern: str = "*", *, buffer: int = 1000, overflow: OverflowPolicy = "drop_oldest"
    ) -> ChangeBuffer[Change]:
        """Changes of keys matching ``pattern`` as an async iterator with a bounded buffer.

        ``overflow`` says what happens when the reader falls ``buffer`` changes behind:
        ``drop_oldest``, ``error`` (:class:`operators.BufferOverflowError`), or ``block`` (this
        Memory's fold waits for the reader). ``close()`` ends the iteration; so does closing
        this Memory (``StopAsyncIteration`` after the buffered changes); if its view fails, the
        next read raises :class:`ViewFailedError`.
        """
        self._check_open()
        detach: Callable[[], None] | None = None

        def closed() -> None:
            if detach is not None:
                detach()
            if changes in self._view.blocking:
                self._view.blocking.remove(changes)

        try:
            changes: ChangeBuffer[Change] = ChangeBuffer(buffer, overflow, on_close=closed)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        if overflow == "block":
            self._view.blocking.append(changes)
        detach = self._view.feed.attach(changes, pattern=pattern)
        return changes

    def current(self, key: str) -> Change:
        """The key's state now, as a change with op ``current`` (``new`` None if absent)."""
        return self._view.current(key)
