"""Deterministic partition assignment for backends that run their own consumer groups.

Kafka assigns partitions in the broker's group protocol. On NATS, SQLite and in memory we keep
membership ourselves; every member computes the same assignment from the same member list, so no
leader is needed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from brokers._types import TopicPartition

__all__ = ("assign_partitions",)


def assign_partitions(
    members: Mapping[str, Collection[str]], partitions: Iterable[TopicPartition]
) -> dict[str, frozenset[TopicPartition]]:
    """Deal partitions to the members subscribed to their topic, balancing counts.

    ``members`` maps each member id to the topics it subscribed to. Partitions are taken in
    sorted order and each goes to the eligible member holding the fewest so far (ties to the
    smallest id), which for members of the same topics is Kafka's round-robin assignment. The
    result depends only on the inputs' contents, never on their order, so every member computes
    the same answer.

    >>> tps = [TopicPartition("t", p) for p in range(3)]
    >>> sorted(assign_partitions({"b": ["t"], "a": ["t"]}, tps)["a"])
    [TopicPartition(topic='t', partition=0), TopicPartition(topic='t', partition=2)]
    """
    owned: dict[str, set[TopicPartition]] = {m: set() for m in sorted(members)}
    for tp in sorted(set(partitions)):
        eligible = [m for m in owned if tp.topic in members[m]]
        if eligible:
            chosen = min(eligible, key=lambda m: (len(owned[m]), m))
            owned[chosen].add(tp)
    return {m: frozenset(tps) for m, tps in owned.items()}
