"""The log's data: records, positions, topic specifications.

Records, positions and producer records are named tuples: immutable and hashable like a frozen
dataclass, and about six times cheaper to make (one is made per record produced or read, so on
the hot path that is most of a record's cost).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeAlias

from brokers._errors import ConfigurationError

__all__ = (
    "Headers",
    "Position",
    "ProducerRecord",
    "Record",
    "StartAt",
    "TopicPartition",
    "TopicSpec",
    "normalize_headers",
)

Headers: TypeAlias = tuple[tuple[str, bytes], ...]
"""Record headers: ordered (name, value) pairs; a name may repeat, as in Kafka."""


class TopicPartition(NamedTuple):
    """One partition of one topic; sorts by topic, then partition."""

    topic: str
    partition: int


class Record(NamedTuple):
    """A record read from the log (immutable; a named tuple, made once per record read).

    Attributes:
        topic: the topic it was read from.
        partition: the partition within the topic.
        offset: its position in the partition. Offsets increase strictly within a partition
            but need not be contiguous (NATS stream sequences are shared by all partitions).
        timestamp: the log's append time, in milliseconds since the Unix epoch.
        key: the key bytes, or ``None`` for a keyless record.
        value: the value bytes, or ``None`` for a tombstone (a delete on compacted topics).
        headers: (name, value) pairs, in the order they were produced.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class Position(NamedTuple):
    """Where a produced record landed in the log."""

    topic: str
    partition: int
    offset: int
    timestamp: int

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class ProducerRecord(NamedTuple):
    """A record to produce in a batch.

    ``partition`` overrides the partitioner; otherwise a keyed record goes where
    :func:`brokers.default_partitioner` puts its key and a keyless one round-robin.
    """

    value: bytes | None
    key: bytes | None = None
    partition: int | None = None
    headers: Headers = ()


@dataclass(slots=True, frozen=True)
class TopicSpec:
    """How a topic is (to be) created.

    Attributes:
        name: the topic's name: letters, digits, ``.``, ``_`` and ``-``, at most 200 characters.
        partitions: the number of partitions (the unit of parallelism), at least 1.
        compacted: keep only the latest record per key (a changelog / table topic).
        retention_ms: drop records older than this; ``None`` keeps them forever.
        retention_bytes: drop the oldest records of a partition past this size; ``None`` = no limit.
        delete_retention_ms: how long a tombstone stays in a compacted topic before it is dropped.
    """

    name: str
    partitions: int = 1
    compacted: bool = False
    retention_ms: int | None = None
    retention_bytes: int | None = None
    delete_retention_ms: int = 86_400_000
    config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_topic_name(self.name)
        if self.partitions < 1:
            raise ConfigurationError(
                f"topic {self.name!r}: partitions must be at least 1, got {self.partitions}"
            )
        for what, value in (
            ("retention_ms", self.retention_ms),
            ("retention_bytes", self.retention_bytes),
        ):
            if value is not None and value <= 0:
                raise ConfigurationError(
                    f"topic {self.name!r}: {what} must be positive or None, got {value}"
                )


_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def validate_topic_name(name: str) -> str:
    """Check a topic name is valid on every backend (Kafka's rules, which NATS can also hold)."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"invalid topic name {name!r}: it must be a non-empty string")
    if len(name) > 200:
        raise ConfigurationError(f"invalid topic name {name!r}: at most 200 characters")
    bad = set(name) - _TOPIC_CHARS
    if bad or name in {".", ".."}:
        raise ConfigurationError(
            f"invalid topic name {name!r}: use only letters, digits, '.', '_' and '-'"
        )
    return name


StartAt: TypeAlias = (
    Literal["earliest", "latest"] | Mapping[TopicPartition, int] | Mapping[int, int]
)
"""Where a subscription starts: the earliest record, the log end, or explicit next offsets.

With a consumer group, this is where a partition with no committed position starts.
An explicit mapping may be keyed by partition number when the subscription has one topic.
"""


def normalize_headers(
    headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]] | None,
) -> Headers:
    """Headers as a tuple of (str, bytes) pairs; str values are UTF-8 encoded."""
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[str, bytes]] = []
    for name, value in items:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"invalid header name {name!r}: it must be a non-empty str")
        if isinstance(value, str):
            value = value.encode()
        elif not isinstance(value, bytes | bytearray | memoryview):
            raise ConfigurationError(
                f"invalid value {value!r} for header {name!r}: it must be bytes or str"
            )
        out.append((name, bytes(value)))
    return tuple(out)
