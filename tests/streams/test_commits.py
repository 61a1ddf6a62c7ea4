"""When agents flush and commit: batches held together under load, at once when caught up."""

from __future__ import annotations

import asyncio

import pytest

import brokers
from brokers import ProducerRecord
from streams import App, DeclarationError, EventStream, Table
from tests.brokers.conftest import SESSION_TIMEOUT, unique

HOUR = 3600.0


def counting_app(broker: brokers.Broker, name: str, topic: str, commit_interval: float) -> App:
    app = App(
        name,
        broker=broker,
        partitions=2,
        session_timeout=SESSION_TIMEOUT,
        commit_interval=commit_interval,
    )
    views = app.topic(topic, value_type=int)
    counts = app.table("counts", source=views, default=int)

    @app.agent(views)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            counts[event.key] += event.value

    return app


async def replica(broker: brokers.Broker, name: str, topic: str) -> dict[str, int]:
    """The counts table as a fresh reader folds it from the changelog."""
    reader = counting_app(broker, name, topic, 0.0)
    reader.agents.clear()  # no agent: no group membership
    async with reader:
        table = reader.tables["counts"]
        assert isinstance(table, Table)
        await table.load()
        return dict(table.items())


async def changelog_records(broker: brokers.Broker, app: App, key: bytes) -> int:
    table = app.tables["counts"]
    assert isinstance(table, Table)
    name = table.changelog.name
    ends = await broker.end_offsets(name)
    found = 0
    async with broker.subscribe(name, start="earliest") as sub:
        positions = dict.fromkeys(ends, 0)
        async with asyncio.timeout(30):
            while any(positions[p] < end for p, end in ends.items()):
                for record in await sub.getmany(timeout=0.5):
                    positions[record.partition] = record.offset + 1
                    found += record.key == key
    return found


async def test_an_agent_that_caught_up_flushes_without_waiting_for_the_interval(
    broker: brokers.Broker,
) -> None:
    name, topic = unique("caught"), unique("views")
    app = counting_app(broker, name, topic, commit_interval=HOUR)
    async with app:
        views = app.topics[topic]
        for i in range(30):
            await views.send(f"user-{i % 3}", 1)
        expected = {"user-0": 10, "user-1": 10, "user-2": 10}
        async with asyncio.timeout(60):
            # a reader sees the changelog while the app still runs: the flush did not wait
            # for the hour-long interval, only for the log to have nothing more ready
            while await replica(broker, name, topic) != expected:  # noqa: ASYNC110 - a log
                await asyncio.sleep(0.2)


@pytest.mark.backends("memory", "sqlite")  # logs where every record is ready at once
async def test_batches_ready_at_once_are_flushed_and_committed_as_one(
    broker: brokers.Broker,
) -> None:
    """3,000 events of one key fetched 1,000 at a time: one changelog record, not three."""
    found = {}
    for interval in (HOUR, 0.0):
        name, topic = unique("held"), unique("views")
        await broker.create_topic(brokers.TopicSpec(topic, partitions=2))
        await broker.produce_batch(topic, [ProducerRecord(b"1", b"k") for _ in range(3000)])
        app = counting_app(broker, name, topic, commit_interval=interval)
        async with app:
            counts = app.tables["counts"]
            assert isinstance(counts, Table)
            async with asyncio.timeout(60):
                while "k" not in counts or counts["k"] != 3000:  # noqa: ASYNC110 - by the agent
                    await asyncio.sleep(0.05)
        found[interval] = await changelog_records(broker, app, b"k")
        assert await replica(broker, name, topic) == {"k": 3000}
    assert found[HOUR] == 1, "held batches: the key was written to its changelog once"
    assert found[0.0] >= 3, "commit_interval=0: every fetched batch was flushed on its own"


async def test_an_agent_that_returns_mid_batch_commits_only_what_it_handled(
    broker: brokers.Broker,
) -> None:
    name, topic = unique("early"), unique("views")
    await broker.create_topic(brokers.TopicSpec(topic, partitions=1))
    await broker.produce_batch(topic, [ProducerRecord(str(i).encode()) for i in range(10)])
    handled: list[int] = []

    def build(take: int) -> App:
        app = App(name, broker=broker, partitions=1, session_timeout=SESSION_TIMEOUT)
        views = app.topic(topic, value_type=int)

        @app.agent(views)
        async def first(stream: EventStream) -> None:
            async for event in stream:
                handled.append(event.value)
                if len(handled) == take:
                    return  # the rest of the fetched batch stays unread

        return app

    async with asyncio.timeout(90):
        async with build(3) as app:
            await app.wait()
        assert handled == [0, 1, 2]
        # had the whole fetched batch been committed, this run would wait for ever; had
        # nothing been, it would see 0, 1, 2 again
        async with build(10) as app:
            await app.wait()
    assert handled == list(range(10)), "the second run starts after the three handled"


def test_commit_interval_is_checked() -> None:
    with pytest.raises(DeclarationError, match="commit_interval"):
        App("bad", commit_interval=-1)
