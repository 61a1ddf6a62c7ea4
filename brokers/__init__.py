"""The partitioned log: one protocol over memory, SQLite, Kafka and NATS JetStream.

Every write in neuroplex is a record appended to a partitioned, ordered log; everything read is
folded from it. This package is that log: :func:`connect` opens a backend chosen by URL, and
every backend keeps the same semantics (see docs/brokers.md).

Example:
    >>> import brokers
    >>> async def main() -> None:
    ...     async with brokers.connect("memory://") as log:
    ...         await log.create_topic(brokers.TopicSpec("orders", partitions=4))
    ...         pos = await log.produce("orders", b'{"total": 3}', key=b"user-1")
    ...         async with log.subscribe("orders") as sub:
    ...             batch = await sub.getmany(timeout=1.0)
"""

from brokers import json
from brokers._connect import connect, redact_url
from brokers._errors import (
    AuthorizationError,
    BrokerError,
    BrokerUnavailableError,
    ClosedError,
    CommitError,
    ConfigurationError,
    LogCorruptedError,
    LogFileAccessError,
    LogFileError,
    LogVersionError,
    NeuroplexError,
    NotALogError,
    RecordTooLargeError,
    ResourceStateError,
    SerializationError,
    StaleMemberError,
    TopicConflictError,
    TopicError,
    UnknownTopicError,
    UnsupportedURLError,
)
from brokers._partitioner import default_partitioner, murmur2
from brokers._protocol import AssignmentCallback, Broker, Subscription
from brokers._settings import (
    BrokerSettings,
    KafkaSettings,
    MemorySettings,
    NatsSettings,
    SqliteSettings,
    TLSSettings,
)
from brokers._types import (
    Headers,
    Position,
    ProducerRecord,
    Record,
    StartAt,
    TopicPartition,
    TopicSpec,
)

__all__ = (
    "AssignmentCallback",
    "AuthorizationError",
    "Broker",
    "BrokerError",
    "BrokerSettings",
    "BrokerUnavailableError",
    "ClosedError",
    "CommitError",
    "ConfigurationError",
    "Headers",
    "KafkaSettings",
    "LogCorruptedError",
    "LogFileAccessError",
    "LogFileError",
    "LogVersionError",
    "MemorySettings",
    "NatsSettings",
    "NeuroplexError",
    "NotALogError",
    "Position",
    "ProducerRecord",
    "Record",
    "RecordTooLargeError",
    "ResourceStateError",
    "SerializationError",
    "SqliteSettings",
    "StaleMemberError",
    "StartAt",
    "Subscription",
    "TLSSettings",
    "TopicConflictError",
    "TopicError",
    "TopicPartition",
    "TopicSpec",
    "UnknownTopicError",
    "UnsupportedURLError",
    "connect",
    "default_partitioner",
    "json",
    "murmur2",
    "redact_url",
)
