"""``pipeline.sum``: per-user sums over 200,000 events (10,000 users, 8 partitions), verified.

Ours: an App folding a table (exactly-once changelog included), timed from the first event
handled (after the group join) until the results are durable: the last batch's table changes
written to the changelog and its positions committed (the app drains), so the figure is events
folded *and kept* per second. The sums are then checked in a fresh replica folded from the
changelog. ``pipeline.sum`` declares the sum as a fold (``@sums.fold``), the way to write one;
``pipeline.sum.agent`` writes it as an agent setting the table per event
(``sums[event.key] += ...`` in an ``async for``), the general path any agent code takes.
Baseline, in the same run on the same broker: a raw aiokafka (Kafka) or nats-py (NATS) consumer
loop doing the same sum in a dict; on memory and sqlite there is no raw client, so no ratio.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections import Counter

import brokers
from brokers import json
from streams import App, Event, EventStream
from tests.bench._results import Row

N = 200_000
USERS = 10_000
PARTITIONS = 8


def _payloads() -> tuple[list[tuple[str, dict[str, int]]], Counter[str]]:
    events = [(f"user-{i % USERS}", {"amount": i % 7 + 1}) for i in range(N)]
    expected: Counter[str] = Counter()
    for user, value in events:
        expected[user] += value["amount"]
    return events, expected


def settle_garbage() -> None:
    """Collect what publishing left, before timing: in one process, the collector's work for
    200,000 records just made (a full collection, once they pile up) would land in the
    loop timed next; the same for ours and the raw loops."""
    gc.collect()


async def ours(url: str, *, fold: bool = True) -> float:
    """Publish first, then time the app from its start until every sum is in the table."""
    events, expected = _payloads()
    name = f"bench{uuid.uuid4().hex[:6]}"
    async with brokers.connect(url) as log:  # one connection: memory:// keeps its log
        publisher = App(name, broker=log, partitions=PARTITIONS)
        topic = publisher.topic(f"{name}-events", value_type=dict[str, int])
        async with publisher:
            for i in range(0, N, 5000):
                await topic.send_many(events[i : i + 5000])
        settle_garbage()

        app = App(name, broker=log, partitions=PARTITIONS, session_timeout=6.0)
        topic = app.topic(f"{name}-events", value_type=dict[str, int])
        sums = app.table("sums", source=topic, default=int)
        done = asyncio.Event()
        seen = 0
        first = 0.0

        def counted() -> None:
            nonlocal seen, first
            if not seen:
                first = time.perf_counter()  # steady state: after the group join
            seen += 1
            if seen == N:
                done.set()

        if fold:

            @sums.fold
            def add(total: int, event: Event[str, dict[str, int]]) -> int:
                counted()
                return total + event.value["amount"]

        else:

            @app.agent(topic, name="add")
            async def add_each(stream: EventStream) -> None:
                async for event in stream:
                    counted()
                    sums[event.key] += event.value["amount"]

        async with app:
            await asyncio.wait_for(done.wait(), 600)
            # the last batch is not durable yet: draining flushes its changes and commits
            await app.stop()
            elapsed = time.perf_counter() - first

        reader = App(name, broker=log, partitions=PARTITIONS)
        durable = reader.table("sums", source=reader.topic(topic.name, value_type=dict[str, int]))
        async with reader:
            await durable.load()
            assert dict(durable.items()) == dict(expected), "pipeline.sum: wrong sums"
            group = log.subscribe(topic.name, group=f"{name}.add", session_timeout=6.0)
            async with group:
                ends = await log.end_offsets(topic.name)
                for partition, end in ends.items():
                    committed = await group.committed(brokers.TopicPartition(topic.name, partition))
                    assert committed == end, "pipeline.sum: positions not committed"
    return N / elapsed


async def raw_kafka(url: str) -> float:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    events, expected = _payloads()
    bootstrap = url.removeprefix("kafka://")
    topic = f"rawsum-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(0, N, 5000):
            futures = [
                await producer.send(topic, json.dumps(v), key=k.encode())
                for k, v in events[i : i + 5000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    settle_garbage()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    sums: Counter[str] = Counter()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started = time.perf_counter()
        seen = 0
        while seen < N:
            for records in (await consumer.getmany(timeout_ms=5000, max_records=5000)).values():
                for r in records:
                    sums[r.key.decode()] += json.loads(r.value)["amount"]
                seen += len(records)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    assert sums == expected
    return N / elapsed


async def raw_nats(url: str) -> float:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from brokers import default_partitioner

    events, expected = _payloads()
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    stream = f"RAWSUM{uuid.uuid4().hex[:6]}"
    await js.add_stream(name=stream, subjects=[f"{stream}.*"])
    try:
        for i in range(0, N, 5000):
            futures = [
                await js.publish_async(
                    f"{stream}.{default_partitioner(k.encode(), PARTITIONS)}",
                    json.dumps(v),
                    headers={"key": k},
                )
                for k, v in events[i : i + 5000]
            ]
            await asyncio.gather(*futures)
        settle_garbage()
        sub = await js.pull_subscribe(
            f"{stream}.*",
            durable=None,
            stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        sums: Counter[str] = Counter()
        started = time.perf_counter()
        seen = 0
        while seen < N:
            msgs = await sub.fetch(5000, timeout=5)
            for m in msgs:
                sums[m.headers["key"]] += json.loads(m.data)["amount"]  # type: ignore[index]
            seen += len(msgs)
        elapsed = time.perf_counter() - started
        await sub.unsubscribe()
    finally:
        await js.delete_stream(stream)
        await nc.close()
    assert sums == expected
    return N / elapsed


TARGETS = {
    "memory": ">= 500,000 events/s",
    "kafka": ">= 0.7x raw",
    "nats": ">= 0.7x raw",
}


async def bench(backend: str, url: str) -> list[Row]:
    folded = await ours(url)
    each = await ours(url, fold=False)
    baseline = None
    if backend == "kafka":
        baseline = await raw_kafka(url)
    elif backend == "nats":
        baseline = await raw_nats(url)
    target = TARGETS.get(backend)
    return [
        Row.compared(
            "pipeline.sum",
            backend,
            folded,
            "events/s",
            baseline,
            **({"target": target} if target else {}),
        ),
        Row.compared("pipeline.sum.agent", backend, each, "events/s", baseline),
    ]
