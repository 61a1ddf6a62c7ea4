"""Testing your own pipeline on real brokers, with the pytest plugin neuroplex installs.

Run: pytest docs/examples/test_pipeline.py --neuroplex-backends=memory,sqlite
"""

import asyncio
import uuid
from collections import Counter

import pytest

import brokers
from brokers import Broker, ProducerRecord, TopicPartition, TopicSpec
from brokers import json as jsonlib
from brokers.testing import provide


async def page_counts(log: Broker, topic: str) -> dict[str, int]:
    """The pipeline under test: views per page, over everything the topic holds now."""
    ends = await log.end_offsets(topic)
    todo = {p for p, end in ends.items() if end > 0}
    counts: Counter[str] = Counter()
    if not todo:
        return {}
    async with log.subscribe(topic, partitions=sorted(todo)) as sub:
        while todo:
            for record in await sub.getmany(timeout=1.0):
                if record.offset < ends[record.partition] and record.value is not None:
                    counts[jsonlib.loads(record.value)["page"]] += 1
            todo = {p for p in todo if (sub.position(TopicPartition(topic, p)) or 0) < ends[p]}
    return dict(counts)


def views(*pages: str) -> list[ProducerRecord]:
    return [ProducerRecord(jsonlib.dumps({"page": page}), key=page.encode()) for page in pages]


@pytest.mark.asyncio
async def test_page_counts(broker: Broker) -> None:
    """Runs once per backend ([memory], [sqlite], [kafka], [nats]) on an open broker."""
    topic = f"views-{uuid.uuid4().hex[:8]}"  # unique: one server serves the whole session
    await broker.create_topic(TopicSpec(topic, partitions=3))
    await broker.produce_batch(topic, views("/", "/docs", "/", "/pricing", "/"))
    assert await page_counts(broker, topic) == {"/": 3, "/docs": 1, "/pricing": 1}


@pytest.mark.backends("memory", "sqlite")  # only where this test makes sense
@pytest.mark.asyncio
async def test_empty_topic(broker_url: str) -> None:
    """``broker_url`` when the test opens (or spawns processes on) the broker itself."""
    async with brokers.connect(broker_url) as log:
        await log.create_topic(TopicSpec("empty", partitions=2))
        assert await page_counts(log, "empty") == {}


def test_without_pytest_fixtures() -> None:
    """The context managers work anywhere: scripts, notebooks, other test runners."""

    async def scenario(url: str) -> dict[str, int]:
        async with brokers.connect(url) as log:
            await log.create_topic(TopicSpec("views", partitions=1))
            await log.produce_batch("views", views("/a", "/a"))
            return await page_counts(log, "views")

    with provide("memory") as provided:  # or provide("kafka"), provide("nats") ...
        assert asyncio.run(scenario(provided.url)) == {"/a": 2}
