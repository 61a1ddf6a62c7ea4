"""``memory://[name]``: the in-process log.

The fastest backend and the supported fake for unit tests. Brokers connected to the same name
in one process share one log (``memory://`` is the default name); the log is dropped when the
last of them closes. One event loop at a time. Groups are real: members heartbeat, a member that
stops for ``session_timeout`` loses its partitions, commits from a stale generation are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from bisect import bisect_left
from dataclasses import dataclass, field
from operator import attrgetter

from brokers._base import BaseBroker, BaseSubscription, SubscribeOptions, record_size
from brokers._errors import (
    StaleMemberError,
    TopicConflictError,
    UnknownTopicError,
)
from brokers._groups import assign_partitions
from brokers._settings import MemorySettings
from brokers._tasks import stop_task
from brokers._types import Position, ProducerRecord, Record, TopicPartition, TopicSpec

__all__ = ("MemoryBroker",)

_offset_of = attrgetter("offset")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Partition:
    records: list[Record] = field(default_factory=list)
    next_offset: int = 0
    size: int = 0
    latest: dict[bytes, int] = field(default_factory=dict)  # compacted: key -> newest offset
    dead: int = 0
    waiters: set[asyncio.Event] = field(default_factory=set)

    def begin(self) -> int:
        return self.records[0].offset if self.records else self.next_offset


@dataclass(slots=True)
class _Topic:
    spec: TopicSpec
    partitions: list[_Partition]


@dataclass(slots=True)
class _Group:
    members: dict[str, float] = field(default_factory=dict)  # member -> last heartbeat
    topics: dict[str, frozenset[str]] = field(default_factory=dict)
    wakers: dict[str, asyncio.Event] = field(default_factory=dict)
    generation: int = 0
    assignment: dict[str, frozenset[TopicPartition]] = field(default_factory=dict)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


class _Log:
    def __init__(self) -> None:
        self.topics: dict[str, _Topic] = {}
        self.groups: dict[str, _Group] = {}
        self.refs = 0

    def topic(self, name: str) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise UnknownTopicError(name)
        return topic

    def rebalance(self, group: _Group) -> None:
        partitions = [
            TopicPartition(name, p)
            for name in set().union(*group.topics.values())
            if name in self.topics
            for p in range(self.topics[name].spec.partitions)
        ]
        group.generation += 1
        group.assignment = assign_partitions(group.topics, partitions)
        for waker in group.wakers.values():
            waker.set()


_logs: dict[str, _Log] = {}


class MemoryBroker(BaseBroker):
    """The in-process log. Obtain it with ``brokers.connect("memory://")``."""

    def __init__(self, url: str, settings: MemorySettings, *, name: str) -> None:
        super().__init__(url, settings)
        self._name = name
        self._log: _Log | None = None

    @classmethod
    def from_url(cls, url: str, settings: MemorySettings) -> MemoryBroker:
        """``memory://`` or ``memory://name`` (brokers on one name share a log)."""
        return cls(url, settings, name=url.partition("://")[2].strip("/"))

    @property
    def log(self) -> _Log:
        if self._log is None:
            self._check_open()
            raise AssertionError("unreachable: an open memory broker has a log")
        return self._log

    async def _open(self) -> None:
        log = _logs.setdefault(self._name, _Log())
        log.refs += 1
        self._log = log

    async def _close(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.refs -= 1
            if log.refs == 0 and _logs.get(self._name) is log:
                del _logs[self._name]

    async def _create_topic(self, spec: TopicSpec) -> TopicSpec:
        existing = self.log.topics.get(spec.name)
        if existing is not None:
            old = existing.spec
            if old.partitions != spec.partitions:
                raise TopicConflictError(
                    spec.name, f"it has {old.partitions} partitions, not {spec.partitions}"
                )
            if old.compacted != spec.compacted:
                raise TopicConflictError(
                    spec.name, f"compacted={old.compacted}, not {spec.compacted}"
                )
            return old
        self.log.topics[spec.name] = _Topic(spec, [_Partition() for _ in range(spec.partitions)])
        return spec

    async def _describe_topic(self, name: str) -> TopicSpec:
        return self.log.topic(name).spec

    async def _list_topics(self) -> list[str]:
        return list(self.log.topics)

    async def _delete_topic(self, name: str) -> None:
        topic = self.log.topic(name)
        del self.log.topics[name]
        for group in self.log.groups.values():  # a topic made again under the name starts anew
            for tp in [tp for tp in group.offsets if tp.topic == name]:
                del group.offsets[tp]
        for part in topic.partitions:
            for waiter in part.waiters:
                waiter.set()

    async def _append(self, spec: TopicSpec, records: list[ProducerRecord]) -> list[Position]:
        topic = self.log.topic(spec.name)
        now = _now_ms()
        name = spec.name
        positions: list[Position] = []
        touched: set[int] = set()
        sized = spec.retention_bytes is not None  # sizes matter to size retention only
        for rec in records:
            p = rec.partition
            assert p is not None  # resolved by BaseBroker._prepare
            part = topic.partitions[p]
            offset = part.next_offset
            part.next_offset = offset + 1
            part.records.append(Record(name, p, offset, now, rec.key, rec.value, rec.headers))
            if sized:
                part.size += record_size(rec)
            if spec.compacted and rec.key is not None:
                if rec.key in part.latest:
                    part.dead += 1
                part.latest[rec.key] = offset
            positions.append(Position(name, p, offset, now))
            touched.add(p)
        for p in touched:
            part = topic.partitions[p]
            self._retain(spec, part, now)
            for waiter in part.waiters:
                waiter.set()
        return positions

    @staticmethod
    def _retain(spec: TopicSpec, part: _Partition, now: int) -> None:
        """Apply retention and compaction (incrementally: compaction runs once half is dead)."""
        drop = 0
        records = part.records
        if spec.retention_ms is not None:
            horizon = now - spec.retention_ms
            while drop < len(records) and records[drop].timestamp < horizon:
                drop += 1
        if spec.retention_bytes is not None:
            size = part.size - sum(_size(r) for r in records[:drop])
            while drop < len(records) and size > spec.retention_bytes:
                size -= _size(records[drop])
                drop += 1
        if drop:
            for rec in records[:drop]:
                if spec.retention_bytes is not None:
                    part.size -= _size(rec)
                if spec.compacted and rec.key is not None:
                    if part.latest.get(rec.key) == rec.offset:
                        del part.latest[rec.key]
                    else:
                        part.dead -= 1
            del records[:drop]
        if spec.compacted and part.dead > 1024 and part.dead * 2 > len(records):
            tomb_horizon = now - spec.delete_retention_ms
            kept = [
                r
                for r in records
                if r.key is not None
                and part.latest.get(r.key) == r.offset
                and (r.value is not None or r.timestamp >= tomb_horizon)
            ]
            part.latest = {r.key: r.offset for r in kept if r.key is not None}
            part.records = kept
            if spec.retention_bytes is not None:
                part.size = sum(_size(r) for r in kept)
            part.dead = 0

    async def end_offsets(self, topic: str) -> dict[int, int]:
        self._check_open()
        parts = self.log.topic(topic).partitions
        return {p: part.next_offset for p, part in enumerate(parts)}

    async def beginning_offsets(self, topic: str) -> dict[int, int]:
        self._check_open()
        parts = self.log.topic(topic).partitions
        return {p: part.begin() for p, part in enumerate(parts)}

    def _subscription(self, options: SubscribeOptions) -> MemorySubscription:
        return MemorySubscription(self, options)


def _size(record: Record) -> int:
    size = len(record.key or b"") + len(record.value or b"")
    for name, value in record.headers:
        size += len(name) + len(value)
    return size


class MemorySubscription(BaseSubscription):
    _broker: MemoryBroker

    def __init__(self, broker: MemoryBroker, options: SubscribeOptions) -> None:
        super().__init__(broker, options)
        self._member = f"{broker.settings.client_id}-{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()
        self._next: dict[TopicPartition, int] = {}
        self._generation = -1
        self._heartbeat: asyncio.Task[None] | None = None
        self._turn = itertools.count()

    @property
    def _log(self) -> _Log:
        return self._broker.log

    async def _start(self) -> None:
        options = self._options
        if options.group is None:
            tps = await self._chosen_partitions()
            await self._assign(tps)
            return
        group = self._log.groups.setdefault(options.group, _Group())
        group.members[self._member] = time.monotonic()
        group.topics[self._member] = frozenset(options.topics)
        group.wakers[self._member] = self._wake
        self._log.rebalance(group)
        self._heartbeat = asyncio.create_task(self._beat(group), name=f"heartbeat {self._member}")

    async def _beat(self, group: _Group) -> None:
        """Renew membership; expire members silent for longer than their session timeout."""
        interval = min(1.0, self._options.session_timeout / 3)
        while True:
            now = time.monotonic()
            if self._member in group.members:
                group.members[self._member] = now
            expired = [
                m for m, seen in group.members.items() if now - seen > self._options.session_timeout
            ]
            for member in expired:
                self._leave(group, member)
            await asyncio.sleep(interval)

    def _leave(self, group: _Group, member: str) -> None:
        group.members.pop(member, None)
        group.topics.pop(member, None)
        waker = group.wakers.pop(member, None)
        if waker is not None:
            waker.set()
        self._log.rebalance(group)

    async def _close(self) -> None:
        await stop_task(self._heartbeat)
        self._register(frozenset())
        log = self._broker._log
        group_name = self._options.group
        if log is not None and group_name is not None:
            group = log.groups.get(group_name)
            if group is not None and self._member in group.members:
                self._leave(group, self._member)
        self._wake.set()

    def _register(self, tps: frozenset[TopicPartition]) -> None:
        log = self._broker._log
        if log is None:
            return
        for tp in self._next.keys() - tps:
            topic = log.topics.get(tp.topic)
            if topic is not None:
                topic.partitions[tp.partition].waiters.discard(self._wake)
        for tp in tps:
            log.topic(tp.topic).partitions[tp.partition].waiters.add(self._wake)

    async def _assign(self, tps: frozenset[TopicPartition]) -> None:
        self._register(tps)
        for tp in tps - self._next.keys():
            self._next[tp] = await self._start_offset(tp)
        for tp in self._next.keys() - tps:
            del self._next[tp]
        await self._set_assignment(tps)

    async def _start_offset(self, tp: TopicPartition) -> int:
        part = self._log.topic(tp.topic).partitions[tp.partition]
        if self._options.group is not None:
            committed = self._log.groups[self._options.group].offsets.get(tp)
            if committed is not None:
                return committed
        start = self._options.start_for(tp)
        if start == "earliest":
            return part.begin()
        if start == "latest":
            return part.next_offset
        return start

    async def _rebalance(self) -> None:
        group_name = self._options.group
        if group_name is None:
            return
        group = self._log.groups[group_name]
        if group.generation == self._generation:
            return
        if self._member not in group.members:
            # expired (we were silent too long): join again under a new generation
            group.members[self._member] = time.monotonic()
            group.topics[self._member] = frozenset(self._options.topics)
            group.wakers[self._member] = self._wake
            self._log.rebalance(group)
        self._generation = group.generation
        await self._assign(group.assignment.get(self._member, frozenset()))

    def _read(self, limit: int) -> list[list[Record]]:
        chunks: list[list[Record]] = []
        tps = sorted(self._next)
        if not tps:
            return chunks
        first = next(self._turn) % len(tps)
        log = self._log
        for tp in tps[first:] + tps[:first]:
            topic = log.topics.get(tp.topic)
            if topic is None:
                continue
            records = topic.partitions[tp.partition].records
            want = self._next[tp]
            if not records or records[-1].offset < want:
                continue
            idx = bisect_left(records, want, key=_offset_of)
            chunk = records[idx : idx + limit]
            if chunk:
                self._next[tp] = chunk[-1].offset + 1
                chunks.append(chunk)
                limit -= len(chunk)
                if limit == 0:
                    break
        return chunks

    async def _fetch(self, timeout: float | None, limit: int) -> list[list[Record]]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self.closed:
            await self._rebalance()
            self._wake.clear()
            chunks = self._read(limit)
            if chunks:
                return chunks
            remaining = None if deadline is None else deadline - loop.time()
            if (remaining is not None and remaining <= 0) or self._woken_up():
                return []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
        return []

    def _wake_fetch(self) -> None:
        self._wake.set()

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        self._next[tp] = offset

    async def _commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        state = self._log.groups.get(group)
        if state is None or state.generation != self._generation:
            raise StaleMemberError(
                group, "the group rebalanced since this member's assignment (a new generation)"
            )
        mine = state.assignment.get(self._member, frozenset())
        foreign = sorted(set(offsets) - mine)
        if foreign:
            raise StaleMemberError(group, f"partitions {foreign} are not assigned to this member")
        state.offsets.update(offsets)

    async def _committed(self, group: str, tp: TopicPartition) -> int | None:
        state = self._log.groups.get(group)
        return None if state is None else state.offsets.get(tp)
