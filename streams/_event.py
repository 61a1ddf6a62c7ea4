"""Events: a decoded record with its position in the log."""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

from brokers import Headers, Position, TopicPartition

__all__ = ("Event",)

K = TypeVar("K")
V = TypeVar("V")


class Event(NamedTuple, Generic[K, V]):
    """One record of a typed topic, decoded (immutable; a named tuple, made once per event).

    Attributes:
        key: the decoded key (``None`` for a keyless record).
        value: the decoded value (``None`` for a tombstone).
        topic: the topic it was read from.
        partition: its partition.
        offset: its offset in the partition.
        timestamp: the log's append time, milliseconds since the Unix epoch.
        headers: the record's headers.
    """

    key: K | None
    value: V
    topic: str
    partition: int
    offset: int
    timestamp: int
    headers: Headers = ()

    @property
    def position(self) -> Position:
        return Position(self.topic, self.partition, self.offset, self.timestamp)

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or ``None``."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None
