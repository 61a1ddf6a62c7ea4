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
    """Deal partitions to members, co-partitioned: partition ``p`` of every topic together.

    ``members`` maps each member id to the topics it subscribed to. Partition numbers are taken
    in order; each goes to the eligible member holding the fewest numbers so far (ties to the
    smallest id), with all its topics that member subscribed to — so a stream and a table
    partitioned alike are read by the same member (what joins and tables need). A topic the
    chosen member does not read goes, for that number, to the eligible member with the fewest.
    The result depends only on the inputs' contents, never on their order.

    >>> tps = [TopicPartition("t", p) for p in range(3)]
    >>> sorted(assign_partitions({"b": ["t"], "a": ["t"]}, tps)["a"])
    [TopicPartition(topic='t', partition=0), TopicPartition(topic='t', partition=2)]
    """
    owned: dict[str, set[TopicPartition]] = {m: set() for m in sorted(members)}
    numbers: dict[str, int] = dict.fromkeys(owned, 0)
    by_number: dict[int, list[TopicPartition]] = {}
    for tp in sorted(set(partitions)):
        by_number.setdefault(tp.partition, []).append(tp)
    for number in sorted(by_number):
        left = list(by_number[number])
        while left:
            eligible = [m for m in owned if any(tp.topic in members[m] for tp in left)]
            if not eligible:
                break
            chosen = min(eligible, key=lambda m: (numbers[m], m))
            taken = [tp for tp in left if tp.topic in members[chosen]]
            owned[chosen].update(taken)
            numbers[chosen] += 1
            left = [tp for tp in left if tp not in taken]
    return {m: frozenset(tps) for m, tps in owned.items()}
