"""Broker throughput: 200,000 records of ~100 bytes over 8 partitions, ours against raw clients.

For Kafka the baseline is a plain aiokafka producer/consumer loop on the same Tansu; for NATS a
plain nats-py JetStream publisher (publish_async) and pull consumer on the same nats-server.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import brokers
from brokers import ProducerRecord, TopicSpec
from tests.bench._results import Row

N = 200_000
PARTITIONS = 8
CHUNK = 1000
VALUE = (
    b'{"user":"user-00000","page":"/products/0000","ms":1700000000000,"pad":"' + b"x" * 24 + b'"}'
)


def _records() -> list[ProducerRecord]:
    return [ProducerRecord(VALUE, key=f"user-{i % 10_000}".encode()) for i in range(N)]


async def _timed(step: Callable[[], Awaitable[int]]) -> float:
    started = time.perf_counter()
    count = await step()
    return count / (time.perf_counter() - started)


async def ours(url: str) -> tuple[float, float, float, float]:
    """(produce/s, consume/s, single-produce p50 ms, p99 ms) through brokers.connect."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    records = _records()
    async with brokers.connect(url) as broker:
        await broker.create_topic(TopicSpec(topic, partitions=PARTITIONS))

        async def produce() -> int:
            for i in range(0, N, CHUNK):
                await broker.produce_batch(topic, records[i : i + CHUNK])
            return N

        async def consume() -> int:
            got = 0
            async with broker.subscribe(topic, max_batch=5000, max_buffer=50_000) as sub:
                while got < N:
                    got += len(await sub.getmany(timeout=5))
            return got

        produced = await _timed(produce)
        consumed = await _timed(consume)
        latencies = []
        for _ in range(500):
            started = time.perf_counter()
            await broker.produce(topic, VALUE, key=b"latency")
            latencies.append((time.perf_counter() - started) * 1000)
        cuts = statistics.quantiles(latencies, n=100)
    return produced, consumed, cuts[49], cuts[98]


async def produce_while_compacting(url: str) -> tuple[float, float]:
    """Single-produce latency (p50, p99 ms) while a large compaction backlog is worked off.

    200,000 records over 100 keys are written to a compacted topic (all but 100 dead), then
    single records are produced one after another while the log's upkeep compacts it.
    """
    topic = f"compacting-{uuid.uuid4().hex[:8]}"
    async with brokers.connect(url) as broker:
        await broker.create_topic(TopicSpec(topic, partitions=1, compacted=True))
        for i in range(0, N, CHUNK):
            await broker.produce_batch(
                topic, [ProducerRecord(VALUE, key=b"k%d" % (j % 100)) for j in range(i, i + CHUNK)]
            )
        latencies = []
        for _ in range(1000):
            started = time.perf_counter()
            await broker.produce(topic, VALUE, key=b"latency")
            latencies.append((time.perf_counter() - started) * 1000)
        beginning = await broker.beginning_offsets(topic)
        print(f"   compaction: first offset held after the run {beginning[0]:,}", flush=True)
        cuts = statistics.quantiles(latencies, n=100)
    return cuts[49], cuts[98]


async def raw_kafka(url: str) -> tuple[float, float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    bootstrap = url.removeprefix("kafka://")
    topic = f"raw-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    await admin.close()
    keys = [f"user-{i % 10_000}".encode() for i in range(N)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, enable_idempotence=False)
    await producer.start()

    async def produce() -> int:
        for i in range(0, N, CHUNK):
            futures = [await producer.send(topic, VALUE, key=k) for k in keys[i : i + CHUNK]]
            await asyncio.gather(*futures)
        return N

    try:
        produced = await _timed(produce)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()

    async def consume() -> int:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = 0
        while got < N:
            batches = await consumer.getmany(timeout_ms=5000, max_records=5000)
            got += sum(len(b) for b in batches.values())
        return got

    try:
        consumed = await _timed(consume)
    finally:
        await consumer.stop()
    return produced, consumed


async def raw_nats(url: str) -> tuple[float, float]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    stream = f"RAW{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=stream, subjects=[f"{stream}.*"])
    subjects = [f"{stream}.{p}" for p in range(PARTITIONS)]
    keys = [f"user-{i % 10_000}" for i in range(N)]

    async def produce() -> int:
        for i in range(0, N, CHUNK):
            futures = [
                await js.publish_async(
                    subjects[brokers.default_partitioner(k.encode(), PARTITIONS)],
                    VALUE,
                    headers={"key": k},
                )
                for k in keys[i : i + CHUNK]
            ]
            await asyncio.gather(*futures)
        return N

    async def consume() -> int:
        sub = await js.pull_subscribe(
            f"{stream}.*",
            durable=None,
            stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        got = 0
        while got < N:
            got += len(await sub.fetch(5000, timeout=5))
        await sub.unsubscribe()
        return got

    try:
        produced = await _timed(produce)
        consumed = await _timed(consume)
    finally:
        await js.delete_stream(stream)
        await nc.close()
    return produced, consumed


RAW: dict[str, Callable[[str], Awaitable[tuple[float, float]]]] = {
    "kafka": raw_kafka,
    "nats": raw_nats,
}

TARGETS = {
    ("memory", "broker.consume"): ">= 1,000,000 records/s",
    ("sqlite", "broker.produce"): ">= 100,000 records/s",
    ("sqlite", "broker.consume"): ">= 300,000 records/s",
    ("kafka", "broker.produce"): ">= 0.85x raw",
    ("kafka", "broker.consume"): ">= 0.85x raw",
    ("nats", "broker.produce"): ">= 0.85x raw",
    ("nats", "broker.consume"): ">= 0.85x raw",
}


async def bench(backend: str, url: str) -> list[Row]:
    produced, consumed, p50, p99 = await ours(url)
    raw_produced = raw_consumed = None
    if backend in RAW:
        raw_produced, raw_consumed = await RAW[backend](url)
    rows = []
    for name, value, base in (
        ("broker.produce", produced, raw_produced),
        ("broker.consume", consumed, raw_consumed),
    ):
        target = TARGETS.get((backend, name))
        rows.append(
            Row.compared(
                name, backend, value, "records/s", base, **({"target": target} if target else {})
            )
        )
    rows.append(Row.compared("broker.produce_one.p50", backend, p50, "ms", None))
    rows.append(Row.compared("broker.produce_one.p99", backend, p99, "ms", None))
    if backend == "sqlite":  # the embedded log compacts in the producers' process
        c50, c99 = await produce_while_compacting(url)
        rows.append(Row.compared("broker.produce_one.compacting.p50", backend, c50, "ms", None))
        rows.append(Row.compared("broker.produce_one.compacting.p99", backend, c99, "ms", None))
    return rows
