"""One conformance suite for every backend: the semantics of docs/brokers.md, proven.

Each test runs on memory, sqlite, kafka and nats (ids ``[memory]`` ...), against real brokers
provided by ``brokers.testing``.
"""

from __future__ import annotations

import asyncio
import random
import time
import tracemalloc
from collections import defaultdict

import pytest
from aiokafka.partitioner import DefaultPartitioner

import brokers
from brokers import (
    Broker,
    ClosedError,
    ConfigurationError,
    ProducerRecord,
    RecordTooLargeError,
    StaleMemberError,
    TopicConflictError,
    TopicPartition,
    TopicSpec,
    UnknownTopicError,
    default_partitioner,
)
from tests.brokers.conftest import SESSION_TIMEOUT, all_partitions, consume, poll_until, unique

# ---------------------------------------------------------------- topics


async def test_create_describe_list_delete(broker: Broker) -> None:
    name = unique("topics")
    spec = await broker.create_topic(TopicSpec(name, partitions=3, retention_ms=3_600_000))
    assert spec.partitions == 3
    described = await broker.describe_topic(name)
    assert (described.name, described.partitions, described.compacted) == (name, 3, False)
    assert name in await broker.list_topics()
    await broker.delete_topic(name)
    assert name not in await broker.list_topics()
    with pytest.raises(UnknownTopicError):
        await broker.describe_topic(name)


async def test_create_is_idempotent_and_conflicts_are_errors(broker: Broker) -> None:
    name = unique("conflict")
    await broker.create_topic(TopicSpec(name, partitions=2))
    again = await broker.create_topic(TopicSpec(name, partitions=2))
    assert again.partitions == 2
    with pytest.raises(TopicConflictError, match="partitions"):
        await broker.create_topic(TopicSpec(name, partitions=5))


async def test_unknown_topic_is_an_error_everywhere(broker: Broker) -> None:
    name = unique("missing")
    with pytest.raises(UnknownTopicError, match="create_topic"):
        await broker.produce(name, b"x")
    with pytest.raises(UnknownTopicError):
        await broker.end_offsets(name)
    with pytest.raises(UnknownTopicError):
        async with broker.subscribe(name):
            pass
    assert name not in await broker.list_topics()  # never auto-created


# ---------------------------------------------------------------- produce and order


async def test_per_partition_order_and_positions(broker: Broker) -> None:
    name = unique("order")
    await broker.create_topic(TopicSpec(name, partitions=4))
    sent: dict[bytes, list[bytes]] = defaultdict(list)
    positions = {}
    for i in range(200):
        key = f"k{i % 10}".encode()
        value = str(i).encode()
        pos = await broker.produce(name, value, key=key)
        sent[key].append(value)
        positions[value] = pos
    async with broker.subscribe(name) as sub:
        records = await consume(sub, 200)
    got: dict[bytes, list[bytes]] = defaultdict(list)
    last: dict[int, int] = {}
    for rec in records:
        assert rec.offset > last.get(rec.partition, -1), "offsets increase within a partition"
        last[rec.partition] = rec.offset
        assert rec.key is not None
        assert rec.value is not None
        got[rec.key].append(rec.value)
        pos = positions[rec.value]
        assert (pos.partition, pos.offset) == (rec.partition, rec.offset)
        assert rec.timestamp > 1_600_000_000_000, "timestamps are epoch milliseconds"
    assert got == sent


async def test_keys_land_where_kafkas_default_partitioner_puts_them(broker: Broker) -> None:
    name = unique("partitioner")
    await broker.create_topic(TopicSpec(name, partitions=7))
    rng = random.Random(7)
    keys = [f"user-{rng.randrange(10**9)}".encode() for _ in range(50)] + ["ünï-🔑".encode()]
    java = DefaultPartitioner()
    batch = await broker.produce_batch(name, [ProducerRecord(b"v", key=k) for k in keys])
    for key, pos in zip(keys, batch, strict=True):
        expected = default_partitioner(key, 7)
        assert pos.partition == expected
        assert expected == java(key, list(range(7)), list(range(7)))


async def test_explicit_partition_and_round_robin_for_keyless(broker: Broker) -> None:
    name = unique("explicit")
    await broker.create_topic(TopicSpec(name, partitions=3))
    pos = await broker.produce(name, b"x", key=b"any", partition=2)
    assert pos.partition == 2
    keyless = await broker.produce_batch(name, [ProducerRecord(b"v") for _ in range(6)])
    assert {p.partition for p in keyless} == {0, 1, 2}
    with pytest.raises(ConfigurationError, match="out of range"):
        await broker.produce(name, b"x", partition=3)


async def test_batch_positions_match_what_is_read(broker: Broker) -> None:
    name = unique("batch")
    await broker.create_topic(TopicSpec(name, partitions=3))
    records = [ProducerRecord(f"v{i}".encode(), key=f"k{i}".encode()) for i in range(500)]
    positions = await broker.produce_batch(name, records)
    assert len(positions) == 500
    async with broker.subscribe(name) as sub:
        got = await consume(sub, 500)
    by_value = {r.value: (r.partition, r.offset) for r in got}
    for rec, pos in zip(records, positions, strict=True):
        assert by_value[rec.value] == (pos.partition, pos.offset)
    assert await broker.produce_batch(name, []) == []


async def test_headers_round_trip(broker: Broker) -> None:
    name = unique("headers")
    await broker.create_topic(TopicSpec(name, partitions=1))
    headers: list[tuple[str, bytes | str]] = [
        ("event-id", b"e-1"),
        ("trace", "naïve ✓"),
        ("trace", b"\x00\xff"),
        ("empty", b""),
    ]
    await broker.produce(name, b"v", key=b"k", headers=headers)
    await broker.produce(name, b"w", headers={"only": b"one"})
    await broker.produce(name, b"nothing")
    async with broker.subscribe(name) as sub:
        a, b, c = await consume(sub, 3)
    assert a.headers == (
        ("event-id", b"e-1"),
        ("trace", "naïve ✓".encode()),
        ("trace", b"\x00\xff"),
        ("empty", b""),
    )
    assert b.headers == (("only", b"one"),)
    assert c.headers == ()
    assert (c.key, c.value) == (None, b"nothing")


async def test_tombstones_and_empty_values_are_distinct(broker: Broker) -> None:
    name = unique("tombstone")
    await broker.create_topic(TopicSpec(name, partitions=1))
    await broker.produce(name, b"", key=b"empty")
    await broker.produce(name, None, key=b"gone")
    async with broker.subscribe(name) as sub:
        empty, gone = await consume(sub, 2)
    assert (empty.key, empty.value) == (b"empty", b"")
    assert (gone.key, gone.value) == (b"gone", None)


async def test_compacted_topic_folds_to_latest_per_key(broker: Broker) -> None:
    name = unique("compacted")
    await broker.create_topic(TopicSpec(name, partitions=2, compacted=True))
    described = await broker.describe_topic(name)
    assert described.compacted
    for i in range(30):
        await broker.produce(name, str(i).encode(), key=f"k{i % 3}".encode())
    await broker.produce(name, None, key=b"k0")
    ends = await broker.end_offsets(name)
    async with broker.subscribe(name) as sub:
        seen: dict[bytes, bytes | None] = {}
        async with asyncio.timeout(30):
            while any((sub.position(TopicPartition(name, p)) or 0) < e for p, e in ends.items()):
                for rec in await sub.getmany(timeout=0.5):
                    assert rec.key is not None
                    seen[rec.key] = rec.value
    assert seen[b"k1"] == b"28"
    assert seen[b"k2"] == b"29"
    assert seen.get(b"k0") is None
    with pytest.raises(ConfigurationError, match="needs a key"):
        await broker.produce(name, b"x")


# ---------------------------------------------------------------- offsets and starts


async def test_end_and_beginning_offsets_after_batched_produce(broker: Broker) -> None:
    name = unique("ends")
    await broker.create_topic(TopicSpec(name, partitions=4))
    assert await broker.end_offsets(name) == {0: 0, 1: 0, 2: 0, 3: 0}
    records = [ProducerRecord(b"x" * 50, key=str(i).encode(), partition=i % 3) for i in range(3000)]
    for start in range(0, 3000, 1000):
        await broker.produce_batch(name, records[start : start + 1000])
    ends = await broker.end_offsets(name)
    begins = await broker.beginning_offsets(name)
    assert ends[3] == 0, "an empty partition ends at 0"
    async with broker.subscribe(name) as sub:
        got = await consume(sub, 3000)
    last: dict[int, int] = {}
    first: dict[int, int] = {}
    for rec in got:
        last[rec.partition] = max(last.get(rec.partition, -1), rec.offset)
        first[rec.partition] = min(first.get(rec.partition, 1 << 62), rec.offset)
    for p in range(3):
        assert ends[p] == last[p] + 1, f"partition {p}: end is one past the last record"
        assert begins[p] == first[p]


async def test_start_positions(broker: Broker) -> None:
    name = unique("starts")
    await broker.create_topic(TopicSpec(name, partitions=2))
    first = await broker.produce_batch(
        name, [ProducerRecord(f"old{i}".encode(), partition=i % 2) for i in range(10)]
    )
    async with (
        broker.subscribe(name, start="latest") as latest,
        broker.subscribe(name, start="earliest") as earliest,
        broker.subscribe(name, partitions=[1], start={1: first[5].offset}) as explicit,
    ):
        # latest: only what comes after the subscription started
        assert await latest.getmany(timeout=0.3) == []
        await broker.produce(name, b"new", partition=0)
        (new,) = await consume(latest, 1)
        assert new.value == b"new"
        olds = await consume(earliest, 11)
        assert sorted(r.value for r in olds if r.value and r.value.startswith(b"old")) == sorted(
            f"old{i}".encode() for i in range(10)
        )
        picked = await consume(explicit, 3)
        assert [r.value for r in picked] == [b"old5", b"old7", b"old9"]
        assert explicit.assignment == {TopicPartition(name, 1)}


async def test_seek_rereads(broker: Broker) -> None:
    name = unique("seek")
    await broker.create_topic(TopicSpec(name, partitions=1))
    positions = await broker.produce_batch(
        name, [ProducerRecord(str(i).encode()) for i in range(5)]
    )
    tp = TopicPartition(name, 0)
    async with broker.subscribe(name) as sub:
        await consume(sub, 5)
        assert sub.position(tp) == positions[-1].offset + 1
        sub.seek(tp, positions[2].offset)
        again = await consume(sub, 3)
    assert [r.value for r in again] == [b"2", b"3", b"4"]


async def test_consumption_is_bounded(broker: Broker) -> None:
    name = unique("bounded")
    await broker.create_topic(TopicSpec(name, partitions=2))
    await broker.produce_batch(name, [ProducerRecord(b"y" * 100) for _ in range(5000)])
    async with broker.subscribe(name, max_batch=100, max_buffer=500) as sub:
        total = 0
        async with asyncio.timeout(30):
            while total < 5000:
                batch = await sub.getmany(timeout=0.5)
                assert len(batch) <= 100
                assert sub.buffered <= 500
                total += len(batch)
        assert await sub.getmany(timeout=0.2, max_records=7) == []
    assert total == 5000


async def test_waiting_for_records_does_not_busy_wait(broker: Broker) -> None:
    """A subscription waiting on an idle topic sleeps: over a 1 s wait the process uses a
    small fraction of a core (a busy loop would use all of it)."""
    name = unique("idle")
    await broker.create_topic(TopicSpec(name, partitions=4))
    async with broker.subscribe(name) as sub:
        assert await sub.getmany(timeout=0.2) == []  # connected and caught up
        cpu = time.process_time()
        assert await sub.getmany(timeout=1.0) == []
        used = time.process_time() - cpu
    assert used < 0.25, f"{used:.2f} s of CPU while waiting 1 s for nothing"


async def test_wakeup_ends_a_wait_and_loses_nothing(broker: Broker) -> None:
    """``wakeup()`` makes the waiting ``getmany`` (or else the next one that would wait) return
    without records; a record produced afterwards is still read, in order."""
    name = unique("wakeup")
    await broker.create_topic(TopicSpec(name, partitions=2))
    await broker.produce(name, b"before", partition=0)
    async with broker.subscribe(name) as sub:
        assert [r.value for r in await consume(sub, 1)] == [b"before"]
        async with asyncio.timeout(30):  # a wakeup that did nothing would wait forever
            waiting = asyncio.create_task(sub.getmany(timeout=None))
            await asyncio.sleep(0.1)  # the read is waiting on the quiet topic
            assert not waiting.done()
            sub.wakeup()
            assert await waiting == []
            sub.wakeup()  # nobody waits: the next read that would wait returns instead
            assert await sub.getmany(timeout=None) == []
        await broker.produce(name, b"after", partition=0)
        assert [r.value for r in await consume(sub, 1)] == [b"after"]
    sub.wakeup()  # closed: nothing to wake, and no error


async def test_a_slow_consumer_holds_a_bounded_amount_of_memory(broker: Broker) -> None:
    """A consumer that stops reading while the log holds far more than its buffer: what the
    client process allocates meanwhile (fetched ahead, decoded, queued) stays bounded."""
    name = unique("slow")
    await broker.create_topic(TopicSpec(name, partitions=2))
    payload = b"s" * 1000
    for _ in range(6):
        await broker.produce_batch(name, [ProducerRecord(payload) for _ in range(4000)])
    held_by_the_log = 6 * 4000 * len(payload)  # 24 MB
    tracemalloc.start()
    try:
        async with broker.subscribe(name, max_batch=100, max_buffer=500) as sub:
            await consume(sub, 100)
            # the slow part: the consumer takes nothing while the backend may read ahead
            await asyncio.sleep(1.5)
            _, peak = tracemalloc.get_traced_memory()
            assert sub.buffered <= 500
    finally:
        tracemalloc.stop()
    assert peak < held_by_the_log / 4, f"{peak:,} bytes allocated while reading 100 records"


async def test_iteration_yields_batches_until_closed(broker: Broker) -> None:
    name = unique("iterate")
    await broker.create_topic(TopicSpec(name, partitions=1))
    await broker.produce_batch(name, [ProducerRecord(str(i).encode()) for i in range(20)])
    sub = broker.subscribe(name, max_batch=8)
    seen: list[bytes | None] = []
    async with sub:
        async for batch in sub:
            assert 0 < len(batch) <= 8
            seen.extend(r.value for r in batch)
            if len(seen) >= 20:
                await sub.aclose()
    assert seen == [str(i).encode() for i in range(20)]


# ---------------------------------------------------------------- groups


async def test_group_splits_partitions_and_tells_members(broker: Broker) -> None:
    name, group = unique("split"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=4))
    values = {str(i).encode() for i in range(400)}
    await broker.produce_batch(name, [ProducerRecord(v, key=v) for v in sorted(values)])
    told: dict[str, list[tuple[str, frozenset[TopicPartition]]]] = {"a": [], "b": []}

    def listener(who: str, what: str) -> brokers.AssignmentCallback:
        async def callback(tps: frozenset[TopicPartition]) -> None:
            told[who].append((what, tps))

        return callback

    def member(who: str) -> brokers.Subscription:
        return broker.subscribe(
            name,
            group=group,
            session_timeout=SESSION_TIMEOUT,
            on_assigned=listener(who, "+"),
            on_revoked=listener(who, "-"),
        )

    total = all_partitions(name, 4)
    async with member("a") as a, member("b") as b:
        seen: set[bytes | None] = set()

        def done() -> bool:
            seen.update(r.value for recs in got.values() for r in recs)
            split = a.assignment | b.assignment == total and not a.assignment & b.assignment
            return split and bool(a.assignment) and bool(b.assignment) and seen >= values

        got: dict[int, list[brokers.Record]] = {0: [], 1: []}
        async with asyncio.timeout(60):
            while not done():
                batches = await asyncio.gather(a.getmany(timeout=0.2), b.getmany(timeout=0.2))
                got[0] += batches[0]
                got[1] += batches[1]
        assert len(a.assignment) == len(b.assignment) == 2
        final = {"a": a.assignment, "b": b.assignment}
    for who in ("a", "b"):
        # replaying what the member was told, in order, gives what it holds
        held: frozenset[TopicPartition] = frozenset()
        for what, tps in told[who]:
            held = held | tps if what == "+" else held - tps
        assert held == final[who]


async def test_member_that_leaves_hands_over_its_partitions(broker: Broker) -> None:
    name, group = unique("leave"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=4))
    total = all_partitions(name, 4)
    async with broker.subscribe(name, group=group, session_timeout=SESSION_TIMEOUT) as a:
        b = broker.subscribe(name, group=group, session_timeout=SESSION_TIMEOUT)
        async with b:
            await poll_until([a, b], lambda: bool(a.assignment) and bool(b.assignment))
        # b left: a gets everything back, well within the session timeout
        await poll_until([a], lambda: a.assignment == total, timeout=SESSION_TIMEOUT * 3)
        await broker.produce_batch(name, [ProducerRecord(b"x", partition=p) for p in range(4)])
        got = await consume(a, 4)
        assert {r.partition for r in got} == {0, 1, 2, 3}


async def test_next_owner_resumes_from_committed_positions(broker: Broker) -> None:
    name, group = unique("resume"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=2))
    await broker.produce_batch(
        name, [ProducerRecord(str(i).encode(), partition=i % 2) for i in range(100)]
    )
    async with broker.subscribe(name, group=group, session_timeout=SESSION_TIMEOUT) as first:
        got = await consume(first, 100)
        # commit positions after exactly the first 30 records of each partition
        cut: dict[TopicPartition, int] = {}
        for p in (0, 1):
            offsets = sorted(r.offset for r in got if r.partition == p)
            cut[TopicPartition(name, p)] = offsets[30]
        await first.commit(cut)
        for tp, off in cut.items():
            assert await first.committed(tp) == off
    async with broker.subscribe(name, group=group, session_timeout=SESSION_TIMEOUT) as second:
        again = await consume(second, 40)
        assert await second.getmany(timeout=0.5) == []
    assert sorted(int(r.value or b"") for r in again) == sorted(
        i for i in range(100) if i // 2 >= 30
    )

    # commit() without arguments commits everything returned so far
    async with broker.subscribe(name, group=group, session_timeout=SESSION_TIMEOUT) as third:
        await consume(third, 40)
        await third.commit()
    await broker.produce(name, b"fresh", partition=1)
    async with broker.subscribe(name, group=group, session_timeout=SESSION_TIMEOUT) as fourth:
        (fresh,) = await consume(fourth, 1)
        assert fresh.value == b"fresh"
        assert await fourth.getmany(timeout=0.5) == []


async def test_stale_member_commit_is_refused(broker: Broker) -> None:
    name, group = unique("stale"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=4))
    await broker.produce_batch(name, [ProducerRecord(b"x", partition=p) for p in range(4)])
    total = all_partitions(name, 4)
    async with broker.subscribe(name, group=group, session_timeout=SESSION_TIMEOUT) as a:
        await poll_until([a], lambda: a.assignment == total)
        before = a.assignment
        async with broker.subscribe(name, group=group, session_timeout=SESSION_TIMEOUT) as b:
            await poll_until(
                [a, b],
                lambda: bool(b.assignment) and not (a.assignment & b.assignment),
            )
            moved = next(iter(before & b.assignment))
            with pytest.raises(StaleMemberError):
                await a.commit({moved: 1})
            assert await b.committed(moved) in (None, 0)
            await b.commit({moved: 1})
            assert await b.committed(moved) == 1


async def test_commit_needs_a_group(broker: Broker) -> None:
    name = unique("nogroup")
    await broker.create_topic(TopicSpec(name, partitions=1))
    async with broker.subscribe(name) as sub:
        with pytest.raises(ConfigurationError, match="group"):
            await sub.commit()


# ---------------------------------------------------------------- errors


async def test_use_after_close(broker_url: str) -> None:
    name = unique("closed")
    async with brokers.connect(broker_url) as b:
        await b.create_topic(TopicSpec(name, partitions=1))
        sub = b.subscribe(name)
        async with sub:
            pass
        with pytest.raises(ClosedError):
            await sub.getmany(timeout=0)
    with pytest.raises(ClosedError, match="closed"):
        await b.produce(name, b"x")
    with pytest.raises(ClosedError):
        b.subscribe(name)
    await b.aclose()  # idempotent


async def test_oversized_record_is_refused_before_sending(broker_url: str) -> None:
    name = unique("big")
    settings = type(brokers.connect(broker_url).settings)(max_record_bytes=1000)
    async with brokers.connect(broker_url, settings=settings) as b:
        await b.create_topic(TopicSpec(name, partitions=1))
        with pytest.raises(RecordTooLargeError, match="1000 bytes"):
            await b.produce(name, b"x" * 2000)
        pos = await b.produce(name, b"x" * 900)
        assert pos.offset >= 0


async def test_bad_arguments_are_typed_errors(broker: Broker) -> None:
    name = unique("bad")
    await broker.create_topic(TopicSpec(name, partitions=1))
    with pytest.raises(ConfigurationError, match="invalid key"):
        await broker.produce(name, b"v", key="text")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="invalid value"):
        await broker.produce(name, {"a": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="invalid topic name"):
        await broker.create_topic(TopicSpec("no spaces", partitions=1))
    with pytest.raises(ConfigurationError, match="not both"):
        broker.subscribe(name, group="g", partitions=[0])
    with pytest.raises(ConfigurationError, match="max_buffer"):
        broker.subscribe(name, max_batch=10, max_buffer=5)
