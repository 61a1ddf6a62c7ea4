"""``sqlite:///path/to/log.db``: the embedded, durable log, shared by processes on one machine.

One SQLite file in WAL mode holds the topics, the records, the consumer groups and their
committed positions (see :mod:`brokers._sqlite_schema` for the format). Each broker runs:

- a **writer thread** that group-commits every write of the process (produce, topic changes,
  heartbeats, commits): a produce returns once its transaction committed;
- a **reader thread** with its own connection for fetches and metadata;
- a **checkpoint thread** that folds the write-ahead log into the file after the acks;
- a **poller** on the event loop, which checks ``PRAGMA data_version`` every
  ``poll_interval`` while subscriptions are open, to notice other processes' writes and group
  changes. Subscriptions in the same process are woken at once after each commit.

Guarantees and limits are in docs/brokers-sqlite.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from brokers import _sqlite_groups as groups
from brokers import _sqlite_ops as ops
from brokers._base import BaseBroker, BaseSubscription, SubscribeOptions
from brokers._errors import (
    NeuroplexError,
    UnsupportedURLError,
)
from brokers._settings import SqliteSettings
from brokers._sqlite_schema import connect_file, prepare_file, translate_error
from brokers._sqlite_writer import Work, Writer
from brokers._tasks import stop_task
from brokers._types import Position, ProducerRecord, Record, TopicPartition, TopicSpec

__all__ = ("SqliteBroker", "SqliteSubscription")

T = TypeVar("T")
_log = logging.getLogger("brokers.sqlite")


def _path_of(url: str) -> str:
    rest = url.partition("://")[2]
    if not rest or rest.strip("/") == "":
        raise UnsupportedURLError(url, "it names no file: use sqlite:///path/to/log.db")
    if "?" in rest or "#" in rest:
        raise UnsupportedURLError(
            url, "sqlite:// URLs take no query or fragment: pass SqliteSettings instead"
        )
    if rest.strip("/") == ":memory:":
        raise UnsupportedURLError(
            url, "sqlite:// needs a file that processes share; use memory:// for an in-process log"
        )
    # sqlite:///abs/path and sqlite:////abs/path are both absolute; sqlite://rel/path is not
    path = "/" + rest.lstrip("/") if rest.startswith("/") else rest
    return str(Path(path).absolute())


class SqliteBroker(BaseBroker):
    """The embedded log. Obtain it with ``brokers.connect("sqlite:///path/to/log.db")``."""

    _settings: SqliteSettings

    def __init__(self, url: str, settings: SqliteSettings, *, path: str) -> None:
        super().__init__(url, settings)
        self._path = path
        self._writer: Writer | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._poller: asyncio.Task[None] | None = None
        self._waiters: dict[TopicPartition, set[asyncio.Event]] = {}
        self._members: dict[str, set[SqliteSubscription]] = {}
        self._subscribed = asyncio.Event()  # the poller sleeps on it while nobody reads

    @classmethod
    def from_url(cls, url: str, settings: SqliteSettings) -> SqliteBroker:
        """``sqlite:///path/to/log.db`` (absolute) or ``sqlite://relative/log.db``."""
        return cls(url, settings, path=_path_of(url))

    @property
    def path(self) -> str:
        """The log file."""
        return self._path

    @property
    def settings(self) -> SqliteSettings:
        return self._settings

    @property
    def transactions(self) -> int:
        """Write transactions this broker has committed (group commit: usually far fewer
        than the produce calls it acknowledged); background upkeep is not counted."""
        return 0 if self._writer is None else self._writer.transactions

    # ------------------------------------------------------------ lifecycle
    async def _open(self) -> None:
        path, settings = self._path, self._settings

        def setup() -> list[sqlite3.Connection]:
            prepare_file(path, settings)
            conns: list[sqlite3.Connection] = []
            try:
                while len(conns) < 3:
                    conns.append(connect_file(path, settings))
                conns[2].execute("PRAGMA query_only = 1")
            except BaseException:
                for conn in conns:
                    conn.close()
                raise
            return conns

        writer_conn, checkpoint_conn, reader_conn = await asyncio.to_thread(setup)
        self._reader = reader_conn
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._writer = Writer(
            path,
            writer_conn,
            checkpoint_conn,
            loop=asyncio.get_running_loop(),
            on_commit=self._on_commit,
            maintenance_interval=settings.maintenance_interval,
        )
        self._writer.start()
        self._poller = asyncio.create_task(self._poll(), name=f"sqlite poller {path}")

    async def _close(self) -> None:
        if self._poller is not None:
            await stop_task(self._poller)
            self._poller = None
        if self._writer is not None:
            await self._writer.aclose()
            self._writer = None
        reader, pool = self._reader, self._reader_pool
        self._reader = self._reader_pool = None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(pool, _close_quietly, reader)
            pool.shutdown(wait=True)
        elif reader is not None:
            reader.close()

    # ------------------------------------------------------------ plumbing
    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the reader thread."""
        conn, pool = self._reader, self._reader_pool
        if conn is None or pool is None:
            self._check_open()
            raise AssertionError("unreachable: an open sqlite broker has a reader")
        path = self._path

        def run() -> T:
            try:
                return fn(conn, *args)
            except sqlite3.Error as exc:
                raise translate_error(exc, path) from exc

        return await asyncio.get_running_loop().run_in_executor(pool, run)

    async def _write(self, work: Work[T]) -> T:
        """Run ``work(conn, txn)`` in the writer's next transaction; its result once committed."""
        if self._writer is None:
            self._check_open()
            raise AssertionError("unreachable: an open sqlite broker has a writer")
        return await self._acked(self._writer.submit(work))

    async def _acked(self, future: asyncio.Future[T]) -> T:
        # No per-call timer (it costs more than the rest of a small produce): a write waits at
        # most request_timeout for the file's lock (SQLite's busy timeout), then fails with
        # BrokerUnavailableError from the writer thread.
        return await future

    def _on_commit(self, txn: ops.Txn) -> None:
        """After each commit of this process: wake readers, tell members their assignment."""
        for tp in txn.touched:
            for event in self._waiters.get(tp, ()):
                event.set()
        for group, (generation, assignment) in txn.groups.items():
            for sub in self._members.get(group, ()):
                sub._offer(generation, assignment.get(sub.member, frozenset()))

    async def _poll(self) -> None:
        """Notice what other processes commit: data_version moves on every foreign commit."""
        interval = self._settings.poll_interval
        version = -1
        while True:
            if not self._subscriptions:
                self._subscribed.clear()
                await self._subscribed.wait()
            await asyncio.sleep(interval)
            try:
                version, generations = await self._read(_changes, version, sorted(self._members))
            except NeuroplexError as exc:
                _log.warning("polling %s failed, will retry: %s", self._path, exc)
                continue
            if generations is None:
                continue
            for sub in list(self._subscriptions):
                if isinstance(sub, SqliteSubscription):
                    sub._wake.set()
            for group, generation in generations.items():
                for member in self._members.get(group, ()):
                    if member.target_generation != generation:
                        member._beat_now.set()

    # ------------------------------------------------------------ topics
    async def _create_topic(self, spec: TopicSpec) -> TopicSpec:
        return await self._write(lambda conn, txn: ops.create_topic(conn, txn, spec))

    async def _describe_topic(self, name: str) -> TopicSpec:
        return await self._read(ops.describe_topic, name)

    async def _list_topics(self) -> list[str]:
        return await self._read(ops.list_topics)

    async def _delete_topic(self, name: str) -> None:
        await self._write(lambda conn, txn: ops.delete_topic(conn, txn, name))

    async def _append(self, spec: TopicSpec, records: list[ProducerRecord]) -> list[Position]:
        if self._writer is None:
            self._check_open()
            raise AssertionError("unreachable: an open sqlite broker has a writer")
        return await self._acked(self._writer.submit_append(ops.Append(spec.name, records)))

    async def end_offsets(self, topic: str) -> dict[int, int]:
        self._check_open()
        return await self._read(ops.end_offsets, topic)

    async def beginning_offsets(self, topic: str) -> dict[int, int]:
        self._check_open()
        return await self._read(ops.beginning_offsets, topic)

    def _subscription(self, options: SubscribeOptions) -> SqliteSubscription:
        return SqliteSubscription(self, options)


def _close_quietly(conn: sqlite3.Connection | None) -> None:
    if conn is not None:
        conn.close()


def _changes(
    conn: sqlite3.Connection, last: int, group_names: list[str]
) -> tuple[int, dict[str, int] | None]:
    """The data version, and the generations of ``group_names`` if it moved since ``last``."""
    version: int = conn.execute("PRAGMA data_version").fetchone()[0]
    if version == last:
        return version, None
    marks = ",".join("?" * len(group_names))
    rows = conn.execute(
        f"SELECT name, generation FROM groups WHERE name IN ({marks})",  # noqa: S608  # placeholders only
        group_names,
    ).fetchall()
    return version, dict(rows)


class SqliteSubscription(BaseSubscription):
    _broker: SqliteBroker

    def __init__(self, broker: SqliteBroker, options: SubscribeOptions) -> None:
        super().__init__(broker, options)
        client = broker.settings.client_id
        self._member = f"{client}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()
        self._beat_now = asyncio.Event()
        self._next: dict[TopicPartition, int] = {}
        self._generation = -1
        self._target: tuple[int, frozenset[TopicPartition]] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._turn = itertools.count()
        self._seeks = 0

    @property
    def member(self) -> str:
        """This subscription's member id in its group."""
        return self._member

    @property
    def target_generation(self) -> int | None:
        """The newest group generation this member heard of."""
        return None if self._target is None else self._target[0]

    def _session_ms(self) -> int:
        return round(self._options.session_timeout * 1000)

    # ------------------------------------------------------------ lifecycle
    async def _start(self) -> None:
        options, broker = self._options, self._broker
        broker._subscribed.set()
        if options.group is None:
            tps = await self._chosen_partitions()
            await self._assign(tps)
            return
        group, member, topics = options.group, self._member, options.topics
        session_ms = self._session_ms()
        broker._members.setdefault(group, set()).add(self)
        generation, mine = await broker._write(
            lambda conn, txn: groups.join(
                conn, txn, group=group, member=member, topics=topics, session_ms=session_ms
            )
        )
        self._offer(generation, mine)
        self._heartbeat = asyncio.create_task(self._beat(), name=f"heartbeat {member}")

    async def _close(self) -> None:
        await stop_task(self._heartbeat)
        self._heartbeat = None
        self._register(frozenset())
        group, member, broker = self._options.group, self._member, self._broker
        if group is not None:
            members = broker._members.get(group)
            if members is not None:
                members.discard(self)
                if not members:
                    del broker._members[group]
            if broker._writer is not None:
                try:
                    await broker._write(
                        lambda conn, txn: groups.leave(conn, txn, group=group, member=member)
                    )
                except NeuroplexError as exc:
                    # the lease runs out on its own: the others get the partitions then
                    _log.warning("member %s could not leave group %r: %s", member, group, exc)
        self._wake.set()

    async def _beat(self) -> None:
        """Renew the lease; learn the group's generation (and rejoin if expired)."""
        group = self._options.group
        assert group is not None
        member, topics, session_ms = self._member, self._options.topics, self._session_ms()
        interval = min(self._broker.settings.heartbeat_interval, self._options.session_timeout / 3)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._beat_now.wait()
            self._beat_now.clear()
            try:
                generation, mine = await self._broker._write(
                    lambda conn, txn: groups.heartbeat(
                        conn, txn, group=group, member=member, topics=topics, session_ms=session_ms
                    )
                )
            except NeuroplexError as exc:
                _log.warning("heartbeat of %s in group %r failed: %s", member, group, exc)
                continue
            self._offer(generation, mine)

    def _offer(self, generation: int, assignment: frozenset[TopicPartition]) -> None:
        """A generation and this member's partitions in it; adopted by the next fetch."""
        if self._target is None or generation >= self._target[0]:
            self._target = (generation, assignment)
            self._wake.set()

    # ------------------------------------------------------------ assignment
    def _register(self, tps: frozenset[TopicPartition]) -> None:
        waiters = self._broker._waiters
        for tp in self._next.keys() - tps:
            events = waiters.get(tp)
            if events is not None:
                events.discard(self._wake)
                if not events:
                    del waiters[tp]
        for tp in tps:
            waiters.setdefault(tp, set()).add(self._wake)

    async def _assign(self, tps: frozenset[TopicPartition]) -> None:
        gained = sorted(tps - self._next.keys())
        starts: dict[TopicPartition, int] = {}
        if gained:
            wanted = [(tp, self._options.start_for(tp)) for tp in gained]
            starts = await self._broker._read(ops.start_offsets, self._options.group, wanted)
        self._register(tps)
        for tp in self._next.keys() - tps:
            del self._next[tp]
        self._next.update(starts)
        await self._set_assignment(tps)

    async def _rebalance(self) -> None:
        target = self._target
        if target is None or target[0] == self._generation:
            return
        self._generation = target[0]
        await self._assign(target[1])

    # ------------------------------------------------------------ reading
    def _plan(self) -> list[tuple[TopicPartition, int]]:
        tps = sorted(self._next)
        if not tps:
            return []
        first = next(self._turn) % len(tps)
        return [(tp, self._next[tp]) for tp in tps[first:] + tps[:first]]

    async def _fetch(self, timeout: float | None, limit: int) -> list[list[Record]]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self.closed:
            await self._rebalance()
            self._wake.clear()
            plan = self._plan()
            if plan:
                seeks = self._seeks
                chunks = await self._broker._read(ops.fetch, plan, limit)
                if self._closed_meanwhile():
                    return []
                if seeks == self._seeks:
                    chunks = [c for c in chunks if c[0].topic_partition in self._next]
                    for chunk in chunks:
                        self._next[chunk[0].topic_partition] = chunk[-1].offset + 1
                    if chunks:
                        return chunks
                else:
                    continue  # a seek moved a position while we read: read again from there
            remaining = None if deadline is None else deadline - loop.time()
            if (remaining is not None and remaining <= 0) or self._woken_up():
                return []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
        return []

    def _wake_fetch(self) -> None:
        self._wake.set()

    def _closed_meanwhile(self) -> bool:
        # a method, not the property: mypy would keep the loop condition's narrowing
        return self.closed

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        self._next[tp] = offset
        self._seeks += 1
        self._wake.set()

    async def _commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        member, generation = self._member, self._generation
        await self._broker._write(
            lambda conn, txn: groups.commit(
                conn, txn, group=group, member=member, generation=generation, offsets=offsets
            )
        )

    async def _committed(self, group: str, tp: TopicPartition) -> int | None:
        return await self._broker._read(ops.committed, group, tp)
