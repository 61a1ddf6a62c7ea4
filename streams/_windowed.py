"""Windowed tables: a table whose value per key is the aggregates of that key's windows.

The table's key stays the source key, so partitioning and exactly-once state are those of
:class:`~streams.Table`; the value is ``{window: aggregate}`` for the key's open windows.
Windows close deterministically by stream time (see :mod:`streams._windows`); closed windows
are removed from the state and handed to ``on_close`` (and sent to ``emit_to``). Each
partition's stream time is part of the state: it goes to the changelog with the windows and
comes back with them when the partition is restored, so a worker that restarts (or takes the
partition over) closes exactly the windows a fresh fold of the input would.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from brokers import TopicPartition
from streams._context import current
from streams._table import Table, TableError
from streams._windows import Window, WindowSpec

if TYPE_CHECKING:
    from streams._app import App
    from streams._event import Event
    from streams._stream import Source
    from streams._topic import Topic

__all__ = ("ClosedWindow", "WindowSet", "WindowedTable")

K = TypeVar("K")
V = TypeVar("V")

Aggregates = dict[str, Any]  # "start:end" -> aggregate, as stored in the changelog


def _wkey(w: Window) -> str:
    return f"{w.start}:{w.end}"


def _window(s: str) -> Window:
    start, end = s.split(":")
    return Window(int(start), int(end))


class ClosedWindow(Generic[K, V]):
    """A window that closed: its key, bounds and final aggregate."""

    __slots__ = ("key", "value", "window")

    def __init__(self, key: K, window: Window, value: V) -> None:
        self.key = key
        self.window = window
        self.value = value

    def __repr__(self) -> str:
        return f"ClosedWindow({self.key!r}, {self.window}, {self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClosedWindow) and (self.key, self.window, self.value) == (
            other.key,
            other.window,
            other.value,
        )

    def __hash__(self) -> int:
        return hash((self.key, self.window))


class WindowSet(Generic[K, V]):
    """The windows of one key. ``table[key] += x`` adds ``x`` to every window of the event."""

    def __init__(self, table: WindowedTable[K, V], key: K) -> None:
        self._table = table
        self._key = key

    def windows(self) -> dict[Window, V]:
        """Every open window of the key with its aggregate, by start."""
        raw: Aggregates = self._table.state.get(self._key) or {}
        return dict(sorted((_window(w), v) for w, v in raw.items()))

    def value(self, at_ms: int) -> V:
        """The aggregate at event time ``at_ms`` (the oldest open window covering it)."""
        for window, value in self.windows().items():
            if window.start <= at_ms < window.end:
                return value
        return self._table.default()

    def current(self) -> V:
        """The aggregate at the time of the event being handled."""
        now = current.get()
        if now is None:
            raise TableError("current() needs an event: call it inside an agent, or use value()")
        time_of = self._table.time_of
        return self.value(now.timestamp if time_of is None else int(time_of(now.event)))

    def now(self) -> V:
        """The aggregate at the wall-clock time now."""
        return self.value(time.time_ns() // 1_000_000)

    def apply(self, fn: Callable[[V], V]) -> WindowSet[K, V]:
        """Change the aggregate of every window of the current event with ``fn``."""
        self._table.apply(self._key, fn)
        return self

    def __iadd__(self, other: Any) -> WindowSet[K, V]:
        return self.apply(lambda v: v + other)

    def __isub__(self, other: Any) -> WindowSet[K, V]:
        return self.apply(lambda v: v - other)

    def __imul__(self, other: Any) -> WindowSet[K, V]:
        return self.apply(lambda v: v * other)


@dataclass(slots=True)
class _Since(Generic[K, V]):
    """What one source's events did since its savepoint: stream times advanced, deadlines
    popped, windows closed (they reach on_close and emit_to only once their events are done,
    so an event that fails, and is retried or skipped, does not close a window twice) and
    late events counted."""

    times: list[tuple[int, int | None]] = field(default_factory=list)
    closed: list[tuple[int, tuple[int, str, Any]]] = field(default_factory=list)
    closing: list[ClosedWindow[K, V]] = field(default_factory=list)
    late: int = 0


class WindowedTable(Generic[K, V]):
    """Aggregates per key and event-time window. Declare with :meth:`App.windowed_table`."""

    def __init__(
        self,
        app: App,
        name: str,
        *,
        source: Topic[K, Any],
        window: WindowSpec,
        default: Callable[[], V],
        merge: Callable[[V, V], V] | None = None,
        on_close: Callable[[ClosedWindow[K, V]], None] | None = None,
        emit_to: Topic[K, Any] | None = None,
        close_on_wall_clock: bool = False,
        time_of: Callable[[Event[K, Any]], int] | None = None,
    ) -> None:
        if window.merges and merge is None:
            raise TableError("session windows merge: pass merge=, e.g. operator.add")
        self.spec = window
        self.default = default
        self.merge = merge
        self.on_close = on_close
        self.emit_to = emit_to
        self.close_on_wall_clock = close_on_wall_clock
        self.time_of = time_of
        self.state: Table[K, Aggregates] = Table(
            app, name, source=source, value_type=Aggregates, stream_time=True
        )
        self.late = 0
        self._deadlines: dict[int, list[tuple[int, str, Any]]] = {}
        # the state table keeps (and restores) each partition's stream time
        self._stream_time = self.state.stream_times
        # per source (a member of the writer agent), what its events did since its savepoint
        self._since: dict[Source, _Since[K, V]] = {}
        self._emitted: set[tuple[Any, Window]] = set()
        self._to_emit: list[ClosedWindow[K, V]] = []

    @property
    def name(self) -> str:
        return self.state.name

    def __getitem__(self, key: K) -> WindowSet[K, V]:
        return WindowSet(self, key)

    def __setitem__(self, key: K, value: WindowSet[K, V]) -> None:
        if not isinstance(value, WindowSet):
            raise TableError(
                f"windowed table {self.name!r}: change windows with table[key] += x or "
                "table[key].apply(fn), not by assigning a value"
            )
        # ``table[k] += x`` assigns the WindowSet back after __iadd__ applied it: nothing to do

    @property
    def writer(self) -> str | None:
        """The agent that changes it (see :meth:`App.agent`'s ``tables=``)."""
        return self.state.writer

    @writer.setter
    def writer(self, agent: str | None) -> None:
        self.state.writer = agent

    def apply(self, key: K, fn: Callable[[V], V]) -> None:
        now = self.state.writable(current.get())  # before any change: a refusal changes nothing
        partition = now.partition
        since = self._since.get(now.source)
        if since is None:
            since = self._since[now.source] = _Since()
        t = now.timestamp if self.time_of is None else int(self.time_of(now.event))
        stream_time = self._stream_time.get(partition)
        if stream_time is None or t > stream_time:
            since.times.append((partition, stream_time))
            self._stream_time[partition] = stream_time = t
        self._close_due(partition, stream_time, since)
        windows: Aggregates = dict(self.state.get(key) or {})
        grace = self.spec.grace_ms
        opened = []
        late = False
        for w in self.spec.windows_for(t):
            if w.end + grace <= stream_time:
                late = True  # the window closed already (a hopping event may fit others)
                continue
            opened.append(_wkey(w))
            if opened[-1] not in windows:
                windows[opened[-1]] = self.default()
                self._schedule(partition, w, key)
        if late:
            self.late += 1
            since.late += 1
        # sessions: the event goes in its own window, which then merges with those it meets;
        # the other kinds: the event counts in every open window that covers it
        targets = (
            opened
            if self.spec.merges
            else [wk for wk in windows if _window(wk).start <= t < _window(wk).end]
        )
        touched = bool(targets)
        for wk in targets:
            windows[wk] = fn(windows[wk])
        if touched and self.spec.merges:
            windows = self._merge_sessions(partition, key, windows)
        if touched:
            self.state[key] = windows

    def _merge_sessions(self, partition: int, key: K, windows: Aggregates) -> Aggregates:
        assert self.merge is not None
        merged: list[tuple[Window, Any]] = []
        for w, v in sorted((_window(k), v) for k, v in windows.items()):
            if merged and w.start < merged[-1][0].end:
                last_w, last_v = merged[-1]
                new = Window(last_w.start, max(last_w.end, w.end))
                merged[-1] = (new, self.merge(last_v, v))
                self._schedule(partition, new, key)
            else:
                merged.append((w, v))
        return {_wkey(w): v for w, v in merged}

    def _schedule(self, partition: int, window: Window, key: K) -> None:
        heap = self._deadlines.setdefault(partition, [])
        heapq.heappush(heap, (window.end + self.spec.grace_ms, _wkey(window), key))

    def _close_due(self, partition: int, stream_time: int, since: _Since[K, V]) -> None:
        heap = self._deadlines.get(partition)
        while heap and heap[0][0] <= stream_time:
            entry = heapq.heappop(heap)
            since.closed.append((partition, entry))
            _, wk, key = entry
            windows = self.state.get(key)
            if not windows or wk not in windows:
                continue  # merged into a session, or already closed
            remaining = dict(windows)
            value = remaining.pop(wk)
            since.closing.append(ClosedWindow(key, _window(wk), value))
            if remaining:
                self.state[key] = remaining
            else:
                del self.state[key]

    def _deliver(self, closing: list[ClosedWindow[K, V]]) -> None:
        """Hand windows that events now done closed to on_close and emit_to."""
        for closed in closing:
            marker = (closed.key, closed.window)
            if marker in self._emitted:
                self._emitted.discard(marker)  # already emitted on wall-clock time
                continue
            if self.on_close is not None:
                self.on_close(closed)
            if self.emit_to is not None:
                self._to_emit.append(closed)

    def close_by_wall_clock(self, now_ms: int | None = None) -> list[ClosedWindow[K, V]]:
        """The windows whose end + grace passed on the wall clock (for quiet streams).

        Each goes to ``on_close`` and is returned, for :meth:`emit` (the app does both once a
        second with ``close_on_wall_clock``). They stay in the state until stream time closes
        them (the fold stays deterministic) but are not handed out twice by this worker;
        after a restart they may be again.
        """
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        out: list[ClosedWindow[K, V]] = []
        grace = self.spec.grace_ms
        for key, windows in list(self.state.items()):
            for wk, value in windows.items():
                w = _window(wk)
                marker = (key, w)
                if w.end + grace <= now and marker not in self._emitted:
                    self._emitted.add(marker)
                    closed = ClosedWindow(key, w, value)
                    out.append(closed)
                    if self.on_close is not None:
                        self.on_close(closed)
        return out

    async def emit(self, windows: list[ClosedWindow[K, V]]) -> None:
        """Send closed windows to ``emit_to`` as ``{"start", "end", "value"}``, keyed alike."""
        if self.emit_to is not None and windows:
            await self.emit_to.send_many(
                (c.key, {"start": c.window.start, "end": c.window.end, "value": c.value})
                for c in windows
            )

    # -- batch participant (delegating to the state table, emitting closed windows first)
    def savepoint(self, source: Source) -> None:
        self.state.savepoint(source)
        since = self._since.pop(source, None)
        if since is not None and since.closing:
            self._deliver(since.closing)  # the events that closed them are done

    def rollback(self, source: Source) -> None:
        """Undo the failed events of ``source``: their windows' changes, stream time and
        closings (not those of another member's events, on other partitions)."""
        self.state.rollback(source)
        since = self._since.pop(source, None)
        if since is None:
            return
        for partition, previous in reversed(since.times):
            if previous is None:
                self._stream_time.pop(partition, None)
            else:
                self._stream_time[partition] = previous
        for partition, entry in since.closed:
            if partition in self._deadlines:  # still held: its windows must close again
                heapq.heappush(self._deadlines[partition], entry)
        self.late -= since.late

    async def flush(self, source: Source, positions: dict[TopicPartition, int]) -> None:
        since = self._since.pop(source, None)
        if since is not None:
            self._deliver(since.closing)
        emit, self._to_emit = self._to_emit, []
        await self.emit(emit)  # before the changelog: restore counts on it (_restored)
        await self.state.flush(source, positions)

    async def start(self) -> None:
        """The app starts: begin as a fresh worker would (see :meth:`Table.start`)."""
        self.late = 0
        self._since.clear()
        for state in (self._deadlines, self._emitted, self._to_emit):
            state.clear()
        await self.state.start()

    async def on_assigned(self, tps: frozenset[TopicPartition]) -> None:
        held = self.state.partitions
        await self.state.on_assigned(tps)
        for partition in sorted(self.state.partitions - held):
            self._restored(partition)

    async def load(self, partitions: Iterable[int] | None = None) -> None:
        """Fold changelog partitions (all by default) into this table as a read-only replica.

        For a worker that reads windows it does not own (a dashboard, a test's check).
        """
        await self.state.load(partitions)
        for partition in sorted(self.state.partitions):
            self._restored(partition)

    def _restored(self, partition: int) -> None:
        """A partition came back from the changelog: its windows wait for their deadlines.

        A window already closed at the restored stream time is dropped, not closed again:
        the worker that closed it emitted it before writing the changelog, and a changelog
        write cut short by a crash may have left the window in a key's last record.
        """
        heap: list[tuple[int, str, Any]] = []
        self._deadlines[partition] = heap
        stream_time = self._stream_time.get(partition)
        grace = self.spec.grace_ms
        data = self.state.partition_data(partition)
        for key, windows in list(data.items()):
            remaining = {
                wk: v
                for wk, v in windows.items()
                if stream_time is None or _window(wk).end + grace > stream_time
            }
            if len(remaining) < len(windows):
                if remaining:
                    data[key] = remaining  # what the fold holds; the next write records it
                else:
                    del data[key]
            heap.extend((_window(wk).end + grace, wk, key) for wk in remaining)
        heapq.heapify(heap)

    async def on_revoked(self, tps: frozenset[TopicPartition]) -> None:
        for tp in tps:
            if tp.topic == self.state.source.name:
                self._deadlines.pop(tp.partition, None)
        await self.state.on_revoked(tps)  # drops the partition's stream time too

    @property
    def source(self) -> Topic[K, Any]:
        return self.state.source
