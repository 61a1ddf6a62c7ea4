"""Records on another partition than their key's (a producer with another partitioner)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import brokers
from brokers import ProducerRecord, default_partitioner
from streams import App, DeclarationError, Event, EventStream, Table
from tests.brokers.conftest import SESSION_TIMEOUT, consume, unique

PARTITIONS = 4
KEYS = [f"k{i}" for i in range(8)]


def home(key: str) -> int:
    return default_partitioner(key.encode(), PARTITIONS)


def placed_and_misplaced() -> list[ProducerRecord]:
    """Each key once where murmur2 puts it, once on the next partition (as CRC32 might)."""
    records = []
    for key in KEYS:
        records.append(ProducerRecord(b"1", key.encode()))
        records.append(ProducerRecord(b"1", key.encode(), (home(key) + 1) % PARTITIONS))
    return records


Seen = list[tuple[str, int, bool]]  # key, partition, rerouted


def recorder(seen: Seen) -> Callable[[Event[str, int]], None]:
    def record(event: Event[str, int]) -> None:
        assert event.key is not None
        seen.append((event.key, event.partition, event.header("x-rerouted-by") is not None))

    return record


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(60):
        while not predicate():  # noqa: ASYNC110 - set by the agents
            await asyncio.sleep(0.02)


async def test_misplaced_records_are_rerouted_dead_lettered_or_accepted(
    broker: brokers.Broker,
) -> None:
    app = App(
        unique("placed"), broker=broker, partitions=PARTITIONS, session_timeout=SESSION_TIMEOUT
    )
    counted = app.topic(unique("counted"), value_type=int)
    lettered = app.topic(unique("lettered"), value_type=int)
    watched = app.topic(unique("watched"), value_type=int)
    counts: Table[str, int] = app.table("counts", source=counted, default=int)
    kept: Table[str, int] = app.table("kept", source=lettered, default=int)
    by_count: Seen = []
    by_fix: Seen = []
    by_see: Seen = []

    @app.agent(counted)  # feeds a table: reroutes by default
    async def count(stream: EventStream) -> None:
        async for event in stream:
            recorder(by_count)(event)
            assert event.key is not None
            counts[event.key] += event.value

    @app.agent(lettered, on_misplaced="dead_letter")
    async def keep(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            kept[event.key] += event.value

    # a topic feeding no table: one agent reroutes, the other accepts (the default)
    app.agent(watched, name="fix", on_misplaced="reroute")(recorder(by_fix))
    app.agent(watched, name="see")(recorder(by_see))

    async with app:
        for topic in (counted, lettered, watched):
            await broker.produce_batch(topic.name, placed_and_misplaced())
        await wait_for(lambda: dict(counts.items()) == dict.fromkeys(KEYS, 2))
        await wait_for(lambda: dict(kept.items()) == dict.fromkeys(KEYS, 1))
        await wait_for(lambda: len(by_fix) == 16 and len(by_see) == 16)

        # the rerouter crashed after sending a copy, before committing: it sends it again
        async with broker.subscribe(counted.name) as sub:
            copies = [r for r in await consume(sub, 24) if dict(r.headers).get("x-rerouted-by")]
        assert len(copies) == 8
        (again,) = [r for r in copies if r.key == b"k0"]
        await broker.produce_batch(
            counted.name, [ProducerRecord(again.value, again.key, again.partition, again.headers)]
        )
        await counted.send("k0", 5)  # after the copy, on the same partition
        await wait_for(lambda: len(by_count) == 16 + 2)
        assert dict(counts.items()) == {**dict.fromkeys(KEYS, 2), "k0": 7}, "copy counted once"

        async with broker.subscribe(lettered.dead_letter_topic) as sub:
            letters = await consume(sub, 8)

    assert all(p == home(k) for k, p, _ in by_count), "the table's agent saw every key at home"
    assert sum(rerouted for *_, rerouted in by_count) == 8 + 1
    assert all(p == home(k) for k, p, _ in by_fix)
    assert sorted((k, p) for k, p, _ in by_see) == sorted(
        [(k, home(k)) for k in KEYS] + [(k, (home(k) + 1) % PARTITIONS) for k in KEYS]
    ), "the accepting agent saw each record where it landed, and none of the copies"
    assert not any(rerouted for *_, rerouted in by_see)
    for letter in letters:
        headers = dict(letter.headers)
        key = (letter.key or b"").decode()
        assert int(headers["x-source-partition"]) == (home(key) + 1) % PARTITIONS
        assert f"belongs on partition {home(key)}".encode() in headers["x-dead-letter-reason"]
    assert sorted((r.key or b"").decode() for r in letters) == KEYS
    assert await broker.end_offsets(counted.dead_letter_topic) == {0: 0}


async def test_an_agent_that_feeds_tables_cannot_accept_misplaced_records() -> None:
    app = App("accepting", broker="memory://")
    views = app.topic("views", value_type=int)
    app.table("counts", source=views, default=int)
    app.agent(views, on_misplaced="accept")(lambda event: None)
    with pytest.raises(DeclarationError, match="wrong partition of 'counts'"):
        async with app:
            pass
    with pytest.raises(DeclarationError, match="on_misplaced"):
        app.agent(views, on_misplaced="ignore")  # type: ignore[arg-type]


async def test_an_agent_that_changes_no_table_accepts_records_where_they_land(
    broker: brokers.Broker,
) -> None:
    """On a topic that feeds a table, the table's agent reroutes; another agent, which
    changes no table (``tables=[]``), accepts by default: it sees each record where it
    landed, and none of the copies."""
    app = App(
        unique("watching"), broker=broker, partitions=PARTITIONS, session_timeout=SESSION_TIMEOUT
    )
    counted = app.topic(unique("counted"), value_type=int)
    counts: Table[str, int] = app.table("counts", source=counted, default=int)
    seen: Seen = []

    @app.agent(counted, tables=[counts])
    async def count(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            counts[event.key] += event.value

    app.agent(counted, name="watch", tables=[])(recorder(seen))

    async with app:
        assert app.agents["watch"].misplaced_policy() == "accept"
        assert app.agents["count"].misplaced_policy() == "reroute"
        await broker.produce_batch(counted.name, placed_and_misplaced())
        await wait_for(lambda: dict(counts.items()) == dict.fromkeys(KEYS, 2))
        await wait_for(lambda: len(seen) == 16)
        await asyncio.sleep(0.2)  # the copies, had the watcher taken them, would show by now
    assert sorted((k, p) for k, p, _ in seen) == sorted(
        [(k, home(k)) for k in KEYS] + [(k, (home(k) + 1) % PARTITIONS) for k in KEYS]
    )
    assert not any(rerouted for *_, rerouted in seen)
