"""Joins: stream-table through a global table, and windowed stream-stream."""

from __future__ import annotations

import asyncio
from typing import Any

import brokers
from streams import App, EventStream, Table
from tests.brokers.conftest import SESSION_TIMEOUT, consume, unique

T0 = 1_700_000_000_000


async def test_stream_table_join_sees_any_key(broker: brokers.Broker) -> None:
    app = App(unique("join"), broker=broker, partitions=4, session_timeout=SESSION_TIMEOUT)
    profiles = app.topic(unique("profiles"), value_type=dict[str, str])
    orders = app.topic(unique("orders"), value_type=int)
    names: Table[str, str] = app.table("names", source=profiles, value_type=str)
    everywhere = app.global_table("all_names", topic=names.changelog)
    joined: list[tuple[str | None, int, str | None]] = []

    @app.agent(profiles)
    async def keep(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            names[event.key] = event.value["name"]

    @app.agent(orders)
    async def enrich(stream: EventStream) -> None:
        async for event, name in stream.join(everywhere):
            joined.append((event.key, event.value, name))

    async with app:
        await profiles.send_many([(f"u{i}", {"name": f"Name {i}"}) for i in range(8)])
        # the owner's changelog is written when its batch ends; every worker's copy follows
        async with asyncio.timeout(40):
            while len(everywhere) < 8:
                await everywhere.catch_up()
        assert dict(everywhere.items()) == {f"u{i}": f"Name {i}" for i in range(8)}
        await orders.send_many([(f"u{i}", i * 10) for i in range(8)] + [("nobody", 1)])
        async with asyncio.timeout(40):
            while len(joined) < 9:  # noqa: ASYNC110 - set by the agent
                await asyncio.sleep(0.02)
    assert sorted(joined, key=str) == sorted(
        [(f"u{i}", i * 10, f"Name {i}") for i in range(8)] + [("nobody", 1, None)], key=str
    )


async def test_windowed_join_pairs_events_close_in_time(broker: brokers.Broker) -> None:
    app = App(unique("wjoin"), broker=broker, partitions=2, session_timeout=SESSION_TIMEOUT)
    clicks = app.topic(unique("clicks"), value_type=dict[str, int])
    buys = app.topic(unique("buys"), value_type=dict[str, int])
    pairs_topic = app.join_windowed(
        clicks, buys, within=10, grace=60, name="click_buy", time_of=lambda e: e.value["at"]
    )

    def ev(seconds: int, n: int) -> dict[str, int]:
        return {"at": T0 + seconds * 1000, "n": n}

    async with app:
        # the two sides arrive out of order (all clicks first): grace lets them still meet
        await clicks.send_many([("a", ev(0, 1)), ("b", ev(0, 2)), ("a", ev(30, 3))])
        await buys.send_many([("a", ev(5, 10)), ("b", ev(15, 20)), ("a", ev(32, 30))])
        async with broker.subscribe(pairs_topic.name) as sub:
            got = await consume(sub, 2)
            assert await sub.getmany(timeout=1.0) == []
    pairs: set[tuple[str, Any, Any]] = set()
    for record in got:
        value = brokers.json.loads(record.value or b"{}")
        pairs.add((value["key"], value["left"]["n"], value["right"]["n"]))
    # a@0 with a@5, a@30 with a@32; b@0 and b@15 are 15 s apart: no pair
    assert pairs == {("a", 1, 10), ("a", 3, 30)}
