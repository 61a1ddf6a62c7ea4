"""Streams: what an agent iterates, and the operations that shape it.

A :class:`Stream` pulls batches from the agent's subscription on demand: there is no queue
between the log and the agent's code, so memory stays bounded by the subscription's buffer. A
batch is the unit of work: when the agent asks for the event after a batch, every participant
(tables) flushes what the batch changed and the batch's positions are committed. While more
records are ready at once, batches are held together for up to the app's ``commit_interval``
and flushed and committed as one (a key changed in each is written to its changelog once); as
soon as the log has nothing more ready, what is held is flushed, so an idle agent commits
promptly. If the agent fails, participants roll back to the failing event's savepoint and the
event is retried, skipped or dead-lettered.

A source also checks that each keyed record is on the partition its key belongs on, and
applies the agent's policy to one that is not (see :mod:`streams._placement`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from brokers import Headers, ProducerRecord, Record, StaleMemberError, Subscription, TopicPartition
from streams._context import Current
from streams._context import current as _current
from streams._errors import DecodeError
from streams._event import Event
from streams._placement import Placement, forwarded, passed_on, rerouted

if TYPE_CHECKING:
    from streams._global import GlobalTable
    from streams._topic import Topic

__all__ = ("BatchParticipant", "Stream")

log = logging.getLogger("neuroplex.agents")

T = TypeVar("T")
U = TypeVar("U")
W = TypeVar("W")

_IDLE_WAKE = 0.5
_FOREIGN = (-1, -1)  # Source._origin: a record another agent rerouted, not this one's
_new_tuple = tuple.__new__
_set_current = _current.set


class BatchParticipant(Protocol):
    """State that changes with a batch of events (tables)."""

    async def flush(self, source: Source, positions: dict[TopicPartition, int]) -> None:
        """Make the changes of ``source``'s batch durable; ``positions`` are its next-offsets."""
        ...

    def savepoint(self, source: Source) -> None:
        """An event of ``source`` is about to be handled: remember the state to roll back to."""
        ...

    def rollback(self, source: Source) -> None:
        """Undo every change the events of ``source`` made since its last savepoint."""
        ...


class Source:
    """The cursor over one subscription's batches that a Stream reads from."""

    def __init__(
        self,
        topic: Topic[Any, Any],
        sub: Subscription,
        *,
        dead_letter: Callable[[Record, str], Awaitable[None]],
        participants: list[BatchParticipant],
        commit_interval: float = 0.0,
        placement: Placement | None = None,
        reroute: Callable[[list[ProducerRecord]], Awaitable[object]] | None = None,
        agent: str | None = None,
    ) -> None:
        self.topic = topic
        self.sub = sub
        self.agent = agent  # the agent reading it: the one tables accept changes from
        self._dead_letter = dead_letter
        # misplaced keyed records: checked unless the agent accepts them (placement None)
        self._placement = placement
        self._reroute = reroute
        self._rerouted: list[ProducerRecord] = []  # sent before the batch's commit
        self._group = sub.group
        self._participants = participants
        self._commit_interval = commit_interval
        # next-offsets of the events of earlier batches, handed out but not yet committed
        self._held: dict[TopicPartition, int] = {}
        self._held_since = 0.0
        self._batch: list[Record] = []
        self._index = 0
        self._skip: set[int] = set()
        self._forgotten: set[int] = set()  # of partitions revoked: not this member's to commit
        self.current: int | None = None  # batch index of the event last yielded
        self._mark = 0  # batch index of the savepoint
        self.closed = False
        self.stopping = False  # set by the app to end the stream at the next batch boundary
        self.lost: frozenset[TopicPartition] = frozenset()  # revoked partitions, see forget()

    def stop(self) -> None:
        """End the stream at the next batch boundary: the batch in hand is finished (flushed
        and committed) first; a source idling on a quiet log stops at once."""
        self.stopping = True
        self.sub.wakeup()

    @property
    def current_record(self) -> Record | None:
        return None if self.current is None else self._batch[self.current]

    def ready(self, savepoint: bool = True) -> Event[Any, Any] | None:
        """The next event of the fetched batch, without waiting; ``None`` when there is none.

        Also ``None`` before a record that needs the log (to dead-letter or reroute it):
        :meth:`next` handles that one. The hot path: no coroutine per event.
        """
        batch = self._batch
        count = len(batch)
        i = self._index
        skip = self._skip
        placement = self._placement
        decode = self.topic.decode
        while i < count:
            if skip and i in skip:
                i += 1
                continue
            record = batch[i]
            origin = None
            if record.headers:
                origin = self._origin(record.headers)
                if origin is _FOREIGN:
                    skip.add(i)
                    i += 1
                    continue
            key = record.key
            if placement is not None and key is not None:
                home = placement.homes.get(key)
                if home is None:
                    home = placement.home(key)
                if home != record.partition:
                    self._index = i
                    return None  # misplaced: next() sends it on
            try:
                event = decode(record)
            except DecodeError:
                self._index = i
                return None  # next() dead-letters it
            self._index = i + 1
            self.current = i
            if savepoint:
                self._mark = i
                for participant in self._participants:
                    participant.savepoint(self)
            _set_current(
                _new_tuple(  # Current(...), without its __new__
                    Current,
                    (
                        self,
                        record.topic,
                        record.partition,
                        record.offset,
                        record.timestamp,
                        event,
                        origin,
                    ),
                )
            )
            return event
        self._index = i
        return None

    def _origin(self, headers: Headers) -> tuple[int, int] | None:
        """The upstream position a record carries (a repartition's, or this agent's reroute:
        tables recognise a repeated forward by it); ``_FOREIGN`` for another agent's reroute
        of a record this one handled where it landed, which it skips."""
        origin, by = forwarded(headers)
        if by is not None and by != self._group:
            return _FOREIGN
        if by is None and not self.topic.repartition:
            return None  # elsewhere only this agent's reroutes have one
        return origin

    def fold_ready(self, apply: Callable[[Event[Any, Any], tuple[int, int] | None], None]) -> None:
        """Hand every ready event of the fetched batch to ``apply(event, origin)``, without
        waiting: the hot path of a fold (:meth:`Table.fold`), a whole batch in one loop.

        The checks are :meth:`ready`'s; what it does per event for code that may change any
        table (a savepoint, the current event) is not needed by ``apply``, which changes its
        state only once the fold function returned. It stops before a record :meth:`next`
        must handle; if ``apply`` raises, the failing event is the current one, as if
        :meth:`ready` had handed it out, for the agent's error policy.
        """
        batch = self._batch
        count = len(batch)
        i = self._index
        if i >= count:
            return
        skip = self._skip
        placement = self._placement
        homes = {} if placement is None else placement.homes
        topic = self.topic
        decode, parse_key, parse_value = topic.decode, topic.parse_key, topic.parse_value
        _set_current(None)  # a fold function changes no table itself
        start, stop = i, count
        try:
            for i in range(start, count):
                if skip and i in skip:
                    continue
                record = batch[i]
                # one unpacking instead of an attribute lookup per field (runs once per event)
                name, partition, offset, timestamp, key, value, headers = record
                origin = None
                if headers:
                    origin = self._origin(headers)
                    if origin is _FOREIGN:
                        skip.add(i)
                        continue
                if placement is not None and key is not None:
                    home = homes.get(key)
                    if home is None:
                        home = placement.home(key)
                    if home != partition:
                        stop = i
                        break  # misplaced: next() sends it on
                try:  # Topic.decode's hot path, inlined
                    event = _new_tuple(
                        Event,
                        (
                            None if key is None else parse_key(key),
                            None if value is None else parse_value(value),
                            name,
                            partition,
                            offset,
                            timestamp,
                            headers,
                        ),
                    )
                except Exception:  # noqa: BLE001 - decoded again, to say what is wrong
                    try:
                        event = decode(record)
                    except DecodeError:
                        stop = i
                        break  # next() dead-letters it
                apply(event, origin)
        except BaseException:
            self._index = i + 1
            self.current = self._mark = i
            raise
        self._index = stop

    async def next(
        self, timeout: float | None = None, *, savepoint: bool = True, finish: bool = True
    ) -> Event[Any, Any] | None:
        """The next event; ``None`` when ``timeout`` passes or the source ends.

        With ``savepoint`` (the default) the state before this event is what a failure rolls
        back to; ``take`` sets one savepoint for a whole list. When the batch runs out, it is
        finished (flushed and committed) and the next one fetched; without ``finish``, ``None``
        comes instead (``take``, whose list still holds the batch's events).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            while self._index < len(self._batch):
                event = self.ready(savepoint)
                if event is not None:
                    return event
                if self._index >= len(self._batch):
                    break
                # ready() stopped before a record it cannot hand out: place or dead-letter it
                i = self._index
                self._index = i + 1
                if i in self._skip:
                    continue
                record = self._batch[i]
                self._skip.add(i)
                placement = self._placement
                if placement is not None and record.key is not None:
                    home = placement.home(record.key)
                    if home != record.partition:
                        await self._misplaced(placement, record, home)
                        continue
                try:
                    self.topic.decode(record)
                except DecodeError as exc:
                    await self._dead_letter(record, exc.reason)
            if self.closed or not finish:
                return None
            if self._batch and not self.stopping and self._may_hold(loop.time()):
                # more is ready at once and the interval has not passed: keep going, so one
                # flush and one commit cover several batches (a key changed in each is
                # written to its changelog once)
                self._hold()  # before the fetch: a revocation during it forgets these
                more = await self.sub.getmany(timeout=0)
                if more:
                    self._take(more)
                    continue
            await self.finish_batch()
            if self.stopping:
                self.closed = True
                return None
            # wake at least twice a second to notice a stop request while the log is idle
            remaining = _IDLE_WAKE if deadline is None else max(0.0, deadline - loop.time())
            batch = await self.sub.getmany(timeout=min(remaining, _IDLE_WAKE))
            if not batch:
                if self.sub_closed():
                    self.closed = True
                    return None
                if self.stopping or (deadline is not None and loop.time() >= deadline):
                    return None
                continue
            self._take(batch)

    async def _misplaced(self, placement: Placement, record: Record, home: int) -> None:
        """A keyed record on another partition than its key's: never fold it here."""
        if placement.policy == "dead_letter" or self._reroute is None or self._group is None:
            await self._dead_letter(record, placement.reason(record, home))
            return
        # rerouted before the batch's positions are committed: a crash in between sends the
        # copy again, and tables recognise it by its origin
        self._rerouted.append(rerouted(record, home, self._group))
        log.warning(
            "%s[%d]@%d: key %r belongs on partition %d, rerouted there",
            record.topic,
            record.partition,
            record.offset,
            record.key,
            home,
        )

    def _may_hold(self, now: float) -> bool:
        if self._commit_interval <= 0:
            return False
        if not self._held:
            self._held_since = now
        return now - self._held_since < self._commit_interval

    def _hold(self) -> None:
        """Keep the finished batch's positions for the next commit; the batch is done."""
        _next_offsets(self.topic.name, self._batch, self._held, self._forgotten)
        self._take([])

    def _take(self, batch: list[Record]) -> None:
        self._batch, self._index, self._skip, self.current = batch, 0, set(), None
        self._forgotten = set()
        self._mark = 0

    def forget(self, tps: frozenset[TopicPartition]) -> None:
        """Partitions taken away: their held positions are not this member's to commit.

        Their tables dropped the changes too; the new owner handles the events again. A
        ``take`` list filling across fetches (:meth:`extend`) may hold events of them: they
        are skipped from here on, and ``lost`` tells the list to drop them.
        """
        for tp in tps:
            self._held.pop(tp, None)
        for i, record in enumerate(self._batch):
            if TopicPartition(record.topic, record.partition) in tps:
                self._skip.add(i)
                self._forgotten.add(i)
        self.lost |= tps

    def savepoint(self, index: int | None = None) -> None:
        """Failures from here on roll back to this point (the next event by default)."""
        self._mark = self._index if index is None else index
        for participant in self._participants:
            participant.savepoint(self)

    def failed_records(self) -> list[Record]:
        """The records handed out since the savepoint: what a failure is about."""
        if self.current is None:
            return []
        return [self._batch[i] for i in range(self._mark, self.current + 1) if i not in self._skip]

    def batch_exhausted(self) -> bool:
        """True when every event of the fetched batch was handed out."""
        return self._index >= len(self._batch)

    async def extend(self, timeout: float) -> bool:
        """Fetch more records into the batch being handed out, without finishing it.

        For ``take``: the batch's events are still in the agent's hands, so it is neither
        flushed nor committed; the records fetched join it, and a failure rolls back to the
        savepoint and hands out the events of both again. ``False`` when nothing came within
        ``timeout`` seconds or the source is stopping.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.stopping or self.closed or self.sub_closed()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # wake at least twice a second to notice a stop request
            more = await self.sub.getmany(timeout=min(remaining, _IDLE_WAKE))
            if more:
                self._batch = [*self._batch, *more]
                return True
        return False

    def sub_closed(self) -> bool:
        return bool(getattr(self.sub, "closed", False))

    async def finish_batch(self) -> None:
        """Flush participants, then commit the positions of the events handed out."""
        positions, self._held = self._held, {}
        # only what was handed out: an agent that returns mid-batch leaves the rest unread;
        # and not what a revocation took away unhandled (given back at once, as Kafka's eager
        # rebalance does, the partition resumes from its last commit: those events come again)
        _next_offsets(self.topic.name, self._batch[: self._index], positions, self._forgotten)
        if not positions:
            self._take([])
            return
        if self._rerouted and self._reroute is not None:
            copies, self._rerouted = self._rerouted, []
            await self._reroute(copies)
        for participant in self._participants:
            await participant.flush(self, positions)
        if self.sub.group is not None:
            owned = {tp: off for tp, off in positions.items() if tp in self.sub.assignment}
            if owned:
                try:
                    await self.sub.commit(owned)
                except StaleMemberError as exc:
                    # the group rebalanced under this batch: whoever owns these partitions now
                    # handles its events again from the last commit, and tables skip what they
                    # already hold; nothing is lost and nothing is counted twice
                    log.info("batch not committed, the group moved on: %s", exc.reason)
        self._take([])

    def rewind(self, *, skip: bool) -> None:
        """Roll participants back to the savepoint; hand its events out again unless ``skip``."""
        for participant in self._participants:
            participant.rollback(self)
        if skip and self.current is not None:
            self._skip.update(range(self._mark, self.current + 1))
        self._index = self._mark
        self.current = None


def _next_offsets(
    topic: str, records: list[Record], into: dict[TopicPartition, int], left_out: set[int]
) -> None:
    """Record in ``into`` the next offset of each partition of ``records`` (all of ``topic``),
    leaving out the records at the indexes ``left_out``."""
    if left_out:
        last = {r.partition: r.offset for i, r in enumerate(records) if i not in left_out}
    else:
        last = {r.partition: r.offset for r in records}
    for partition, offset in last.items():
        into[TopicPartition(topic, partition)] = offset + 1


class Stream(Generic[T]):
    """An async iterable of items (events at the source) with pipeable operations.

    Example:
        >>> @app.agent(orders)
        ... async def big(stream: Stream[Event[str, Order]]) -> None:
        ...     async for order in stream.map(lambda e: e.value).filter(lambda o: o.total > 100):
        ...         print(order)
    """

    def __init__(
        self,
        items: Callable[[], AsyncIterator[T]],
        source: Source,
    ) -> None:
        self._items = items
        self._source = source

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items()

    def _derive(self, items: Callable[[], AsyncIterator[U]]) -> Stream[U]:
        return Stream(items, self._source)

    def map(self, fn: Callable[[T], U]) -> Stream[U]:
        """Each item transformed by ``fn``."""

        async def items() -> AsyncIterator[U]:
            async for item in self:
                yield fn(item)

        return self._derive(items)

    def filter(self, predicate: Callable[[T], bool]) -> Stream[T]:
        """Only the items for which ``predicate`` is true."""

        async def items() -> AsyncIterator[T]:
            async for item in self:
                if predicate(item):
                    yield item

        return self._derive(items)

    def enumerate(self, start: int = 0) -> Stream[tuple[int, T]]:
        """Items numbered from ``start``."""

        async def items() -> AsyncIterator[tuple[int, T]]:
            n = start
            async for item in self:
                yield n, item
                n += 1

        return self._derive(items)

    def through(self, topic: Topic[Any, Any]) -> Stream[T]:
        """Send each event's key and value to ``topic`` too, and pass the event on.

        For a stream of events; other agents of ``topic`` then see them (at least once). The
        headers go along, but for the framework's ``x-origin`` and ``x-rerouted-by``.
        """

        async def items() -> AsyncIterator[T]:
            async for item in self:
                if not isinstance(item, Event):
                    from streams._errors import DeclarationError

                    raise DeclarationError("through() forwards events: use it before map()")
                await topic.send(item.key, item.value, headers=passed_on(item.headers))
                yield item

        return self._derive(items)

    def join(self, table: GlobalTable[Any, W]) -> Stream[tuple[T, W | None]]:
        """Each event with the value ``table`` holds for its key (``None`` when absent).

        The table is a :class:`GlobalTable`, so the join works whatever partition the event is
        from. It reads the copy as it is when the event is handled (it lags the log a little;
        ``await table.catch_up()`` first for a strong read).
        """

        async def items() -> AsyncIterator[tuple[T, W | None]]:
            async for item in self:
                if not isinstance(item, Event):
                    from streams._errors import DeclarationError

                    raise DeclarationError("join() looks events up by key: use it before map()")
                yield item, table.get(item.key)

        return self._derive(items)


def source_stream(source: Source) -> EventStream:
    """The stream of events of a source, with ``take`` available on it."""

    async def items() -> AsyncIterator[Event[Any, Any]]:
        ready = source.ready
        while True:
            event = ready()
            if event is None:  # the batch is done (or holds a record to set aside): wait
                event = await source.next()
                if event is None:
                    return
            yield event

    return EventStream(items, source)


class Chunk(list[Event[Any, Any]]):
    """A list of events from ``take``; iterating it makes each event the current one.

    So state changed while looping over a chunk (``table[e.key] += 1``) is attributed to the
    right event's partition and position.
    """

    def __init__(self) -> None:
        super().__init__()
        self._contexts: list[Current | None] = []

    def add(self, event: Event[Any, Any]) -> None:
        self.append(event)
        self._contexts.append(_current.get())

    def drop(self, tps: frozenset[TopicPartition]) -> None:
        """Remove the events of ``tps`` (partitions this member lost while the list filled)."""
        kept = [
            (event, context)
            for event, context in zip(super().__iter__(), self._contexts, strict=True)
            if event.topic_partition not in tps
        ]
        self[:] = [event for event, _ in kept]
        self._contexts = [context for _, context in kept]

    def __iter__(self) -> Iterator[Event[Any, Any]]:
        for event, context in zip(super().__iter__(), self._contexts, strict=True):
            _current.set(context)
            yield event


class EventStream(Stream[Event[Any, Any]]):
    """The stream an agent receives: events, plus operations that need the source's clock."""

    def take(self, n: int, *, within: float) -> Stream[Chunk]:
        """Lists of up to ``n`` events: each is handed over when it holds ``n`` events or
        ``within`` seconds after its first event, whichever comes first.

        While a list fills, the events it holds are not committed: records fetched meanwhile
        join the batch being handed out, which is flushed and committed when the agent asks
        for the next list. So positions are never committed ahead of what the agent holds,
        and a failure retries (or skips, or dead-letters) the whole list.
        """
        if n < 1 or within <= 0:
            from streams._errors import DeclarationError

            raise DeclarationError(f"take needs n >= 1 and within > 0, got n={n}, within={within}")
        source = self._source

        async def items() -> AsyncIterator[Chunk]:
            loop = asyncio.get_running_loop()
            while True:
                source.savepoint()
                # the first event, as long as it takes (the source wakes to notice a stop)
                first = await source.next(savepoint=False)
                if first is None:
                    if source.closed:
                        return
                    continue
                chunk = Chunk()
                chunk.add(first)
                source.lost = frozenset()  # partitions revoked from here on drop from the list
                deadline = loop.time() + within
                while len(chunk) < n:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    event = await source.next(savepoint=False, finish=False)
                    if event is None:  # the batch ran out: wait for more, holding it
                        more = await source.extend(remaining)
                        if source.lost:
                            chunk.drop(source.lost)  # revoked meanwhile: no longer ours
                        if not (more and chunk):
                            break
                        continue
                    chunk.add(event)
                if chunk:
                    yield chunk

        return self._derive(items)
