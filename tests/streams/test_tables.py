"""Tables: restore, exactly-once state across replays and kills, and misuse."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import Counter

import pytest

import brokers
from brokers import TopicPartition
from streams import App, DeclarationError, EventStream, Table, TableError
from tests.brokers.conftest import SESSION_TIMEOUT, unique
from tests.streams._counting import build, spawn


async def settle(table: Table[str, int], expected: dict[str, int], timeout: float = 60) -> None:
    """Wait until the table holds ``expected`` (agents fold in the background)."""
    async with asyncio.timeout(timeout):
        while dict(table.items()) != expected:  # noqa: ASYNC110 - state lives in the agent
            await asyncio.sleep(0.05)


async def read_counts(url: str, name: str, topic: str) -> dict[str, int]:
    """A fresh replica of the counts table, folded from its changelog."""
    app = build(url, name, topic)
    app.agents.clear()  # a reader: no agent, so no group membership
    async with app:
        table = app.tables["counts"]
        assert isinstance(table, Table)
        await table.load()
        return dict(table.items())


async def records_per_partition(log: brokers.Broker, topic: str) -> Counter[int]:
    """How many records each partition of ``topic`` holds now (read to the end offsets)."""
    ends = await log.end_offsets(topic)
    found: Counter[int] = Counter()
    todo = {p for p, end in ends.items() if end > 0}
    async with log.subscribe(topic, partitions=sorted(ends)) as sub:
        async with asyncio.timeout(30):
            while todo:
                for record in await sub.getmany(timeout=0.5):
                    found[record.partition] += 1
                todo = {p for p in todo if (sub.position(TopicPartition(topic, p)) or 0) < ends[p]}
    return found


async def rewind_group(log: brokers.Broker, topic: str, group: str, *, partitions: int) -> None:
    """Commit offset 0 for every partition of ``topic`` in ``group``: each event comes again."""
    async with log.subscribe(topic, group=group, session_timeout=SESSION_TIMEOUT) as sub:
        async with asyncio.timeout(40):
            while len(sub.assignment) < partitions:
                await sub.getmany(timeout=0.2)
        await sub.commit({TopicPartition(topic, p): 0 for p in range(partitions)})


def counting_app(log: brokers.Broker, name: str, topic: str) -> tuple[App, Table[str, int]]:
    """The app over an open broker, so memory:// keeps its log between two runs."""
    app = App(name, broker=log, partitions=4, session_timeout=SESSION_TIMEOUT)
    views = app.topic(topic, value_type=int)
    counts: Table[str, int] = app.table("counts", source=views, default=int)

    @app.agent(views)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            counts[event.key] += event.value

    return app, counts


async def test_counts_survive_a_restart_without_double_counting(broker: brokers.Broker) -> None:
    name, topic = unique("counter"), unique("views")
    expected: Counter[str] = Counter()
    app, counts = counting_app(broker, name, topic)
    async with app:
        batch = [(f"u{i % 7}", 1) for i in range(70)]
        await app.topics[topic].send_many(batch)
        expected.update(k for k, _ in batch)
        await settle(counts, dict(expected))
    to_replay = await records_per_partition(broker, counts.changelog.name)
    # a second run restores from the changelog and goes on from the committed positions
    progress: dict[int, list[tuple[int, int]]] = {p: [] for p in range(4)}
    app, counts = counting_app(broker, name, topic)
    counts.on_restore = lambda table, p, done, total: progress[p].append((done, total))
    async with app:
        batch = [(f"u{i % 5}", 2) for i in range(10)]
        await app.topics[topic].send_many(batch)
        for key, value in batch:
            expected[key] += value
        await settle(counts, dict(expected))
    for p, reports in progress.items():
        # the first restore of each partition (a rebalance may restore one again, later)
        last = [i for i, (done, total) in enumerate(reports) if done == total]
        assert last, f"partition {p}: a last report says it is restored: {reports}"
        first = reports[: last[0] + 1]
        read = [done for done, _ in first]
        assert read == sorted(read), f"partition {p}: records read never go back"
        assert all(done <= total for done, total in first), f"partition {p}: {first}"
        assert first[-1] == (to_replay[p], to_replay[p]), (
            f"partition {p}: restored, it read every changelog record there was to replay"
        )


async def test_a_full_replay_applies_nothing_twice(broker: brokers.Broker) -> None:
    name, topic = unique("replay"), unique("views")
    app, counts = counting_app(broker, name, topic)
    async with app:
        await app.topics[topic].send_many([(f"u{i % 3}", 1) for i in range(30)])
        await settle(counts, {"u0": 10, "u1": 10, "u2": 10})
    await rewind_group(broker, topic, f"{name}.count", partitions=4)
    app, counts = counting_app(broker, name, topic)
    async with app:
        await app.topics[topic].send("u0", 5)
        await settle(counts, {"u0": 15, "u1": 10, "u2": 10})


async def test_tables_refuse_writes_that_would_break_their_guarantees(broker_url: str) -> None:
    app = App(unique("misuse"), broker=broker_url, partitions=4, session_timeout=SESSION_TIMEOUT)
    views = app.topic(unique("views"), value_type=int)
    counts: Table[str, int] = app.table("counts", source=views, default=int)
    errors: list[TableError] = []

    @app.agent(views)
    async def wrong_key(stream: EventStream) -> None:
        async for event in stream:
            other = next(
                f"x{i}" for i in range(100) if counts.partition_of(f"x{i}") != event.partition
            )
            try:
                counts[other] = 1
            except TableError as exc:
                errors.append(exc)

    async with app:
        with pytest.raises(TableError, match="inside an agent"):
            counts["u"] = 1
        await views.send("u", 1)
        async with asyncio.timeout(40):
            while not errors:  # noqa: ASYNC110 - set by the agent
                await asyncio.sleep(0.05)
    assert "re-key the stream" in str(errors[0])


@pytest.mark.chaos
@pytest.mark.timeout(600)  # 20 restarts, each waiting out the killed member's session
@pytest.mark.backends("sqlite", "kafka", "nats")
@pytest.mark.parametrize(("mode", "kills"), [("counts", 20), ("folded", 8)])
async def test_sigkill_at_random_moments_keeps_the_table_exact(
    broker_url: str, mode: str, kills: int
) -> None:
    """``counts``: an agent sets the table; ``folded``: a fold (``@table.fold``) does."""
    name, topic = unique("chaos"), unique("views")
    rng = random.Random(os.environ.get("NEUROPLEX_CHAOS_SEED", "20"))
    expected: Counter[str] = Counter()
    producer_app = build(broker_url, name, topic)
    producer_app.agents.clear()
    async with producer_app:
        views = producer_app.topics[topic]
        for _kill in range(kills):
            batch = [(f"user-{rng.randrange(50)}", rng.randrange(1, 4)) for _ in range(400)]
            await views.send_many(batch)
            for key, value in batch:
                expected[key] += value
            proc = await spawn(broker_url, name, topic, mode)
            assert proc.stdout is not None
            try:
                # 400 new events are 8 chunks of 50: die after 1 to 6 of them, mid-work
                flushes = rng.randrange(1, 7)
                async with asyncio.timeout(60):
                    for _ in range(flushes):
                        await proc.stdout.readline()
                await asyncio.sleep(rng.random() * 0.3)
            finally:
                with contextlib.suppress(ProcessLookupError):  # it may have died by itself
                    proc.send_signal(signal.SIGKILL)
                await proc.wait()
            assert proc.returncode == -signal.SIGKILL, "the worker died by itself"
        # a last worker runs to the end of the input
        proc = await spawn(broker_url, name, topic, mode, stdout=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(120):
                while True:
                    got = await read_counts(broker_url, name, topic)
                    assert all(got.get(k, 0) <= v for k, v in expected.items()), "double counted"
                    if got == dict(expected):
                        break
                    await asyncio.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()


async def _count_lines(proc: asyncio.subprocess.Process, into: list[int]) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        into[0] += 1


@pytest.mark.backends("sqlite", "kafka", "nats")
async def test_workers_split_partitions_and_take_over_a_killed_one(broker_url: str) -> None:
    name, topic = unique("scale"), unique("views")
    expected: Counter[str] = Counter()
    feeder = build(broker_url, name, topic)
    feeder.agents.clear()
    async with feeder:
        views = feeder.topics[topic]
        a, b = await spawn(broker_url, name, topic), await spawn(broker_url, name, topic)
        flushes_a, flushes_b = [0], [0]
        readers = [
            asyncio.create_task(_count_lines(a, flushes_a)),
            asyncio.create_task(_count_lines(b, flushes_b)),
        ]
        try:
            async with asyncio.timeout(90):
                # keep sending until both workers have handled events: the partitions are split
                while not (flushes_a[0] and flushes_b[0]):
                    batch = [(f"user-{i % 40}", 1) for i in range(200)]
                    await views.send_many(batch)
                    expected.update(k for k, _ in batch)
                    await asyncio.sleep(0.3)
            a.send_signal(signal.SIGKILL)
            await a.wait()
            batch = [(f"user-{i % 40}", 2) for i in range(400)]
            await views.send_many(batch)
            for key, value in batch:
                expected[key] += value
            # the survivor takes over the killed worker's partitions, restoring their state
            async with asyncio.timeout(120):
                while (got := await read_counts(broker_url, name, topic)) != dict(expected):
                    assert all(got.get(k, 0) <= v for k, v in expected.items()), "double counted"
                    await asyncio.sleep(0.5)
        finally:
            for proc in (a, b):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    await proc.wait()
            for reader in readers:
                reader.cancel()


async def test_one_agent_changes_a_table_and_another_agents_failure_never_undoes_it(
    broker: brokers.Broker,
) -> None:
    """Two agents of one topic: the table's writer is named, the other may read it, and a
    failure of the other (rolled back, skipped) leaves the writer's changes alone."""
    app = App(unique("two"), broker=broker, partitions=1, session_timeout=SESSION_TIMEOUT)
    views = app.topic(unique("views"), value_type=int)
    counts: Table[str, int] = app.table("counts", source=views, default=int)
    refused: list[TableError] = []
    skipped: list[int] = []

    @app.agent(views, tables=[counts])
    async def count(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            counts[event.key] += 1
            await asyncio.sleep(0.1)  # say, a send: the other agent runs meanwhile

    @app.agent(views, on_error="skip")
    async def check(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            try:
                counts[event.key] = -1
            except TableError as exc:
                refused.append(exc)
            await asyncio.sleep(0.15)  # the writer changes the table meanwhile
            if event.value == 13:
                skipped.append(event.offset)
                raise ValueError("13")  # rolled back: its own changes only (none)

    async with app:
        await views.send_many([("a", 13), ("a", 1), ("a", 2), ("a", 3)])
        await settle(counts, {"a": 4})
        async with asyncio.timeout(40):
            while not skipped:  # noqa: ASYNC110 - set by the agent
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the writer is past the other's failure
        assert dict(counts.items()) == {"a": 4}
    assert "is changed by agent 'count', not 'check'" in str(refused[0])


def test_a_table_with_several_possible_writers_is_a_declaration_error() -> None:
    app = App(unique("writers"), broker="memory://")
    views = app.topic(unique("views"), value_type=int)
    counts: Table[str, int] = app.table("counts", source=views, default=int)
    other = app.topic(unique("other"), value_type=int)

    async def idle(stream: EventStream) -> None:
        async for _ in stream:
            continue

    app.agent(views, name="one")(idle)
    app.agent(views, name="two")(idle)

    with pytest.raises(DeclarationError, match=r"name it with @app.agent\(topic, tables="):
        asyncio.run(app.__aenter__())
    with pytest.raises(DeclarationError, match="is not a table of"):
        app.agent(other, tables=[counts])
    app.agent(views, name="three", tables=[counts])(idle)
    app.agent(views, name="four", tables=[counts])(idle)
    with pytest.raises(DeclarationError, match="named in tables= by agents"):
        asyncio.run(app.__aenter__())


async def test_a_members_failure_undoes_only_its_own_changes(broker: brokers.Broker) -> None:
    """``concurrency=2``: two members, one per partition, change one table. One fails on an
    event (skipped) while the other works: the failed event leaves nothing, the other
    member's events all count, and the changelog says the same."""
    name = unique("members")
    app = App(name, broker=broker, partitions=2, session_timeout=SESSION_TIMEOUT)
    views = app.topic(unique("views"), value_type=int)
    counts: Table[str, int] = app.table("counts", source=views, default=int)
    skipped: list[int] = []

    @app.agent(views, concurrency=2, on_error="skip")
    async def count(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            counts[event.key] += 1
            await asyncio.sleep(0.3 if event.value == 13 else 0.1)  # the other member works
            if event.value == 13:
                skipped.append(event.offset)
                raise ValueError("13")

    by_partition: dict[int, str] = {}
    for i in range(100):
        by_partition.setdefault(brokers.default_partitioner(f"k{i}".encode(), 2), f"k{i}")
    bad, good = by_partition[0], by_partition[1]
    async with app:
        await views.send_many([(bad, 13), (good, 1), (good, 2), (good, 3), (good, 4)])
        await settle(counts, {good: 4})
        async with asyncio.timeout(40):
            while not skipped:  # noqa: ASYNC110 - set by the agent
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the good member is past the other's failure
        assert dict(counts.items()) == {good: 4}
    reader = App(name, broker=broker, partitions=2)
    replica: Table[str, int] = reader.table(
        "counts", source=reader.topic(views.name, value_type=int)
    )
    async with reader:
        await replica.load()
        assert dict(replica.items()) == {good: 4}


async def test_a_skipped_event_that_wrote_a_new_key_leaves_nothing(broker: brokers.Broker) -> None:
    """The agent writes a key never seen, then fails on the event: the rollback removes the
    key, the batch's flush has nothing to write for its partition, and the agent goes on."""
    name = unique("newkey")
    app = App(name, broker=broker, partitions=1, session_timeout=SESSION_TIMEOUT)
    views = app.topic(unique("views"), value_type=int)
    counts: Table[str, int] = app.table("counts", source=views, default=int)

    @app.agent(views, on_error="skip")
    async def count(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            counts[event.key] += event.value
            if event.value == 13:
                raise ValueError("13")

    async with app:
        await views.send("fresh", 13)
        await asyncio.sleep(0.3)  # its batch ends with nothing to write
        await views.send("a", 1)
        await settle(counts, {"a": 1})
    assert await records_per_partition(broker, counts.changelog.name) == Counter({0: 1})
