"""The partitioner is Kafka's, and group assignment is deterministic and balanced."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from brokers import ConfigurationError, TopicPartition, default_partitioner, murmur2
from brokers._groups import assign_partitions


@given(st.binary(max_size=64))
def test_murmur2_matches_the_java_client_port(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key) & 0xFFFFFFFF


@given(st.binary(min_size=0, max_size=64), st.integers(min_value=1, max_value=1000))
def test_default_partitioner_matches_aiokafka(key: bytes, n: int) -> None:
    partitions = list(range(n))
    assert default_partitioner(key, n) == DefaultPartitioner()(key, partitions, partitions)


def test_known_java_values() -> None:
    # pinned values; aiokafka's port of the Java client computes the same
    assert murmur2(b"") & 0x7FFFFFFF == 275646681
    assert default_partitioner(b"user-42", 8) == 4


def test_partitioner_rejects_bad_input() -> None:
    with pytest.raises(ConfigurationError, match="at least 1"):
        default_partitioner(b"k", 0)
    with pytest.raises(ConfigurationError, match="bytes"):
        default_partitioner("k", 3)  # type: ignore[arg-type]


members_st = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=4),
    st.sets(st.sampled_from(["t1", "t2"]), min_size=1),
    min_size=1,
    max_size=6,
)


@given(members_st, st.integers(1, 12), st.integers(1, 12))
def test_assignment_is_a_balanced_deterministic_partition(
    members: dict[str, set[str]], n1: int, n2: int
) -> None:
    tps = [TopicPartition("t1", p) for p in range(n1)] + [
        TopicPartition("t2", p) for p in range(n2)
    ]
    result = assign_partitions(members, tps)
    assert result == assign_partitions(dict(reversed(members.items())), list(reversed(tps)))
    owned = [tp for tps_ in result.values() for tp in tps_]
    assert len(owned) == len(set(owned)), "no partition is owned twice"
    eligible = {tp for tp in tps if any(tp.topic in t for t in members.values())}
    assert set(owned) == eligible
    for member, got in result.items():
        assert all(tp.topic in members[member] for tp in got)
    if all(t == {"t1", "t2"} for t in members.values()):
        # co-partitioned: partition p of both topics goes to one member, numbers balanced
        for p in range(max(n1, n2)):
            holders = {m for m, got in result.items() for tp in got if tp.partition == p}
            assert len(holders) == 1
        numbers = [len({tp.partition for tp in result[m]}) for m in members]
        assert max(numbers) - min(numbers) <= 1
    if all(t == {"t1"} for t in members.values()):
        sizes = [len(result[m]) for m in members]
        assert max(sizes) - min(sizes) <= 1
