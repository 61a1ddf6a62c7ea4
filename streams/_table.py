"""Tables: dict-like state partitioned like its source topic, kept in a compacted changelog.

Exactly-once state without broker transactions
----------------------------------------------
Delivery is at least once: after a crash, the events since the last commit come again. A
table must apply each of them exactly once. Every changelog record carries, in the
``x-source-next`` header, the source position (next offset of the source partition) up to
which its key's value includes the events. When an event comes again, a write to a key whose
position is already past that event is ignored: its value already holds the event's effect.
This holds key by key, so a changelog flush cut short by a crash (some keys written, others
not) neither loses nor doubles anything; and restore, which keeps for each key the record with
the highest position, gives the same state as a fresh fold of the source whoever wrote it.

A windowed table's state also depends on each partition's *stream time* (the highest event
time folded: it decides which windows are closed). Its changelog records carry it in the
``x-stream-time`` header, the partition's stream time when the record was written, and restore
takes the highest. That is at least the stream time at the last commit (the event that set it
wrote its own key, whose window is still open), so replaying from there never reopens a window
a fresh fold has closed.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, overload

from brokers import ConfigurationError, ProducerRecord, TopicPartition, default_partitioner, json
from streams._codec import Codec, codec_for
from streams._context import Current, current
from streams._errors import DeclarationError
from streams._event import Event
from streams._store import PartitionState, SqliteStore, StoreKind

if TYPE_CHECKING:
    from streams._agent import ErrorPolicy
    from streams._app import App
    from streams._placement import MisplacedPolicy
    from streams._stream import EventStream, Source
    from streams._topic import Topic

__all__ = ("RestoreProgress", "Table", "TableError")

log = logging.getLogger("neuroplex.tables")

K = TypeVar("K")
V = TypeVar("V")

FoldFunction: TypeAlias = Callable[[V, Event[K, Any]], V | None]
"""A fold's step: ``(the key's value, the event) -> its new value`` (``None`` deletes it);
``FoldFunction[V, K]`` for values ``V`` and keys ``K``."""

Undo: TypeAlias = tuple[int, Any, int | None, dict[int, int] | None]
"""What a rollback restores for a key: (partition, value, source position, origins)."""

SOURCE_HEADER = "x-source-next"
STREAM_TIME_HEADER = "x-stream-time"  # windowed tables: the partition's stream time, ms
ORIGINS_HEADER = "x-origin-next"  # JSON {upstream partition: next offset} behind a repartition
_MISSING: Any = object()

RestoreProgress = Callable[["Table[Any, Any]", int, int, int], None]
"""Called as ``(table, partition, records_read, records_total)`` while a partition restores.

While it reads, ``records_total`` is the changelog offsets to read (at least the records:
compaction and NATS sequences leave gaps); a last call, once the partition is restored, has
``records_read == records_total``: the changelog records replayed (0 when there were none).
"""


class TableError(ConfigurationError):
    """A table was used in a way that cannot keep its guarantees; the message says how."""


class Table(Generic[K, V]):
    """A dict-like view folded by an agent, partitioned like its source topic.

    Declare with :meth:`App.table`. Change it only inside an agent of its source topic, with
    keys of the event's partition (``table[event.key] += 1``); read it anywhere for the
    partitions this worker holds.
    """

    def __init__(
        self,
        app: App,
        name: str,
        *,
        source: Topic[K, Any],
        default: Callable[[], V] | None = None,
        value_type: Any = Any,
        on_restore: RestoreProgress | None = None,
        store: StoreKind = "memory",
        standby: bool = False,
        stream_time: bool = False,
    ) -> None:
        self.app = app
        self.name = name
        self.source = source
        self.default = default
        self.value_type = value_type
        self.on_restore = on_restore
        self.changelog: Topic[K, V] = app.topic(
            f"{app.name}.{name}.changelog",
            key_type=source.key_type,
            value_type=value_type,
            partitions=source.partitions,
            compacted=True,
        )
        self._key_codec: Codec[Any] = source.key_codec
        self._value_codec: Codec[Any] = codec_for(value_type)
        self._data: dict[int, MutableMapping[K, V]] = {}
        self._positions: dict[int, MutableMapping[K, int]] = {}
        self._dirty: dict[int, dict[K, int]] = {}
        self._origins: dict[int, MutableMapping[K, dict[int, int]]] = {}
        # per source (a member of the writer agent: concurrency=N runs N, each on its own
        # partitions), the keys its events wrote since its savepoint, with what a rollback
        # restores: (partition, value, source position, origins) as they were before the
        # first write (a key is in one partition, so the key alone names it)
        self._undos: dict[Source, dict[K, Undo]] = {}
        self._partitions: int | None = None
        self._partition_cache: dict[K, int] = {}
        self.store_kind: StoreKind = store
        self._store: SqliteStore | None = None
        self._changelog_next: dict[int, int] = {}
        self.standby = standby
        self._standby: dict[int, PartitionState[K, V]] = {}  # warm copies of others' partitions
        self._rewind: dict[int, int] = {}  # warm copies the follower must read again from
        # per partition, the stream time of a windowed table: the windowed table advances it,
        # the changelog keeps it (a header), restore brings it back
        self.stream_times: dict[int, int] = {}
        self._keeps_stream_time = stream_time
        # the agent that changes it (set when the app starts; see App.agent's tables=)
        self.writer: str | None = None
        if stream_time and store != "memory":
            raise TableError(f"table {name!r}: a windowed table keeps its state in memory")

    def __repr__(self) -> str:
        return f"<Table {self.name} of {self.source.name} holding {sorted(self._data)}>"

    # ------------------------------------------------------------ reading
    @property
    def partitions(self) -> frozenset[int]:
        """The partitions this worker holds (restored and current)."""
        return frozenset(self._data)

    def partition_of(self, key: K) -> int:
        """The partition a key belongs to (the source topic's partitioner), remembered per key.

        Always from the key: an event's own partition is not taken on trust (the agent's
        source checks it, and reroutes or dead-letters a record found elsewhere).
        """
        cached = self._partition_cache.get(key)
        if cached is not None:
            return cached
        if self._partitions is None:
            raise TableError(f"table {self.name!r} is not started: use it while the app runs")
        partition = default_partitioner(self._key_codec.encode(key), self._partitions)
        if len(self._partition_cache) < 100_000:
            self._partition_cache[key] = partition
        return partition

    def _held(self, key: K) -> tuple[int, MutableMapping[K, V]]:
        partition = self.partition_of(key)
        data = self._data.get(partition)
        if data is None:
            raise TableError(
                f"key {key!r} of table {self.name!r} is in partition {partition}, which this "
                f"worker does not hold (it holds {sorted(self._data)}); read it on the worker "
                "that does, or through a global view"
            )
        return partition, data

    def __getitem__(self, key: K) -> V:
        partition = self._partition_cache.get(key)
        data = None if partition is None else self._data.get(partition)
        if data is None:
            _, data = self._held(key)
        value = data.get(key, _MISSING)
        if value is _MISSING:
            if self.default is None:
                raise KeyError(key)
            return self.default()
        return value  # type: ignore[no-any-return]

    def get(self, key: K, default: V | None = None) -> V | None:
        _, data = self._held(key)
        return data.get(key, default)

    def __contains__(self, key: object) -> bool:
        try:
            _, data = self._held(key)  # type: ignore[arg-type]
        except TableError:
            return False
        return key in data

    def __len__(self) -> int:
        return sum(len(d) for d in self._data.values())

    def __iter__(self) -> Iterator[K]:
        for data in self._data.values():
            yield from data

    def items(self) -> Iterator[tuple[K, V]]:
        for data in self._data.values():
            yield from data.items()

    def partition_data(self, partition: int) -> MutableMapping[K, V]:
        """The values of a partition this worker holds, changed in place by the windowed
        table built on this one (without a changelog write: restoring derives the same)."""
        return self._data[partition]

    def position(self, key: K) -> int | None:
        """The source position up to which ``key``'s value includes the events."""
        partition, _ = self._held(key)
        return self._positions[partition].get(key)

    # ------------------------------------------------------------ writing
    def __setitem__(self, key: K, value: V) -> None:
        self._write(key, value)

    def __delitem__(self, key: K) -> None:
        self._write(key, _MISSING)

    def will_apply(self, key: K) -> bool:
        """Whether a write to ``key`` now would apply: ``False`` for an event seen again.

        For side effects that must follow the state exactly (send only what is new).
        """
        now = current.get()
        if now is None:
            return False
        if key in self._undos.get(now.source, ()):
            return True
        partition = self.partition_of(key)
        done = self._positions.get(partition, {}).get(key)
        if done is not None and now.offset < done:
            return False
        origins = self._origins.get(partition, {}).get(key)
        if now.origin is not None and origins is not None:
            upstream, offset = now.origin
            return offset >= origins.get(upstream, 0)
        return True

    def writable(self, now: Current | None) -> Current:
        """``now``, checked: the event of the agent that changes this table."""
        if now is None or now.topic != self.source.name:
            raise TableError(
                f"table {self.name!r} changes only inside an agent of its source topic "
                f"{self.source.name!r} (that is what makes its state exactly-once)"
            )
        if now.source.agent != self.writer and self.writer is None:
            raise TableError(
                f"table {self.name!r} has no agent that changes it (the agents of "
                f"{self.source.name!r} name other tables in tables=): name the one that does, "
                f"@app.agent(topic, tables=[{self.name}])"
            )
        if now.source.agent != self.writer:
            raise TableError(
                f"table {self.name!r} is changed by agent {self.writer!r}, not "
                f"{now.source.agent!r}: one agent changes a table (that is what keeps it "
                "exactly once), the others may read it; name the agent that changes it with "
                "@app.agent(topic, tables=[...])"
            )
        return now

    def _write(self, key: K, value: Any) -> None:
        now = current.get()
        if now is None or now.topic != self.source.name or now.source.agent != self.writer:
            now = self.writable(now)  # raises, saying why
        partition = self._partition_cache.get(key)
        if partition is None:
            partition = self.partition_of(key)
        data = self._data.get(partition)
        if data is None:
            self._held(key)  # raises, saying which partitions this worker holds
            return
        if partition != now.partition:
            raise TableError(
                f"key {key!r} belongs to partition {partition} of table {self.name!r} but the "
                f"event came from partition {now.partition}: re-key the stream first (send it "
                "through a topic keyed by the table's key)"
            )
        positions = self._positions[partition]
        origin = now.origin
        undo = self._undos.get(now.source)
        if undo is None:
            undo = self._undos[now.source] = {}
        if key not in undo:  # the first write since the savepoint
            if self._seen(partition, positions, key, now.offset, origin):
                return
            undo[key] = (
                partition,
                data.get(key, _MISSING),
                positions.get(key),
                self._origins[partition].get(key),
            )
        self._change(partition, data, positions, key, value, now.offset, origin)

    def _seen(
        self,
        partition: int,
        positions: MutableMapping[K, int],
        key: K,
        offset: int,
        origin: tuple[int, int] | None,
    ) -> bool:
        """Whether ``key``'s value already holds the event at ``offset`` (from ``origin``)."""
        done = positions.get(key)
        if done is not None and offset < done:
            return True  # an event seen again after a restart: the value already holds it
        if origin is not None:
            origins = self._origins[partition].get(key)
            if origins is not None and origin[1] < origins.get(origin[0], 0):
                return True  # forwarded twice (the forwarder crashed before committing)
        return False

    def _change(
        self,
        partition: int,
        data: MutableMapping[K, V],
        positions: MutableMapping[K, int],
        key: K,
        value: Any,
        offset: int,
        origin: tuple[int, int] | None,
    ) -> None:
        """Set (``_MISSING``: delete) ``key`` for the event at ``offset``, to be flushed."""
        if origin is not None:
            upstream, upstream_offset = origin
            origins = self._origins[partition]
            origins[key] = {**(origins.get(key) or {}), upstream: upstream_offset + 1}
        if value is _MISSING:
            data.pop(key, None)
        else:
            data[key] = value
        after = offset + 1
        positions[key] = after
        dirty = self._dirty.get(partition)
        if dirty is None:
            dirty = self._dirty[partition] = {}
        dirty[key] = after

    # ------------------------------------------------------------ folding
    @overload
    def fold(self, fn: FoldFunction[V, K], /) -> FoldFunction[V, K]: ...

    @overload
    def fold(
        self,
        *,
        name: str | None = None,
        concurrency: int = 1,
        on_error: ErrorPolicy = "raise",
        retries: int = 0,
        backoff: float = 0.5,
        on_misplaced: MisplacedPolicy | None = None,
    ) -> Callable[[FoldFunction[V, K]], FoldFunction[V, K]]: ...

    def fold(
        self,
        fn: FoldFunction[V, K] | None = None,
        *,
        name: str | None = None,
        concurrency: int = 1,
        on_error: ErrorPolicy = "raise",
        retries: int = 0,
        backoff: float = 0.5,
        on_misplaced: MisplacedPolicy | None = None,
    ) -> FoldFunction[V, K] | Callable[[FoldFunction[V, K]], FoldFunction[V, K]]:
        """Declare the agent that folds this table from its source: for each event,
        ``fn(value, event)`` returns its key's new value (``None`` deletes the key).

        ``value`` is what the table holds for the event's key, or ``default()``. ``fn`` is a
        plain function that only computes: it returns the new value and changes nothing
        (``value`` included), so a failing event leaves no trace and the state is a
        deterministic fold of the log. The agent applies whole batches in one loop, faster
        than ``table[key] = ...`` in an ``async for``, with the same guarantees
        (exactly once, restore, rebalancing). The arguments are :meth:`App.agent`'s (the
        agent's name is the function's by default).

        Example:
            >>> @totals.fold
            ... def add(total: int, sale: Event[str, int]) -> int:
            ...     return total + sale.value
        """

        def declare(fn: FoldFunction[V, K]) -> FoldFunction[V, K]:
            if not callable(fn) or inspect.iscoroutinefunction(fn):
                raise DeclarationError(
                    f"table {self.name!r}: a fold is a plain function (value, event) -> new "
                    "value; for code that awaits, write an agent that sets the table"
                )
            if self.default is None:
                raise DeclarationError(
                    f"table {self.name!r}: a fold starts each key from the table's default; "
                    "declare the table with default=... (for example default=int)"
                )
            agent = name or str(getattr(fn, "__name__", "fold"))
            folder = self._folder(fn)

            async def run(stream: EventStream) -> None:
                source = stream._source  # the stream's own cursor
                while True:
                    source.fold_ready(folder)  # the batch, in one loop
                    event = await source.next()  # a record to set aside, or the next batch
                    if event is None:
                        return
                    now = current.get()
                    folder(event, None if now is None else now.origin)

            self.app.agent(
                self.source,
                name=agent,
                concurrency=concurrency,
                on_error=on_error,
                retries=retries,
                backoff=backoff,
                on_misplaced=on_misplaced,
                tables=[self],
            )(run)
            return fn

        return declare if fn is None else declare(fn)

    def _folder(
        self, fn: FoldFunction[V, K]
    ) -> Callable[[Event[K, Any], tuple[int, int] | None], None]:
        """``apply(event, origin)``: fold one event of the source into the table."""
        default = self.default
        assert default is not None  # checked when the fold was declared
        data_of, positions_of = self._data, self._positions

        def apply(event: Event[K, Any], origin: tuple[int, int] | None) -> None:
            key = event.key
            partition = event.partition  # the key's: the source checked it
            data = data_of.get(partition)
            if data is None or key is None:
                raise self._unfoldable(event)
            positions = positions_of[partition]
            offset = event.offset
            if origin is not None:  # forwarded: _seen and _change keep the origins too
                if self._seen(partition, positions, key, offset, origin):
                    return
                old = data.get(key, _MISSING)
                value = fn(default() if old is _MISSING else old, event)
                new = _MISSING if value is None else value
                self._change(partition, data, positions, key, new, offset, origin)
                return
            # the common case, _seen and _change inlined (this runs once per event)
            done = positions.get(key)
            if done is not None and offset < done:
                return  # seen again after a restart: the value already holds it
            old = data.get(key, _MISSING)
            value = fn(default() if old is _MISSING else old, event)
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
            positions[key] = after = offset + 1
            dirty = self._dirty.get(partition)
            if dirty is None:
                dirty = self._dirty[partition] = {}
            dirty[key] = after

        return apply

    def _unfoldable(self, event: Event[K, Any]) -> TableError:
        where = f"{event.topic}[{event.partition}]@{event.offset}"
        if event.key is None:
            return TableError(
                f"table {self.name!r} folds keyed events, and {where} has no key: send it "
                "with one, or declare the fold with on_error='skip' or 'dead_letter'"
            )
        return TableError(
            f"table {self.name!r} does not hold partition {event.partition} for {where} "
            f"(it holds {sorted(self._data)})"
        )

    # ------------------------------------------------------------ batch participant
    def savepoint(self, source: Source) -> None:
        undo = self._undos.get(source)
        if undo:
            undo.clear()

    def rollback(self, source: Source) -> None:
        """Undo what the events of ``source`` changed since its savepoint (only those: the
        other members of the agent handle other partitions)."""
        for key, (partition, old, old_position, old_origins) in self._undos.pop(source, {}).items():
            data = self._data.get(partition)
            if data is None:
                continue  # revoked meanwhile: its changes were dropped with it
            positions = self._positions[partition]
            if old_origins is None:
                self._origins[partition].pop(key, None)
            else:
                self._origins[partition][key] = old_origins
            if old is _MISSING:
                data.pop(key, None)
            else:
                data[key] = old
            if old_position is None:
                positions.pop(key, None)
                self._dirty.get(partition, {}).pop(key, None)
            else:
                positions[key] = old_position

    async def flush(self, source: Source, positions: dict[TopicPartition, int]) -> None:
        """Write the keys the events of ``source`` changed to the changelog, each with its
        source position: those of the partitions of ``positions`` (the batch's), not another
        member's, whose events may still be rolled back."""
        self._undos.pop(source, None)
        mine = {tp.partition for tp in positions if tp.topic == self.source.name}
        dirty = {p: self._dirty.pop(p) for p in mine & self._dirty.keys()}
        for partition, keys in dirty.items():
            data = self._data.get(partition)
            if data is None or not keys:
                continue  # revoked meanwhile (the new owner replays these events), or rolled back
            records = []
            origins = self._origins[partition]
            stamp: tuple[tuple[str, bytes], ...] = ()
            if partition in self.stream_times:
                stamp = ((STREAM_TIME_HEADER, str(self.stream_times[partition]).encode()),)
            for key, position in keys.items():
                value = data.get(key, _MISSING)
                headers = ((SOURCE_HEADER, str(position).encode()), *stamp)
                if key in origins:
                    headers += ((ORIGINS_HEADER, json.dumps(origins[key])),)
                records.append(
                    ProducerRecord(
                        None if value is _MISSING else self._value_codec.encode(value),
                        self._key_codec.encode(key),
                        partition,
                        headers,
                    )
                )
            written = await self.app.broker.produce_batch(self.changelog.name, records)
            self._changelog_next[partition] = written[-1].offset + 1
        if self._store is not None and dirty:
            self._store.commit({p: self._changelog_next[p] for p in dirty if p in self._data})

    # ------------------------------------------------------------ assignment
    async def start(self) -> None:
        """The app starts: begin as a fresh worker would (an app may run again after it
        stopped; what an earlier run held comes back from the changelog, or the local store)."""
        for state in (
            self._data,
            self._positions,
            self._dirty,
            self._origins,
            self._partition_cache,
            self._changelog_next,
            self._standby,
            self._rewind,
            self.stream_times,  # cleared, not replaced: the windowed table shares it
        ):
            state.clear()
        self._undos.clear()
        spec = await self.app.broker.describe_topic(self.source.name)
        self._partitions = spec.partitions
        if self.store_kind == "sqlite" and self._store is None:
            self._store = SqliteStore(
                self.app.state_dir / self.app.name / f"{self.name}.db",
                encode_key=self._key_codec.encode,
                decode_key=self._key_codec.decode,
                encode_value=self._value_codec.encode,
                decode_value=self._value_codec.decode,
            )

    async def on_assigned(self, tps: frozenset[TopicPartition]) -> None:
        for tp in sorted(tps):
            if tp.topic == self.source.name and tp.partition not in self._data:
                await self._restore(tp.partition)

    async def on_revoked(self, tps: frozenset[TopicPartition]) -> None:
        for tp in tps:
            if tp.topic == self.source.name:
                if self.standby and self._store is None and tp.partition in self._data:
                    p = tp.partition
                    if self._dirty.get(p):
                        # changes not in the changelog yet (their events are not committed):
                        # a copy holding them would run ahead of the log, and taking the
                        # partition back would skip those events without ever writing them
                        # down; fold the partition again from the changelog instead
                        self._standby.pop(p, None)
                        begin = await self.app.broker.beginning_offsets(self.changelog.name)
                        self._rewind[p] = begin.get(p, 0)
                    else:
                        self._standby[p] = PartitionState(
                            self._data[p],
                            self._positions[p],
                            self._origins[p],
                            self._changelog_next.get(p, 0),
                        )
                        self._standby[p].stream_time = self.stream_times.get(p)
                        # the follower skipped this partition while it was ours: read it
                        # again from where the copy ends
                        self._rewind[p] = self._changelog_next.get(p, 0)
                if self._store is not None and tp.partition in self._data:
                    self._store.release(tp.partition, unflushed=bool(self._dirty.get(tp.partition)))
                self._data.pop(tp.partition, None)
                self._positions.pop(tp.partition, None)
                self._origins.pop(tp.partition, None)
                self._dirty.pop(tp.partition, None)
                self.stream_times.pop(tp.partition, None)

    async def load(self, partitions: Iterable[int] | None = None) -> None:
        """Fold changelog partitions into this table (all by default) as a read-only replica.

        For workers that read state they do not own (a dashboard, a test's check); the owners'
        copies are restored on assignment without this call.
        """
        if self._partitions is None:
            raise TableError(f"table {self.name!r} is not started: use it while the app runs")
        for partition in sorted(range(self._partitions) if partitions is None else partitions):
            await self._restore(partition)

    async def _restore(self, partition: int) -> None:
        """Fold the changelog partition: for each key, the record with the highest position.

        With the sqlite store, the stored state is the starting point and only the changelog
        after the position it records is read.
        """
        broker = self.app.broker
        name = self.changelog.name
        end = (await broker.end_offsets(name))[partition]
        begin = (await broker.beginning_offsets(name))[partition]
        warm = self._standby.pop(partition, None)
        state = warm if warm is not None and self._store is None else self._open_state(partition)
        start = max(begin, state.changelog_next) if warm is not None else begin
        if self._store is not None:
            if state.changelog_next > end:  # the changelog was recreated: the file is stale
                self._store.reset(partition)
                state = self._open_state(partition)
            start = max(begin, state.changelog_next)
        data, positions, origins = state.data, state.positions, state.origins
        stream_time = state.stream_time if start > begin else None
        read = 0
        tp = TopicPartition(name, partition)
        if end > start:
            async with broker.subscribe(
                name, partitions=[partition], start={partition: start}, max_batch=5000
            ) as sub:
                while (sub.position(tp) or start) < end:
                    batch = await sub.getmany(timeout=1.0)
                    for record in batch:
                        read += 1
                        if record.key is None:
                            continue
                        key = self._key_codec.decode(record.key)
                        position, upstream = _positions_in(record.headers)
                        if self._keeps_stream_time:
                            stream_time = _later(stream_time, record.headers)
                        if positions.get(key, -1) > position:
                            continue
                        positions[key] = position
                        if upstream is not None:
                            origins[key] = upstream
                        if record.value is None:
                            data.pop(key, None)
                        else:
                            data[key] = self._value_codec.decode(record.value)
                    if batch and self.on_restore is not None and (sub.position(tp) or start) < end:
                        # the offsets still to read: an upper bound of the records (compaction
                        # and NATS sequences leave gaps), so the last report below may be lower
                        self.on_restore(self, partition, read, max(read, end - start))
        if self.on_restore is not None:
            self.on_restore(self, partition, read, read)  # restored: all there was to read
        self._data[partition] = data
        self._positions[partition] = positions
        self._origins[partition] = origins
        if stream_time is not None:
            self.stream_times[partition] = stream_time
        self._changelog_next[partition] = max(end, state.changelog_next)
        if self._store is not None:
            self._store.commit({partition: self._changelog_next[partition]})
        log.info(
            "table %s: partition %d restored from %s, %d records read",
            self.name,
            partition,
            "a warm or local copy" if start > begin else "the changelog",
            read,
        )

    async def follow_standby(self) -> None:
        """Keep warm copies of the partitions this worker does not own, until cancelled.

        A partition this worker then gains is restored from its warm copy and only the changelog
        after it: a takeover costs the tail, not the whole partition.
        """
        name = self.changelog.name
        async with self.app.broker.subscribe(name, max_batch=5000) as sub:
            while True:
                rewind, self._rewind = self._rewind, {}
                for p, offset in rewind.items():
                    sub.seek(TopicPartition(name, p), offset)
                for record in await sub.getmany(timeout=0.5):
                    p = record.partition
                    if p in self._data or p in self._rewind:
                        continue  # owned here (the owner's state is the truth), or to be reread
                    warm = self._standby.get(p)
                    if warm is None:
                        warm = self._standby[p] = PartitionState({}, {}, {})
                    warm.changelog_next = record.offset + 1
                    if record.key is None:
                        continue
                    key = self._key_codec.decode(record.key)
                    position, upstream = _positions_in(record.headers)
                    if self._keeps_stream_time:
                        warm.stream_time = _later(warm.stream_time, record.headers)
                    if warm.positions.get(key, -1) > position:
                        continue
                    warm.positions[key] = position
                    if upstream is not None:
                        warm.origins[key] = upstream
                    if record.value is None:
                        warm.data.pop(key, None)
                    else:
                        warm.data[key] = self._value_codec.decode(record.value)

    def _open_state(self, partition: int) -> PartitionState[K, V]:
        if self._store is None:
            return PartitionState({}, {}, {})
        return self._store.open(partition)

    def close(self) -> None:
        """Close the local store (the app does this when it stops)."""
        if self._store is not None:
            self._store.close()
            self._store = None


def _positions_in(headers: tuple[tuple[str, bytes], ...]) -> tuple[int, dict[int, int] | None]:
    """The source position and, behind a repartition, the upstream positions of a record."""
    position, upstream = -1, None
    for name, value in headers:
        if name == SOURCE_HEADER:
            position = int(value)
        elif name == ORIGINS_HEADER:
            upstream = {int(p): int(o) for p, o in json.loads(value).items()}
    return position, upstream


def _later(stream_time: int | None, headers: tuple[tuple[str, bytes], ...]) -> int | None:
    """The higher of ``stream_time`` and the stream time a changelog record carries."""
    for name, value in headers:
        if name == STREAM_TIME_HEADER:
            stamped = int(value)
            return stamped if stream_time is None or stamped > stream_time else stream_time
    return stream_time
