"""group_by: re-keying through an internal topic, exactly-once state behind it; through()."""

from __future__ import annotations

import asyncio
from collections import Counter

import brokers
from streams import App, Event, EventStream, Table
from tests.brokers.conftest import SESSION_TIMEOUT, consume, unique


async def settle(table: Table[str, int], expected: dict[str, int], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while dict(table.items()) != expected:  # noqa: ASYNC110 - state lives in the agent
            await asyncio.sleep(0.05)


def user_of(event: Event[str, dict[str, str]]) -> str:
    return event.value["user"]


async def test_group_by_rekeys_and_a_repeated_forward_is_not_counted_twice(
    broker: brokers.Broker,
) -> None:
    app = App(unique("regroup"), broker=broker, partitions=4, session_timeout=SESSION_TIMEOUT)
    clicks = app.topic(unique("clicks"), value_type=dict[str, str])  # keyed by session
    by_user = app.group_by(clicks, user_of, name="by_user")
    per_user: Table[str, int] = app.table("per_user", source=by_user, default=int)

    @app.agent(by_user)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            assert event.key == event.value["user"], "events arrive keyed by user"
            per_user[event.key] += 1

    expected: Counter[str] = Counter()
    async with app:
        clicks_sent = [(f"session-{i}", {"user": f"user-{i % 3}"}) for i in range(30)]
        await clicks.send_many(clicks_sent)
        expected.update(v["user"] for _, v in clicks_sent)
        await settle(per_user, dict(expected))
        # a forwarder that crashed after producing but before committing forwards again:
        # the same upstream positions arrive a second time on the repartition topic
        async with broker.subscribe(by_user.name) as sub:
            forwarded = await consume(sub, 30)
        await broker.produce_batch(
            by_user.name,
            [
                brokers.ProducerRecord(r.value, r.key, r.partition, r.headers)
                for r in forwarded[:10]
            ],
        )
        await clicks.send("session-x", {"user": "user-0"})
        expected["user-0"] += 1
        await settle(per_user, dict(expected))
        await asyncio.sleep(0.3)
        assert dict(per_user.items()) == dict(expected)


async def test_through_forwards_and_passes_events_on(broker: brokers.Broker) -> None:
    app = App(unique("tee"), broker=broker, partitions=2, session_timeout=SESSION_TIMEOUT)
    source = app.topic(unique("source"), value_type=int)
    copy = app.topic(unique("copy"), value_type=int)
    passed: list[int] = []

    @app.agent(source)
    async def tee(stream: EventStream) -> None:
        async for event in stream.through(copy):
            passed.append(event.value)

    async with app:
        await source.send_many([("k", n) for n in range(5)])
        async with broker.subscribe(copy.name) as sub:
            copied = await consume(sub, 5)
    assert sorted(passed) == [0, 1, 2, 3, 4]
    assert sorted(int(r.value or b"") for r in copied) == [0, 1, 2, 3, 4]
