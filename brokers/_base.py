"""Behaviour every backend shares: lifecycle, argument checks, partitioning, positions.

Backends subclass :class:`BaseBroker` and :class:`BaseSubscription` and fill in the
``_``-prefixed hooks; everything a user can get wrong is checked here once, the same way for
every backend.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import warnings
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self, cast

from brokers._errors import (
    BrokerUnavailableError,
    ClosedError,
    ConfigurationError,
    RecordTooLargeError,
    ResourceStateError,
)
from brokers._partitioner import _positive_hash
from brokers._protocol import AssignmentCallback
from brokers._settings import BrokerSettings
from brokers._types import (
    Position,
    ProducerRecord,
    Record,
    StartAt,
    TopicPartition,
    TopicSpec,
    normalize_headers,
    validate_topic_name,
)

__all__ = ("BaseBroker", "BaseSubscription", "State", "SubscribeOptions", "record_size")


class State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


def record_size(record: ProducerRecord) -> int:
    """Bytes a record occupies on the wire, without framing: key, value and headers."""
    size = len(record.key or b"") + len(record.value or b"")
    for name, value in record.headers:
        size += len(name) + len(value)
    return size


def _as_bytes(data: object, what: str, topic: str, hint: str) -> bytes | None:
    """``data`` as bytes (or None); anything else is the caller's mistake, named in the error."""
    if data is None or type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise ConfigurationError(
        f"invalid {what} {data!r} for topic {topic!r}: {what}s are bytes {hint}"
    )


@dataclass(slots=True, frozen=True)
class SubscribeOptions:
    """A validated :meth:`Broker.subscribe` call."""

    topics: tuple[str, ...]
    group: str | None
    partitions: tuple[int, ...] | None
    start: StartAt
    max_batch: int
    max_buffer: int
    session_timeout: float
    on_assigned: AssignmentCallback | None
    on_revoked: AssignmentCallback | None

    def start_for(self, tp: TopicPartition) -> Literal["earliest", "latest"] | int:
        """Where ``tp`` starts when nothing is committed for it."""
        if isinstance(self.start, str):
            return self.start
        start = cast("Mapping[object, int]", self.start)
        if tp in start:
            return start[tp]
        if len(self.topics) == 1 and tp.partition in start:
            return start[tp.partition]
        return "earliest"


class BaseBroker(ABC):
    """Lifecycle and argument checking shared by every backend."""

    def __init__(self, url: str, settings: BrokerSettings) -> None:
        self._url = url
        self._settings = settings
        self._state = State.NEW
        self._specs: dict[str, TopicSpec] = {}
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._subscriptions: set[BaseSubscription] = set()

    @property
    def url(self) -> str:
        return self._url

    @property
    def settings(self) -> BrokerSettings:
        return self._settings

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._url} {self._state.value}>"

    # ------------------------------------------------------------ lifecycle
    async def open(self) -> Self:
        """Connect, within ``settings.connect_timeout``. ``async with`` calls this."""
        if self._state is State.OPEN:
            return self
        if self._state is State.CLOSED:
            raise ClosedError(f"broker {self._url}")
        timeout = self._settings.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._open()
        except TimeoutError as exc:
            await self._close()
            raise BrokerUnavailableError(self._url, "no answer", timeout=timeout) from exc
        except BaseException:
            await self._close()
            raise
        self._state = State.OPEN
        return self

    async def aclose(self) -> None:
        if self._state is State.CLOSED:
            return
        was_open = self._state is State.OPEN
        self._state = State.CLOSED
        for sub in list(self._subscriptions):
            await sub.aclose()
        if was_open:
            await self._close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_state", None) is State.OPEN:
            warnings.warn(
                f"unclosed broker {self._url}: use 'async with connect(url)' or aclose()",
                ResourceWarning,
                stacklevel=1,
            )

    def _check_open(self) -> None:
        if self._state is State.OPEN:
            return
        if self._state is State.CLOSED:
            raise ClosedError(f"broker {self._url}")
        raise ResourceStateError(
            f"broker {self._url} is not open yet: use 'async with brokers.connect(url) as b'"
        )

    # ------------------------------------------------------------ topics
    async def create_topic(self, spec: TopicSpec) -> TopicSpec:
        self._check_open()
        if not isinstance(spec, TopicSpec):
            raise ConfigurationError(f"create_topic expects a TopicSpec, got {spec!r}")
        actual = await self._create_topic(spec)
        self._specs[spec.name] = actual
        return actual

    async def describe_topic(self, name: str) -> TopicSpec:
        self._check_open()
        spec = await self._describe_topic(validate_topic_name(name))
        self._specs[name] = spec
        return spec

    async def list_topics(self) -> list[str]:
        self._check_open()
        return sorted(await self._list_topics())

    async def delete_topic(self, name: str) -> None:
        self._check_open()
        await self._delete_topic(validate_topic_name(name))
        self._specs.pop(name, None)

    async def _spec(self, topic: str) -> TopicSpec:
        spec = self._specs.get(topic)
        if spec is None:
            spec = await self.describe_topic(topic)
        return spec

    # ------------------------------------------------------------ produce
    async def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]] | None = None,
    ) -> Position:
        self._check_open()
        spec = await self._spec(topic)
        record = self._prepare(
            spec, ProducerRecord(value, key, partition, normalize_headers(headers))
        )
        positions = await self._append(spec, [record])
        return positions[0]

    async def produce_batch(self, topic: str, records: Sequence[ProducerRecord]) -> list[Position]:
        self._check_open()
        spec = await self._spec(topic)
        if not records:
            return []
        prepared = [self._prepare(spec, r) for r in records]
        return await self._append(spec, prepared)

    def _prepare(self, spec: TopicSpec, record: ProducerRecord) -> ProducerRecord:
        """Check a record and resolve its partition."""
        if type(record) is not ProducerRecord and not isinstance(record, ProducerRecord):
            raise ConfigurationError(f"expected a ProducerRecord, got {record!r}")
        key, value = record.key, record.value
        # the usual case (bytes or None) without a call; anything else is checked and named
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key", spec.name, "(encode str keys as UTF-8) or None")
        if value is not None and type(value) is not bytes:
            value = _as_bytes(
                value, "value", spec.name, "or None (a tombstone); encode objects first"
            )
        if spec.compacted and key is None:
            raise ConfigurationError(f"topic {spec.name!r} is compacted: every record needs a key")
        partition = record.partition
        if partition is None:
            if key is not None:
                partition = _positive_hash(key) % spec.partitions  # default_partitioner
            else:
                counter = self._round_robin.setdefault(spec.name, itertools.count())
                partition = next(counter) % spec.partitions
        elif not isinstance(partition, int) or not 0 <= partition < spec.partitions:
            raise ConfigurationError(
                f"partition {partition!r} is out of range for topic {spec.name!r}, "
                f"which has partitions 0..{spec.partitions - 1}"
            )
        if partition is record.partition and key is record.key and value is record.value:
            prepared = record  # already checked and placed: no copy
        else:
            prepared = ProducerRecord(value, key, partition, record.headers)
        size = record_size(prepared)
        if size > self._settings.max_record_bytes:
            raise RecordTooLargeError(spec.name, size, self._settings.max_record_bytes)
        return prepared

    # ------------------------------------------------------------ subscribe
    def subscribe(
        self,
        topics: str | Sequence[str],
        *,
        group: str | None = None,
        partitions: Sequence[int] | None = None,
        start: StartAt = "earliest",
        max_batch: int = 1000,
        max_buffer: int = 10_000,
        session_timeout: float = 10.0,
        on_assigned: AssignmentCallback | None = None,
        on_revoked: AssignmentCallback | None = None,
    ) -> BaseSubscription:
        self._check_open()
        names = (topics,) if isinstance(topics, str) else tuple(topics)
        if not names:
            raise ConfigurationError("subscribe needs at least one topic")
        for name in names:
            validate_topic_name(name)
        if group is not None:
            if not isinstance(group, str) or not group:
                raise ConfigurationError(f"invalid group {group!r}: a non-empty str")
            if partitions is not None:
                raise ConfigurationError(
                    "pass either group= (the group assigns partitions) or partitions=, not both"
                )
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be at least 1, got {max_batch}")
        if max_buffer < max_batch:
            raise ConfigurationError(
                f"max_buffer ({max_buffer}) must be at least max_batch ({max_batch})"
            )
        if session_timeout <= 0:
            raise ConfigurationError(f"session_timeout must be positive, got {session_timeout}")
        if isinstance(start, str) and start not in ("earliest", "latest"):
            raise ConfigurationError(
                f"invalid start {start!r}: 'earliest', 'latest' or a mapping of next offsets"
            )
        options = SubscribeOptions(
            topics=names,
            group=group,
            partitions=tuple(partitions) if partitions is not None else None,
            start=start,
            max_batch=max_batch,
            max_buffer=max_buffer,
            session_timeout=session_timeout,
            on_assigned=on_assigned,
            on_revoked=on_revoked,
        )
        sub = self._subscription(options)
        self._subscriptions.add(sub)
        return sub

    async def _all_partitions(self, topics: Sequence[str]) -> frozenset[TopicPartition]:
        result: set[TopicPartition] = set()
        for topic in topics:
            spec = await self.describe_topic(topic)
            result.update(TopicPartition(topic, p) for p in range(spec.partitions))
        return frozenset(result)

    # ------------------------------------------------------------ hooks
    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None:
        """Release everything; also called after a failed open, so it must be safe then."""

    @abstractmethod
    async def _create_topic(self, spec: TopicSpec) -> TopicSpec: ...

    @abstractmethod
    async def _describe_topic(self, name: str) -> TopicSpec: ...

    @abstractmethod
    async def _list_topics(self) -> list[str]: ...

    @abstractmethod
    async def _delete_topic(self, name: str) -> None: ...

    @abstractmethod
    async def _append(self, spec: TopicSpec, records: list[ProducerRecord]) -> list[Position]:
        """Append records whose partitions are resolved and which passed every check."""

    @abstractmethod
    async def end_offsets(self, topic: str) -> dict[int, int]: ...

    @abstractmethod
    async def beginning_offsets(self, topic: str) -> dict[int, int]: ...

    @abstractmethod
    def _subscription(self, options: SubscribeOptions) -> BaseSubscription: ...


class BaseSubscription(ABC):
    """Lifecycle, positions, assignment callbacks and iteration shared by every backend."""

    def __init__(self, broker: BaseBroker, options: SubscribeOptions) -> None:
        self._broker = broker
        self._options = options
        self._state = State.NEW
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._positions: dict[TopicPartition, int] = {}
        self._woken = False  # wakeup() was called and no waiting fetch has returned for it

    @property
    def group(self) -> str | None:
        return self._options.group

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        return self._assignment

    @property
    def buffered(self) -> int:
        return 0

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    def __repr__(self) -> str:
        who = f"group={self.group!r}" if self.group else "no group"
        return f"<{type(self).__name__} {list(self._options.topics)} {who} {self._state.value}>"

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> Self:
        if self._state is State.OPEN:
            return self
        if self._state is State.CLOSED:
            raise ClosedError(f"subscription to {list(self._options.topics)}")
        self._broker._check_open()
        for topic in self._options.topics:
            await self._broker.describe_topic(topic)  # UnknownTopicError before anything else
        try:
            await self._start()
        except BaseException:
            self._state = State.CLOSED
            self._broker._subscriptions.discard(self)
            await self._close()
            raise
        self._state = State.OPEN
        return self

    async def aclose(self) -> None:
        if self._state is State.CLOSED:
            return
        was_open = self._state is State.OPEN
        self._state = State.CLOSED
        self._broker._subscriptions.discard(self)
        if was_open:
            await self._close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_state", None) is State.OPEN:
            warnings.warn(
                f"unclosed subscription {self!r}: use 'async with broker.subscribe(...)'",
                ResourceWarning,
                stacklevel=1,
            )

    def _check_open(self) -> None:
        if self._state is State.OPEN:
            return
        if self._state is State.CLOSED:
            raise ClosedError(f"subscription to {list(self._options.topics)}")
        raise ResourceStateError(
            "subscription not started: use 'async with broker.subscribe(...) as sub'"
        )

    # ------------------------------------------------------------ reading
    async def getmany(
        self, *, timeout: float | None = None, max_records: int | None = None
    ) -> list[Record]:
        self._check_open()
        if timeout is not None and timeout < 0:
            raise ConfigurationError(f"timeout must be >= 0 or None, got {timeout}")
        limit = self._options.max_batch if max_records is None else max_records
        if limit < 1:
            raise ConfigurationError(f"max_records must be at least 1, got {max_records}")
        chunks = await self._fetch(timeout, min(limit, self._options.max_batch))
        assignment = self._assignment
        if any(TopicPartition(c[0].topic, c[0].partition) not in assignment for c in chunks):
            # fetched before a rebalance took the partition away: its new owner reads it
            chunks = [c for c in chunks if TopicPartition(c[0].topic, c[0].partition) in assignment]
        if not chunks:
            return []
        if len(chunks) == 1:
            chunk = chunks[0]
            last = chunk[-1]
            self._positions[TopicPartition(last.topic, last.partition)] = last.offset + 1
            return chunk
        out: list[Record] = []
        for chunk in chunks:
            last = chunk[-1]
            self._positions[TopicPartition(last.topic, last.partition)] = last.offset + 1
            out.extend(chunk)
        return out

    def wakeup(self) -> None:
        self._woken = True
        if self._state is State.OPEN:
            self._wake_fetch()

    def _woken_up(self) -> bool:
        """For ``_fetch``, about to wait: ``True`` (once) when :meth:`wakeup` asks it not to."""
        woken, self._woken = self._woken, False
        return woken

    async def __aiter__(self) -> AsyncIterator[list[Record]]:
        while self._state is State.OPEN:
            try:
                batch = await self.getmany()
            except ClosedError:
                return
            if batch:
                yield batch

    def position(self, tp: TopicPartition) -> int | None:
        return self._positions.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check_open()
        if tp not in self._assignment:
            raise ConfigurationError(f"cannot seek {tp}: it is not assigned to this subscription")
        if offset < 0:
            raise ConfigurationError(f"cannot seek {tp} to negative offset {offset}")
        self._seek(tp, offset)
        self._positions[tp] = offset

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        self._check_open()
        group = self._require_group("commit")
        if offsets is None:
            todo = {tp: off for tp, off in self._positions.items() if tp in self._assignment}
        else:
            todo = {TopicPartition(*tp): int(off) for tp, off in offsets.items()}
            for tp, off in todo.items():
                if off < 0:
                    raise ConfigurationError(f"cannot commit negative offset {off} for {tp}")
        if todo:
            await self._commit(group, todo)

    async def committed(self, tp: TopicPartition) -> int | None:
        self._check_open()
        group = self._require_group("committed")
        return await self._committed(group, TopicPartition(*tp))

    def _require_group(self, what: str) -> str:
        if self._options.group is None:
            raise ConfigurationError(
                f"{what}() needs a consumer group: subscribe with group='name'"
            )
        return self._options.group

    async def _chosen_partitions(self) -> frozenset[TopicPartition]:
        """Without a group: the partitions ``partitions=`` chose (all by default), checked."""
        options, broker = self._options, self._broker
        tps = await broker._all_partitions(options.topics)
        if options.partitions is None:
            return tps
        wanted = set(options.partitions)
        for topic in options.topics:
            count = sum(1 for tp in tps if tp.topic == topic)
            missing = sorted(p for p in wanted if not 0 <= p < count)
            if missing:
                raise ConfigurationError(
                    f"partitions {missing} do not exist in topic {topic!r} (0..{count - 1})"
                )
        return frozenset(tp for tp in tps if tp.partition in wanted)

    async def _set_assignment(self, new: frozenset[TopicPartition]) -> None:
        """Adopt a new assignment: on_revoked (while still owned), then on_assigned."""
        old = self._assignment
        lost, gained = old - new, new - old
        if lost and self._options.on_revoked is not None:
            await self._options.on_revoked(lost)
        self._assignment = new
        for tp in lost:
            self._positions.pop(tp, None)
        if gained and self._options.on_assigned is not None:
            await self._options.on_assigned(gained)

    # ------------------------------------------------------------ hooks
    @abstractmethod
    async def _start(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None:
        """Leave the group and stop background work; wake any waiting ``_fetch``."""

    @abstractmethod
    async def _fetch(self, timeout: float | None, limit: int) -> list[list[Record]]:
        """Up to ``limit`` records as non-empty per-partition chunks, each in offset order.

        Waits up to ``timeout`` (forever if ``None``) for at least one record; returns ``[]``
        on timeout, when the subscription is closed meanwhile, or instead of waiting when
        :meth:`_woken_up` says so.
        """

    @abstractmethod
    def _wake_fetch(self) -> None:
        """Make a waiting ``_fetch`` look again now (it then sees :meth:`_woken_up`)."""

    @abstractmethod
    def _seek(self, tp: TopicPartition, offset: int) -> None: ...

    @abstractmethod
    async def _commit(self, group: str, offsets: dict[TopicPartition, int]) -> None: ...

    @abstractmethod
    async def _committed(self, group: str, tp: TopicPartition) -> int | None: ...
