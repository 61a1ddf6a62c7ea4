"""The sqlite state store: restarts replay only the changelog tail; state beyond the cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import brokers
from brokers import ConfigurationError
from streams import App, DeclarationError, EventStream, Table
from tests.brokers.conftest import SESSION_TIMEOUT, unique


def counting(
    log: brokers.Broker, name: str, topic: str, state: Path
) -> tuple[App, Table[str, int]]:
    app = App(name, broker=log, partitions=2, session_timeout=SESSION_TIMEOUT, state_dir=state)
    views = app.topic(topic, value_type=int)
    counts: Table[str, int] = app.table("counts", source=views, default=int, store="sqlite")

    @app.agent(views)
    async def count(stream: EventStream) -> None:
        async for chunk in stream.take(1000, within=0.05):
            for event in chunk:
                assert event.key is not None
                counts[event.key] += event.value

    return app, counts


async def run_until(app: App, counts: Table[str, int], keys: int, total: int) -> None:
    async with app:
        async with asyncio.timeout(120):
            while (  # noqa: ASYNC110 - folded by the agent
                len(counts.partitions) < 2
                or len(counts) < keys
                or sum(v for _, v in counts.items()) < total
            ):
                await asyncio.sleep(0.1)


async def test_a_restart_replays_only_the_changelog_tail(
    broker: brokers.Broker, tmp_path: Path
) -> None:
    name, topic = unique("store"), unique("views")
    keys = 12_000  # more than the store's in-memory cache per partition map
    app, counts = counting(broker, name, topic, tmp_path)
    async with app:
        await app.topics[topic].send_many([(f"k{i}", 1) for i in range(keys)])
    await run_until(*counting(broker, name, topic, tmp_path), keys, keys)

    read: list[int] = []
    app, counts = counting(broker, name, topic, tmp_path)
    counts.on_restore = lambda table, p, done, total: read.append(done)
    async with app:
        await app.topics[topic].send_many([("k1", 5), ("k7", 5)])
        async with asyncio.timeout(120):
            while len(counts.partitions) < 2 or (counts.get("k1"), counts.get("k7")) != (6, 6):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert len(counts) == keys
        assert sum(v for _, v in counts.items()) == keys + 10
    assert sum(read) == 0, "the local store held everything: no changelog record was read"
    assert (tmp_path / name / "counts.db").exists()


@pytest.mark.backends("memory")  # the local store's bookkeeping, not a log feature
async def test_a_local_file_never_holds_changes_the_changelog_lacks(
    broker: brokers.Broker, tmp_path: Path
) -> None:
    """A partition taken away between a change and its flush, then given back (sqlite store).

    Meanwhile another partition's flush commits the file: the change must not go with it, or
    the events behind it, which come again, would be skipped and never reach the changelog.
    """
    name, topic = unique("fileahead"), unique("views")
    app = App(
        name, broker=broker, partitions=2, session_timeout=SESSION_TIMEOUT, state_dir=tmp_path
    )
    views = app.topic(topic, value_type=int)
    counts: Table[str, int] = app.table("counts", source=views, default=int, store="sqlite")
    source = brokers.TopicPartition(topic, 0)  # where "a" is; "d" is on partition 1
    after_handback: list[int] = []

    @app.agent(views)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            counts[event.key] += event.value
            if event.value == 100:  # "a": the group rebalances mid-batch, p0 goes
                await counts.on_revoked(frozenset({source}))
            if event.value == 200:  # a later batch: p0 comes back
                await counts.on_assigned(frozenset({source}))
                after_handback.append(counts["a"])

    async with app:
        await views.send("a", 1)
        async with asyncio.timeout(60):
            while "a" not in counts or counts["a"] != 1:  # noqa: ASYNC110 - by the agent
                await asyncio.sleep(0.05)
        # one batch: "a" changes and its partition goes; "d" (partition 1) is flushed after
        await views.send_many([("a", 100), ("d", 1)])
        async with asyncio.timeout(60):
            while "d" not in counts:  # noqa: ASYNC110 - by the agent
                await asyncio.sleep(0.05)
        await views.send("d", 200)
        async with asyncio.timeout(60):
            while not after_handback:  # noqa: ASYNC110 - by the agent
                await asyncio.sleep(0.05)
    assert after_handback == [1], "taken back, the table holds what the changelog holds"


def test_standby_with_the_sqlite_store_is_refused_when_declared() -> None:
    app = App(unique("standby"), broker="memory://")
    views = app.topic("views", value_type=int)
    with pytest.raises(DeclarationError) as info:
        app.table("counts", source=views, store="sqlite", standby=True)
    assert isinstance(info.value, ConfigurationError)
    assert "standby=True" in str(info.value)
    assert "store='memory', standby=True" in str(info.value), "it says what to choose"
    assert "counts" not in app.tables
    assert list(app.topics) == ["views"], "nothing of the table was declared"
    # either on its own is fine
    app.table("counts", source=views, store="sqlite")
    app.table("copies", source=views, standby=True)


def standby_worker(log: brokers.Broker, name: str, topic: str) -> tuple[App, Table[str, int]]:
    app = App(name, broker=log, partitions=4, session_timeout=SESSION_TIMEOUT)
    views = app.topic(topic, value_type=int)
    counts: Table[str, int] = app.table("counts", source=views, default=int, standby=True)

    @app.agent(views)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            counts[event.key] += event.value

    return app, counts


async def test_a_standby_takes_over_from_its_warm_copy(broker: brokers.Broker) -> None:
    name, topic = unique("standby"), unique("views")
    first, first_counts = standby_worker(broker, name, topic)
    second, second_counts = standby_worker(broker, name, topic)
    read: list[tuple[int, int]] = []
    second_counts.on_restore = lambda table, p, done, total: read.append((p, done))
    expected = {f"k{i}": 1 for i in range(40)}
    async with second:
        async with first:
            await first.topics[topic].send_many([(k, 1) for k in expected])
            async with asyncio.timeout(60):
                # split between the two, and every key counted by its owner
                while (  # noqa: ASYNC110 - folded by the agents
                    not first_counts.partitions
                    or not second_counts.partitions
                    or len(first_counts) + len(second_counts) < 40
                ):
                    await asyncio.sleep(0.05)
            taken_over = first_counts.partitions
            read.clear()
            await asyncio.sleep(1.0)  # the first worker's last changelog reaches the standby
        # the first worker left: the second owns everything, from its warm copies
        async with asyncio.timeout(60):
            while dict(second_counts.items()) != expected:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    replayed = sum(done for p, done in read if p in taken_over)
    assert replayed == 0, "the warm copy was current: no changelog record had to be read"


async def test_a_warm_copy_never_holds_changes_the_changelog_lacks(broker: brokers.Broker) -> None:
    """A partition taken away between a change and its flush, then given back.

    The events behind the unflushed change are not committed, so they come again; the table
    must not already hold them (they would be skipped, and never reach the changelog).
    """
    name, topic = unique("ahead"), unique("views")
    app = App(name, broker=broker, partitions=1, session_timeout=SESSION_TIMEOUT)
    views = app.topic(topic, value_type=int)
    counts: Table[str, int] = app.table("counts", source=views, default=int, standby=True)
    source = brokers.TopicPartition(topic, 0)
    after_handback: list[int] = []

    @app.agent(views)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            counts["k"] += event.value
            if event.value == 100:
                # what the group does when it rebalances mid-batch (the agent code itself
                # never calls these): the partition goes, and comes back
                await counts.on_revoked(frozenset({source}))
                await counts.on_assigned(frozenset({source}))
                after_handback.append(counts["k"])

    async with app:
        await views.send("k", 1)
        async with asyncio.timeout(60):
            while "k" not in counts or counts["k"] != 1:  # noqa: ASYNC110 - by the agent
                await asyncio.sleep(0.05)
        await views.send("k", 100)
        async with asyncio.timeout(60):
            while not after_handback:  # noqa: ASYNC110 - by the agent
                await asyncio.sleep(0.05)
    assert after_handback == [1], "taken back, the table holds what the changelog holds"
