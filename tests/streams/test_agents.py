"""Apps, typed topics and agents on every backend: order, dead letters, error policies."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

import brokers
from brokers import TopicPartition
from streams import AgentError, App, DeclarationError, EncodeError, Event, EventStream
from tests.brokers.conftest import SESSION_TIMEOUT, consume, unique

HOUR = 3600.0


class PageView(BaseModel):
    model_config = ConfigDict(frozen=True)

    user: str
    page: str
    seq: int


def make_app(broker_url: str) -> App:
    return App(unique("app"), broker=broker_url, partitions=4, session_timeout=SESSION_TIMEOUT)


async def wait_for(predicate: Any, timeout: float = 40.0) -> None:
    """Poll a condition the agents make true (they run in the background)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - the state lives in agents' closures
            await asyncio.sleep(0.02)


async def test_agent_gets_typed_events_in_partition_order(broker_url: str) -> None:
    app = make_app(broker_url)
    views = app.topic(unique("views"), value_type=PageView)
    seen: dict[str, list[int]] = defaultdict(list)

    @app.agent(views)
    async def track(stream: EventStream) -> None:
        async for event in stream:
            assert isinstance(event.value, PageView)
            assert event.key == event.value.user
            seen[event.value.user].append(event.value.seq)

    async with app:
        for seq in range(60):
            user = f"u{seq % 5}"
            await views.send(user, PageView(user=user, page="/", seq=seq))
        await wait_for(lambda: sum(map(len, seen.values())) == 60)
    for user, seqs in seen.items():
        assert seqs == sorted(seqs), f"{user}: per-key (per-partition) order kept"


async def test_bad_records_go_to_the_dead_letter_topic_and_processing_goes_on(
    broker_url: str,
) -> None:
    app = make_app(broker_url)
    views = app.topic(unique("views"), value_type=PageView)
    good: list[int] = []

    @app.agent(views)
    async def track(stream: EventStream) -> None:
        async for event in stream:
            good.append(event.value.seq)

    async with app:
        await views.send("a", PageView(user="a", page="/", seq=1))
        bad = await app.broker.produce(views.name, b'{"user": "a", "page": 3}', key=b"a")
        garbage = await app.broker.produce(views.name, b"not json", key=b"a")
        await views.send("a", PageView(user="a", page="/", seq=2))
        await wait_for(lambda: good == [1, 2])
        async with app.broker.subscribe(views.dead_letter_topic) as sub:
            letters = await consume(sub, 2)
    reasons = {r.offset: dict(r.headers) for r in letters}
    by_source = {int(h["x-source-offset"]): h for h in reasons.values()}
    assert set(by_source) == {bad.offset, garbage.offset}
    assert b"seq" in by_source[bad.offset]["x-dead-letter-reason"]
    assert b"not JSON" in by_source[garbage.offset]["x-dead-letter-reason"]
    assert by_source[bad.offset]["x-source-topic"] == views.name.encode()
    assert {r.value for r in letters} == {b'{"user": "a", "page": 3}', b"not json"}


@pytest.mark.parametrize("policy", ["skip", "dead_letter"])
async def test_error_policy_after_retries(broker_url: str, policy: str) -> None:
    app = make_app(broker_url)
    numbers = app.topic(unique("numbers"), value_type=int, partitions=1)
    attempts: dict[int, int] = defaultdict(int)
    done: list[int] = []

    @app.agent(numbers, on_error=policy, retries=2, backoff=0.01)  # type: ignore[arg-type]
    async def picky(stream: EventStream) -> None:
        async for event in stream:
            attempts[event.value] += 1
            if event.value == 13 or (event.value == 7 and attempts[7] < 2):
                raise ValueError(f"unlucky {event.value}")
            done.append(event.value)

    async with app:
        await numbers.send_many([("k", n) for n in (1, 7, 13, 20)])
        await wait_for(lambda: done == [1, 7, 20])
        assert attempts[13] == 3, "tried once, then retried twice"
        assert attempts[7] == 2, "a transient failure succeeds on retry"
        assert attempts[1] == 1, "events before a failure are not handled again"
        letters: list[brokers.Record] = []
        if policy == "dead_letter":
            async with app.broker.subscribe(numbers.dead_letter_topic) as sub:
                letters = await consume(sub, 1)
            assert letters[0].value == b"13"
            assert b"unlucky 13" in dict(letters[0].headers)["x-dead-letter-reason"]
        else:
            ends = await app.broker.end_offsets(numbers.dead_letter_topic)
            assert ends == {0: 0}


async def test_raise_policy_stops_the_app_with_the_cause(broker_url: str) -> None:
    app = make_app(broker_url)
    numbers = app.topic(unique("numbers"), value_type=int, partitions=1)

    @app.agent(numbers)
    async def fragile(stream: EventStream) -> None:
        async for event in stream:
            if event.value < 0:
                raise ValueError("negative")

    async with app:
        sent = await numbers.send("k", -1)
        with pytest.raises(AgentError, match="negative") as info:
            async with asyncio.timeout(40):
                await app.wait()
    assert info.value.record.offset == sent.offset
    assert info.value.agent == "fragile"


async def test_sync_function_with_a_sink_and_stream_operations(broker_url: str) -> None:
    app = make_app(broker_url)
    source = app.topic(unique("source"), value_type=int, partitions=2)
    doubled = app.topic(unique("doubled"), value_type=int, partitions=2)
    chunks: list[list[int]] = []
    numbered: list[tuple[int, int]] = []

    @app.agent(source, sink=doubled)
    def double(event: Event[str, int]) -> int | None:
        return None if event.value % 5 == 0 else event.value * 2

    @app.agent(doubled)
    async def collect(stream: EventStream) -> None:
        evens = stream.map(lambda e: e.value).filter(lambda v: v % 4 == 0)
        async for i, value in evens.enumerate():
            numbered.append((i, value))

    @app.agent(source, name="batches")
    async def batches(stream: EventStream) -> None:
        async for chunk in stream.take(3, within=0.3):
            assert 1 <= len(chunk) <= 3
            chunks.append([e.value for e in chunk])

    async with app:
        await source.send_many([(f"k{n}", n) for n in range(1, 21)])
        expected = sorted(n * 2 for n in range(1, 21) if n % 5 and (n * 2) % 4 == 0)
        await wait_for(lambda: len(numbered) == len(expected))
        await wait_for(lambda: sum(map(len, chunks)) == 20)
    assert sorted(v for _, v in numbered) == expected
    assert [i for i, _ in numbered] == list(range(len(expected)))
    assert sorted(v for c in chunks for v in c) == list(range(1, 21))


def one_partition_app(broker_url: str) -> tuple[App, Any]:
    app = App(unique("take"), broker=broker_url, partitions=1, session_timeout=SESSION_TIMEOUT)
    return app, app.topic(unique("events"), value_type=int)


@pytest.mark.backends("memory", "sqlite")  # how take() fills its lists, not a log feature
async def test_take_hands_a_list_over_when_it_holds_n_events(broker_url: str) -> None:
    app, events = one_partition_app(broker_url)
    chunks: list[list[int]] = []

    @app.agent(events)
    async def batches(stream: EventStream) -> None:
        async for chunk in stream.take(4, within=HOUR):  # no list ends by time here
            chunks.append([e.value for e in chunk])

    async with app:
        await events.send_many([("k", n) for n in range(10)])
        await wait_for(lambda: len(chunks) == 2)
        assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # stopping hands over the list still filling (then commits it)
    assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.backends("memory", "sqlite")
async def test_take_hands_a_shorter_list_over_within_seconds_on_a_quiet_stream(
    broker_url: str,
) -> None:
    app, events = one_partition_app(broker_url)
    chunks: list[list[int]] = []

    @app.agent(events)
    async def batches(stream: EventStream) -> None:
        async for chunk in stream.take(100, within=0.2):
            chunks.append([e.value for e in chunk])

    async with app:
        await events.send_many([("k", n) for n in range(3)])
        await wait_for(lambda: len(chunks) == 1)
        await events.send_many([("k", n) for n in range(3, 5)])
        await wait_for(lambda: len(chunks) == 2)
    assert chunks == [[0, 1, 2], [3, 4]], "3 and 2 events, far fewer than n"


@pytest.mark.backends("memory", "sqlite")
async def test_take_fills_a_list_across_fetches_and_retries_it_whole(broker_url: str) -> None:
    app, events = one_partition_app(broker_url)
    attempts: list[list[int]] = []

    @app.agent(events, retries=1, backoff=0)
    async def batches(stream: EventStream) -> None:
        async for chunk in stream.take(2, within=HOUR):
            attempts.append([e.value for e in chunk])
            if len(attempts) == 1:
                raise ValueError("the first attempt fails: the whole list comes again")

    async with app:
        await events.send("k", 1)
        member = app.agents["batches"]._members  # to see when the first one is fetched
        await wait_for(
            lambda: bool(member) and member[0].position(TopicPartition(events.name, 0)) == 1
        )
        await events.send("k", 2)  # fetched on its own, into the list holding the first
        await wait_for(lambda: len(attempts) == 2)
    assert attempts == [[1, 2], [1, 2]]


async def test_declarations_are_checked_and_loop_free() -> None:
    app = App("checks", broker="memory://")  # no running loop needed to declare
    t = app.topic("t", value_type=int)
    assert app.topic("t", value_type=int) is t
    with pytest.raises(DeclarationError, match="already declared"):
        app.topic("t", value_type=str)
    with pytest.raises(DeclarationError, match="on_error"):
        app.agent(t, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(DeclarationError, match="key_type"):
        app.topic("u", key_type=float)
    async with app:
        with pytest.raises(EncodeError, match="topic 't'"):
            await t.send("k", "not a number")


async def test_dataclass_values_and_concurrency_across_partitions(broker_url: str) -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Reading:
        sensor: str
        celsius: float

    app = make_app(broker_url)
    readings = app.topic(unique("readings"), value_type=Reading)
    members: dict[int, set[int]] = defaultdict(set)  # id of the member's stream -> partitions
    got: list[Reading] = []

    @app.agent(readings, concurrency=2)
    async def record(stream: EventStream) -> None:
        async for event in stream:
            assert isinstance(event.value, Reading)
            members[id(stream)].add(event.partition)
            got.append(event.value)

    async with app:
        agent = app.agents["record"]
        await wait_for(lambda: len([a for a in agent.assignments if a]) == 2)
        await readings.send_many([(f"s{i}", Reading(f"s{i}", i / 2)) for i in range(40)])
        await wait_for(lambda: len(got) == 40)
    assert sorted(r.celsius for r in got) == [i / 2 for i in range(40)]
    assert len(members) == 2, "two members of the agent's group ran in this worker"
    first, second = members.values()
    assert not first & second, "each partition is read by one member"


@pytest.mark.backends("memory")  # how stop() ends agents, not a log feature
async def test_stop_ends_even_an_agent_that_ignores_its_cancellation(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Leaving the app waits ``drain_timeout`` for the batch, cancels, waits as long again,
    then closes under an agent that still runs: it never hangs."""
    app = App(unique("stuck"), broker=broker_url, partitions=1, drain_timeout=0.2)
    events = app.topic(unique("events"), value_type=int)
    release = asyncio.Event()
    started = asyncio.Event()

    @app.agent(events)
    async def stubborn(stream: EventStream) -> None:
        async for _ in stream:
            started.set()
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # a bug in user code: it swallows every cancellation

    async with asyncio.timeout(30):
        async with app:
            await events.send("k", 1)
            await started.wait()
    assert "did not drain in 0.2s" in caplog.text
    assert "still running 0.2s after they were cancelled" in caplog.text
    release.set()  # it ends at last (on the closed subscription): said, not lost
    async with asyncio.timeout(30):
        while "agents ended after the app stopped" not in caplog.text:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
