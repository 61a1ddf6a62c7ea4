"""group_by: re-keying through an internal topic, exactly-once state behind it; through()."""

from __future__ import annotations

import asyncio
from collections import Counter

import brokers
from brokers import default_partitioner
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


def origins(record: brokers.Record) -> list[bytes]:
    return [value for name, value in record.headers if name == "x-origin"]


async def test_a_stream_grouped_twice_counts_exactly_by_each_stage_origin(
    broker: brokers.Broker,
) -> None:
    """group_by → internal topic → group_by again: the second stage's records carry the
    position of the first stage's record they come from, and only that one."""
    app = App(unique("regroup2"), broker=broker, partitions=4, session_timeout=SESSION_TIMEOUT)
    clicks = app.topic(unique("clicks"), value_type=dict[str, str])  # keyed by session
    by_user = app.group_by(clicks, user_of, name="by_user")
    by_country = app.group_by(by_user, lambda e: e.value["country"], name="by_country")
    per_country: Table[str, int] = app.table("per_country", source=by_country, default=int)

    @app.agent(by_country)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            assert event.key == event.value["country"], "events arrive keyed by country"
            per_country[event.key] += 1

    sent = [
        (f"session-{i}", {"user": f"user-{i % 13}", "country": f"c{i % 5}"}) for i in range(200)
    ]
    expected = Counter(v["country"] for _, v in sent)
    async with app:
        await clicks.send_many(sent)
        await settle(per_country, dict(expected))
        async with broker.subscribe(by_user.name) as sub:
            first_stage = await consume(sub, len(sent))
        async with broker.subscribe(by_country.name) as sub:
            second_stage = await consume(sub, len(sent))
        # each record of the second stage names its own record of the first, once
        positions = {f"{r.partition}:{r.offset}".encode(): r for r in first_stage}
        assert all(len(origins(r)) == 1 for r in first_stage + second_stage)
        upstream = [positions[origins(r)[0]] for r in second_stage]
        assert [r.value for r in upstream] == [r.value for r in second_stage]
        assert len({origins(r)[0] for r in second_stage}) == len(sent)
        # the second forwarder crashed before committing and forwards again: counted once
        await broker.produce_batch(
            by_country.name,
            [brokers.ProducerRecord(r.value, r.key, r.partition, r.headers) for r in second_stage],
        )
        await clicks.send("session-x", {"user": "user-0", "country": "c0"})
        expected["c0"] += 1
        await settle(per_country, dict(expected))
        await asyncio.sleep(0.3)
        assert dict(per_country.items()) == dict(expected)


async def test_a_record_rerouted_before_group_by_or_through_is_handled_behind_it(
    broker: brokers.Broker,
) -> None:
    """An agent reroutes a misplaced record (its topic feeds a table), then forwards the copy
    (group_by, through): what comes out is an ordinary record, not another agent's reroute."""
    app = App(unique("rerouted"), broker=broker, partitions=4, session_timeout=SESSION_TIMEOUT)
    clicks = app.topic(unique("clicks"), value_type=dict[str, str])
    teed = app.topic(unique("teed"), value_type=dict[str, str])
    per_session: Table[str, int] = app.table("per_session", source=clicks, default=int)
    by_user = app.group_by(clicks, user_of, name="by_user")
    per_user: Table[str, int] = app.table("per_user", source=by_user, default=int)
    teed_seen: list[str] = []

    @app.agent(clicks)
    async def sessions(stream: EventStream) -> None:
        async for event in stream.through(teed):
            assert event.key is not None
            per_session[event.key] += 1

    @app.agent(teed)
    async def tee(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            teed_seen.append(event.key)

    @app.agent(by_user)
    async def users(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            per_user[event.key] += 1

    sessions_ = [f"session-{i}" for i in range(8)]
    home = {s: default_partitioner(s.encode(), 4) for s in sessions_}
    async with app:
        # each session once at home, once on the next partition (another partitioner's doing)
        await broker.produce_batch(
            clicks.name,
            [
                brokers.ProducerRecord(b'{"user": "user-%d"}' % (i % 2), s.encode(), p)
                for i, s in enumerate(sessions_)
                for p in (home[s], (home[s] + 1) % 4)
            ],
        )
        await settle(per_session, dict.fromkeys(sessions_, 2))
        await settle(per_user, {"user-0": 8, "user-1": 8})
        async with asyncio.timeout(60):
            while len(teed_seen) < 16:  # noqa: ASYNC110 - by the agent
                await asyncio.sleep(0.05)
        assert sorted(teed_seen) == sorted(sessions_ * 2)
        forwarded: list[brokers.Record] = []
        for topic in (by_user, teed):
            async with broker.subscribe(topic.name) as sub:
                forwarded += await consume(sub, 16)
    assert not any(name == "x-rerouted-by" for r in forwarded for name, _ in r.headers)
