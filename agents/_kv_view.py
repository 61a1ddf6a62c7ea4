"""One process's view of a KV namespace: the fold of its whole topic, and waiting on it.

:class:`KVView` holds the state of every partition (:class:`agents._kv_fold.KVPartition`) and
runs the loops that keep it: the fold of the log (every partition, no consumer group), which
places and applies each record, answers the writers waiting for an outcome and hands the
changes to the feed; the janitor, which appends expiry ticks when deadlines pass on the wall
clock; and the periodic snapshot. Reads wait here until the view is as fresh as their
consistency level asks. :class:`agents.Memory` owns one view and its lifecycle: it starts the
loops and, when the fold stops, fails the view.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import brokers
from agents._errors import RecordRejectedError
from agents._kv_check import check_key
from agents._kv_consistency import CausalContext, Consistency
from agents._kv_feed import ChangeFeed
from agents._kv_fold import Change, Entry, KVPartition, Outcome
from agents._kv_ops import BatchOp, TickOp, decode_op, encode_op, op_ids
from agents._kv_snapshot import save_snapshot
from brokers import Broker, ConfigurationError, default_partitioner
from operators import ChangeBuffer

__all__ = ("KVView",)

log = logging.getLogger("neuroplex.memory")


class KVView:
    """The fold of topic ``topic``: its partitions' state, who waits on it, who hears it.

    ``outcomes`` maps a write's op id to the future the fold answers; ``feed`` hears every
    change; ``blocking`` holds the subscriptions with the ``block`` overflow policy, for which
    the fold waits. :meth:`start` sizes the view once the topic's partition count is known.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.parts: list[KVPartition] = []
        self.outcomes: dict[str, asyncio.Future[Outcome]] = {}
        self.feed = ChangeFeed()
        self.blocking: list[ChangeBuffer[Change]] = []
        self.rejected_records = 0
        self.records_read = 0  # records the fold took from the log since it opened
        self._waiters: dict[int, list[tuple[int, asyncio.Future[None]]]] = {}
        self._partition_cache: dict[str, int] = {}  # reads hash a key once

    def start(self, partitions: int) -> None:
        self.parts = [KVPartition(partition=p) for p in range(partitions)]

    # ------------------------------------------------------------ the fold
    async def fold(self, broker: Broker) -> None:
        """Apply the topic's records as they come; returns never, raises what stopped it."""
        # after a snapshot, each partition is read from the record after the one it applied:
        # only the log's tail is fetched
        start = {p.partition: p.applied + 1 for p in self.parts if p.applied >= 0}
        async with broker.subscribe(self.topic, max_batch=5000, start=start or "earliest") as sub:
            while True:
                batch = await sub.getmany(timeout=None)
                self.records_read += len(batch)
                for record in batch:
                    part = self.parts[record.partition]
                    try:
                        op = self._placed_op(record)
                    except ValueError as exc:
                        self._reject(record, exc)
                        part.applied = max(part.applied, record.offset)
                        continue
                    changes, outcomes = part.apply(record.offset, record.timestamp, op)
                    for op_id, outcome in outcomes:
                        future = self.outcomes.pop(op_id, None) if op_id else None
                        if future is not None and not future.done():
                            future.set_result(outcome)
                    for change in changes:
                        self.feed.dispatch(change)
                    full = [b for b in self.blocking if b.full]
                    if full:
                        # a 'block' subscriber is behind: readers waiting for what was just
                        # applied are answered first, then the fold waits for the subscriber
                        for partition in {r.partition for r in batch}:
                            self._wake(partition)
                        for blocked in full:
                            await blocked.room()
                for partition in {r.partition for r in batch}:
                    self._wake(partition)

    def _placed_op(self, record: brokers.Record) -> Any:
        """The record's op, if every key it changes belongs on the record's partition.

        A key is folded only in its own partition (DESIGN §3): an op that a producer put
        elsewhere (another partitioner than Kafka's murmur2) raises ``ValueError``, so it is
        rejected like any record that is not an op, the same way by every reader of the log,
        and never changes a partition's state where reads of its key would not look.
        """
        op = decode_op(record.value or b"")
        for one in op.ops if isinstance(op, BatchOp) else (op,):
            key = getattr(one, "key", None)
            if key is None:
                continue  # a tick
            home = self.partition_of(key)
            if home != record.partition:
                raise ValueError(
                    f"key {key!r} belongs on partition {home} of {self.topic}, not on "
                    f"{record.partition}: publish KV ops with Kafka's default partitioner "
                    "(murmur2 of the key's UTF-8 bytes), or write through a Memory"
                )
        return op

    def _reject(self, record: brokers.Record, exc: ValueError) -> None:
        """A record that is not an op is skipped, never folded; a writer waiting for it is told."""
        self.rejected_records += 1
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        log.warning(
            "kv record %s[%d]@%d is not an op: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        for op_id in op_ids(record.value):
            future = self.outcomes.pop(op_id, None)
            if future is not None and not future.done():
                future.set_exception(
                    RecordRejectedError(record.topic, record.partition, record.offset, reason)
                )

    async def replay(
        self, broker: Broker, since: Mapping[int, int] | None
    ) -> AsyncGenerator[Change, None]:
        """The changes of a private fold that re-reads the log from its start: those at or
        after ``since`` (per partition, an offset; all by default), then live ones."""
        parts = [KVPartition(partition=p) for p in range(len(self.parts))]
        start = dict(since or {})
        async with broker.subscribe(self.topic, max_batch=5000) as sub:
            while True:
                for record in await sub.getmany(timeout=None):
                    try:
                        op = self._placed_op(record)
                    except ValueError:
                        continue
                    changes, _ = parts[record.partition].apply(record.offset, record.timestamp, op)
                    if record.offset >= start.get(record.partition, -1):
                        for change in changes:
                            yield change

    # ------------------------------------------------------------ waiting on the view
    def _wake(self, partition: int) -> None:
        applied = self.parts[partition].applied
        waiters = self._waiters.get(partition)
        if not waiters:
            return
        keep = []
        for offset, future in waiters:
            if offset <= applied:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((offset, future))
        self._waiters[partition] = keep

    async def reach(self, positions: Mapping[int, int], *, ends: bool = True) -> None:
        """Wait until every partition applied its position (an end: one past; else: at)."""
        loop = asyncio.get_running_loop()
        for partition, position in positions.items():
            target = position - 1 if ends else position
            if target < 0 or self.parts[partition].applied >= target:
                continue
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(partition, []).append((target, future))
            self._wake(partition)
            await future

    async def reach_level(
        self,
        broker: Broker,
        keys: Iterable[str] | None,
        level: Consistency,
        context: CausalContext | None,
    ) -> None:
        """Wait until the view is as fresh as ``level`` asks for the keys' partitions (every
        partition: ``keys=None``); then note in ``context`` where the session read."""
        if keys is None:
            partitions = set(range(len(self.parts)))
        else:
            partitions = {self.partition_of(k) for k in keys}
        if level == "strong":
            ends = await broker.end_offsets(self.topic)
            await self.reach({p: ends[p] for p in partitions})
        elif level in ("causal", "monotonic"):
            if context is None and level == "causal":
                raise ConfigurationError("a causal read needs context=: a session's CausalContext")
            # without a context the session is this Memory, whose view never goes back
            if context is not None:
                wanted = context.causal() if level == "causal" else context.reads
                await self.reach({p: o for p, o in wanted.items() if p in partitions}, ends=False)
        if context is not None:
            for p in partitions:
                context.note_read(p, self.parts[p].applied)

    def end_waiters(self, error: BaseException) -> None:
        """Nobody waits for a view that will not move: every waiting call gets ``error``."""
        waiting = [f for w in self._waiters.values() for _, f in w] + list(self.outcomes.values())
        self._waiters.clear()
        self.outcomes.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    # ------------------------------------------------------------ background upkeep
    async def snapshots(self, path: Path, every: float) -> None:
        """Write the snapshot every ``every`` seconds (a copy, off the event loop)."""
        while True:
            await asyncio.sleep(every)
            copies = [
                KVPartition(p.partition, dict(p.entries), p.stream_time, p.applied)
                for p in self.parts
            ]
            await asyncio.to_thread(save_snapshot, path, copies)

    async def janitor(self, broker: Broker) -> None:
        """Append a tick to partitions whose earliest deadline passed on the wall clock."""
        while True:
            now = time.time_ns() // 1_000_000
            soonest: int | None = None
            for part in self.parts:
                deadline = part.next_deadline()
                if deadline is None:
                    continue
                if deadline <= now and part.stream_time < deadline:
                    await broker.produce(
                        self.topic, encode_op(TickOp()), key=None, partition=part.partition
                    )
                elif soonest is None or deadline < soonest:
                    soonest = deadline
            wait = 1.0 if soonest is None else min(1.0, max(0.01, (soonest - now) / 1000))
            await asyncio.sleep(wait)

    # ------------------------------------------------------------ reading the view
    def partition_of(self, key: str) -> int:
        partition = self._partition_cache.get(key)
        if partition is None:
            partition = default_partitioner(check_key(key).encode(), len(self.parts))
            if len(self._partition_cache) < 1_000_000:
                self._partition_cache[key] = partition
        return partition

    def entry(self, key: str) -> Entry | None:
        return self.parts[self.partition_of(key)].get(key)

    def matching(self, pattern: str) -> list[str]:
        """The live keys matching the glob ``pattern``, sorted."""
        return sorted(
            k
            for part in self.parts
            for k in part.entries
            if fnmatch.fnmatchcase(k, pattern) and part.get(k) is not None
        )

    def current(self, key: str) -> Change:
        part = self.parts[self.partition_of(key)]
        entry = part.get(key)
        return Change(
            key,
            None,
            None if entry is None else entry.value,
            -1 if entry is None else entry.version,
            "current",
            part.stream_time,
            part.partition,
        )
