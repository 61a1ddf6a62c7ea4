"""Where a keyed record belongs, and what an agent does with one found elsewhere.

Every backend places a keyed record with Kafka's murmur2 partitioner, but a producer in another
process may not (librdkafka's default, CRC32, puts most keys elsewhere). A record on another
partition than its key's would be folded into the wrong partition's state, so an agent checks
each keyed record it consumes and applies its ``on_misplaced`` policy:

=============  ==============================================================================
reroute        the record is sent to its key's partition of the same topic, with its origin
               (``x-origin``) for tables to recognise a repeated send, and ``x-rerouted-by``
               naming the agent's group; the default for agents that change tables
dead_letter    the record goes to the topic's dead-letter topic with the reason
accept         the record is handled where it is (no check): for agents that keep no state
               per key; the default for agents that change no table
=============  ==============================================================================

A copy rerouted by one agent is handled only by that agent: the others of the same topic
handled (or dead-lettered) the record where it first landed.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from brokers import ProducerRecord, Record, default_partitioner

__all__ = ("REROUTED_HEADER", "MisplacedPolicy", "Placement")

MisplacedPolicy: TypeAlias = Literal["reroute", "dead_letter", "accept"]
"""What an agent does with a keyed record found on another partition than its key's."""

MISPLACED_POLICIES: tuple[MisplacedPolicy, ...] = ("reroute", "dead_letter", "accept")

ORIGIN_HEADER = "x-origin"
"""``<partition>:<offset>`` of the record a forwarded (repartitioned, rerouted) one came from."""

REROUTED_HEADER = "x-rerouted-by"
"""On a rerouted copy: the consumer group of the agent that rerouted it."""

_CACHE = 100_000  # keys whose partition is remembered (keys repeat: users, sessions)


class Placement:
    """The partition each key belongs on, for one topic, remembered per key."""

    __slots__ = ("homes", "partitions", "policy")

    def __init__(self, partitions: int, policy: MisplacedPolicy) -> None:
        self.partitions = partitions
        self.policy = policy
        self.homes: dict[bytes, int] = {}

    def home(self, key: bytes) -> int:
        """The partition of ``key`` (Kafka's murmur2, as every backend places keys)."""
        home = self.homes.get(key)
        if home is None:
            home = default_partitioner(key, self.partitions)
            if len(self.homes) < _CACHE:
                self.homes[key] = home
        return home

    def reason(self, record: Record, home: int) -> str:
        """Why a misplaced record was dead-lettered: where it is, where it belongs."""
        return (
            f"key {record.key!r} is on partition {record.partition} but belongs on partition "
            f"{home} of {self.partitions} (Kafka's murmur2 partitioner): the producer uses "
            "another partitioner; see docs/wire-format.md"
        )


def rerouted(record: Record, home: int, group: str) -> ProducerRecord:
    """The copy of a misplaced record for its key's partition.

    A record that came through a repartition keeps its upstream origin (that is what tables
    recognise it by); any other gets its own position as origin.
    """
    headers = tuple(h for h in record.headers if h[0] != REROUTED_HEADER)
    if not any(name == ORIGIN_HEADER for name, _ in headers):
        headers += ((ORIGIN_HEADER, f"{record.partition}:{record.offset}".encode()),)
    return ProducerRecord(
        record.value, record.key, home, (*headers, (REROUTED_HEADER, group.encode()))
    )


def passed_on(headers: tuple[tuple[str, bytes], ...]) -> tuple[tuple[str, bytes], ...]:
    """The headers a record forwarded to another topic keeps: all but ``x-origin`` and
    ``x-rerouted-by``, which are about where the event was read, not about the new record
    (a forwarder adds the origin it means; a reroute by its own agent is not another's)."""
    return tuple(h for h in headers if h[0] != ORIGIN_HEADER and h[0] != REROUTED_HEADER)


def forwarded(headers: tuple[tuple[str, bytes], ...]) -> tuple[tuple[int, int] | None, str | None]:
    """A record's origin (``x-origin``) and the group that rerouted it (``x-rerouted-by``)."""
    origin, by = None, None
    for name, value in headers:
        if name == ORIGIN_HEADER:
            partition, _, offset = value.decode().partition(":")
            origin = int(partition), int(offset)
        elif name == REROUTED_HEADER:
            by = value.decode()
    return origin, by
