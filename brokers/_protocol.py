"""The Broker protocol: what every backend of the partitioned log provides."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self, TypeAlias, runtime_checkable

from brokers._types import Position, ProducerRecord, Record, StartAt, TopicPartition, TopicSpec

__all__ = ("AssignmentCallback", "Broker", "Subscription")

AssignmentCallback: TypeAlias = Callable[[frozenset[TopicPartition]], Awaitable[None]]
"""Told the partitions a subscription gained (or lost); awaited before the next batch."""


@runtime_checkable
class Subscription(Protocol):
    """A stream of record batches from one or more topics.

    Obtained from :meth:`Broker.subscribe` and used as an async context manager. Iterating
    yields non-empty batches (lists of records) until the subscription is closed; within a
    partition records come in offset order. Memory is bounded: at most ``max_buffer`` records
    are fetched ahead of what the caller has taken.
    """

    @property
    def group(self) -> str | None:
        """The consumer group, or ``None`` for a subscription to chosen partitions."""
        ...

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this subscription currently reads."""
        ...

    @property
    def buffered(self) -> int:
        """How many decoded records are held but not yet returned (at most ``max_buffer``).

        Backends that read the log directly hold none (0); Kafka holds raw fetch responses,
        bounded in bytes by fetch sizes derived from ``max_buffer``, and reports 0 too.
        """
        ...

    async def getmany(
        self, *, timeout: float | None = None, max_records: int | None = None
    ) -> list[Record]:
        """The next batch: waits up to ``timeout`` seconds (forever if ``None``) for records.

        Returns an empty list when the timeout passes with nothing to read. Assignment changes
        (with a group) are applied here, and the callbacks awaited, before records are returned.
        """
        ...

    def wakeup(self) -> None:
        """Make the ``getmany`` waiting now, or else the next one that would wait, return at
        once with what is ready (possibly nothing). Like Kafka's ``consumer.wakeup()``: for
        whoever must interrupt a reader idling on a quiet log (a stop request). Records are
        never lost to it; call it from the subscription's event loop.
        """
        ...

    def __aiter__(self) -> AsyncIterator[list[Record]]: ...

    def position(self, tp: TopicPartition) -> int | None:
        """The offset after the last record returned from ``tp`` (``None`` before any)."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next (the first record at or after it)."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit next-offsets for the group: explicit ones, or after everything returned.

        Raises:
            StaleMemberError: this member's generation is over and its partitions moved.
            ConfigurationError: the subscription has no group.
        """
        ...

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed next-offset for ``tp``, or ``None``."""
        ...

    async def aclose(self) -> None:
        """Leave the group (if any) and release resources. Idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Broker(Protocol):
    """The partitioned log. One protocol; backends chosen by URL in :func:`brokers.connect`."""

    @property
    def url(self) -> str:
        """The URL it was opened with (credentials removed)."""
        ...

    async def create_topic(self, spec: TopicSpec) -> TopicSpec:
        """Create a topic, or accept it if it exists with the same partition count.

        Returns the topic's actual specification.

        Raises:
            TopicConflictError: it exists with a different partition count or compaction.
        """
        ...

    async def describe_topic(self, name: str) -> TopicSpec:
        """The topic's specification. Raises :class:`UnknownTopicError` if it does not exist."""
        ...

    async def list_topics(self) -> list[str]:
        """Names of the user topics (internal bookkeeping topics are left out), sorted."""
        ...

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and its records. Raises :class:`UnknownTopicError` if missing."""
        ...

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]] | None = None,
    ) -> Position:
        """Append one record; returns once the log has acknowledged it, with its position."""
        ...

    async def produce_batch(self, topic: str, records: Sequence[ProducerRecord]) -> list[Position]:
        """Append many records; positions are returned in the order of ``records``."""
        ...

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the log end: one past the offset of its last record (0 if empty).

        A reader that has seen the record at ``end - 1`` has seen everything the partition
        held when this was called: the basis of strong reads.
        """
        ...

    async def beginning_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset of the first record still held (after retention)."""
        ...

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
    ) -> Subscription:
        """Read records. Enter the returned subscription with ``async with`` to start it.

        Args:
            topics: one topic name or several.
            group: a consumer group: members split the partitions between them, a member
                that leaves or stops heartbeating for ``session_timeout`` seconds has its
                partitions reassigned, and committed positions are where the next owner
                resumes. ``None`` reads ``partitions`` (all by default) of every topic.
            partitions: without a group, which partitions to read.
            start: ``"earliest"``, ``"latest"`` or explicit next offsets; with a group it
                applies to partitions that have no committed position.
            max_batch: the largest batch returned by one ``getmany``.
            max_buffer: the most records fetched ahead of the caller.
            session_timeout: with a group, how long a silent member keeps its partitions.
            on_assigned: awaited with the partitions gained, before their records.
            on_revoked: awaited with the partitions lost, before the next batch.
        """
        ...

    async def aclose(self) -> None:
        """Close the connection. Idempotent; later use raises :class:`ClosedError`."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
