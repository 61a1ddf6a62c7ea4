"""Folds (``@table.fold``): a table folded from its source a batch at a time, with the
guarantees of a table set by an agent: exactly once across restarts and replays, error
policies that leave no trace of a failed event, misplaced records rerouted and counted once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import brokers
from brokers import ProducerRecord
from streams import AgentError, App, DeclarationError, ErrorPolicy, Event, Table
from tests.brokers.conftest import SESSION_TIMEOUT, consume, unique
from tests.streams.test_placement import KEYS, home, placed_and_misplaced
from tests.streams.test_tables import rewind_group


async def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - state lives in the fold's agent
            await asyncio.sleep(0.02)


def summing_app(
    log: brokers.Broker | str,
    name: str,
    topic: str,
    *,
    on_error: ErrorPolicy = "raise",
    retries: int = 0,
    fails: Callable[[Event[str, int]], bool] = lambda event: False,
) -> tuple[App, Table[str, int]]:
    """Per-key sums of an int topic, as a fold; ``fails`` picks the events the fold raises on."""
    app = App(name, broker=log, partitions=4, session_timeout=SESSION_TIMEOUT)
    amounts = app.topic(topic, value_type=int)
    sums: Table[str, int] = app.table("sums", source=amounts, default=int)

    @sums.fold(on_error=on_error, retries=retries, backoff=0.01)
    def add(total: int, event: Event[str, int]) -> int | None:
        if fails(event):
            raise ValueError(f"cannot add {event.value}")
        new = total + event.value
        return None if new == 0 else new  # a sum back to zero is deleted

    return app, sums


async def fresh_fold(log: brokers.Broker | str, name: str, topic: str) -> dict[str, int]:
    """The sums a new replica reads from the changelog."""
    app, sums = summing_app(log, name, topic)
    app.agents.clear()  # a reader: no group membership
    async with app:
        await sums.load()
        return dict(sums.items())


async def test_a_fold_is_restored_and_goes_on_without_double_counting(
    broker: brokers.Broker,
) -> None:
    name, topic = unique("fold"), unique("amounts")
    expected: Counter[str] = Counter()
    app, sums = summing_app(broker, name, topic)
    async with app:
        batch = [(f"u{i % 7}", i % 3 + 1) for i in range(200)]
        await app.topics[topic].send_many(batch)
        for key, value in batch:
            expected[key] += value
        await wait_for(lambda: dict(sums.items()) == dict(expected))
    app, sums = summing_app(broker, name, topic)
    async with app:  # restored from the changelog, then from the committed positions on
        await app.topics[topic].send_many([("u0", 5), ("u8", 1)])
        expected.update({"u0": 5, "u8": 1})
        await wait_for(lambda: dict(sums.items()) == dict(expected))
    assert await fresh_fold(broker, name, topic) == dict(expected)


async def test_a_full_replay_folds_nothing_twice(broker: brokers.Broker) -> None:
    name, topic = unique("refold"), unique("amounts")
    app, sums = summing_app(broker, name, topic)
    async with app:
        await app.topics[topic].send_many([(f"u{i % 3}", 1) for i in range(30)])
        await wait_for(lambda: dict(sums.items()) == {"u0": 10, "u1": 10, "u2": 10})
    await rewind_group(broker, topic, f"{name}.add", partitions=4)  # all come again
    app, sums = summing_app(broker, name, topic)
    async with app:
        await app.topics[topic].send("u0", 5)
        await wait_for(lambda: dict(sums.items()) == {"u0": 15, "u1": 10, "u2": 10})


async def test_none_deletes_the_key_in_the_table_and_its_changelog(broker: brokers.Broker) -> None:
    name, topic = unique("zero"), unique("amounts")
    app, sums = summing_app(broker, name, topic)
    async with app:
        await app.topics[topic].send_many([("a", 2), ("b", 1), ("a", -2)])
        await wait_for(lambda: dict(sums.items()) == {"b": 1})
        assert "a" not in sums
    assert await fresh_fold(broker, name, topic) == {"b": 1}


@pytest.mark.parametrize("policy", ["skip", "dead_letter"])
async def test_a_failing_event_leaves_no_trace_and_the_fold_goes_on(
    broker: brokers.Broker, policy: ErrorPolicy
) -> None:
    name, topic = unique("poison"), unique("amounts")
    app, sums = summing_app(
        broker, name, topic, on_error=policy, retries=1, fails=lambda e: e.value == 13
    )
    async with app:
        await app.topics[topic].send_many([("a", 1), ("a", 13), ("b", 13), ("a", 2), ("b", 4)])
        await wait_for(lambda: dict(sums.items()) == {"a": 3, "b": 4})
        if policy == "dead_letter":
            async with broker.subscribe(f"{topic}.dead-letter") as sub:
                letters = await consume(sub, 2)
            assert sorted((r.key, r.value) for r in letters) == [(b"a", b"13"), (b"b", b"13")]
            reason = dict(letters[0].headers)["x-dead-letter-reason"]
            assert b"ValueError: cannot add 13" in reason
    assert await fresh_fold(broker, name, topic) == {"a": 3, "b": 4}


async def test_a_retried_event_is_folded_once(broker: brokers.Broker) -> None:
    name, topic = unique("retry"), unique("amounts")
    attempts: Counter[int] = Counter()

    def flaky(event: Event[str, int]) -> bool:  # each event fails on its first attempt
        attempts[event.offset * 10 + event.partition] += 1
        return attempts[event.offset * 10 + event.partition] == 1

    app, sums = summing_app(broker, name, topic, retries=1, fails=flaky)
    async with app:
        await app.topics[topic].send_many([("a", 1), ("a", 2), ("b", 3)])
        await wait_for(lambda: dict(sums.items()) == {"a": 3, "b": 3})
    assert set(attempts.values()) == {2}


async def test_a_fold_that_keeps_failing_stops_the_app_with_the_cause(
    broker: brokers.Broker,
) -> None:
    name, topic = unique("raise"), unique("amounts")
    app, _ = summing_app(broker, name, topic, fails=lambda e: e.value == 13)
    async with app:
        sent = await app.topics[topic].send_many([("a", 1), ("a", 13)])
        with pytest.raises(AgentError, match="cannot add 13") as failed:
            async with asyncio.timeout(40):
                await app.wait()
    assert failed.value.record.offset == sent[1].offset
    assert failed.value.agent == "add"
    assert await fresh_fold(broker, name, topic) in ({}, {"a": 1})  # never the failed event


async def test_a_keyless_event_goes_to_the_error_policy(broker: brokers.Broker) -> None:
    name, topic = unique("keyless"), unique("amounts")
    app, sums = summing_app(broker, name, topic, on_error="dead_letter")
    async with app:
        await broker.produce(topic, b"7")  # no key: not foldable into a table
        await app.topics[topic].send("a", 1)
        await wait_for(lambda: dict(sums.items()) == {"a": 1})
        async with broker.subscribe(f"{topic}.dead-letter") as sub:
            (letter,) = await consume(sub, 1)
    assert b"folds keyed events" in dict(letter.headers)["x-dead-letter-reason"]


async def test_misplaced_records_are_rerouted_and_folded_once(broker: brokers.Broker) -> None:
    name, topic = unique("placed"), unique("amounts")
    app, sums = summing_app(broker, name, topic)
    async with app:
        await broker.produce_batch(topic, placed_and_misplaced())
        await wait_for(lambda: dict(sums.items()) == dict.fromkeys(KEYS, 2))
        # the rerouter crashed after sending a copy, before committing: it comes again
        async with broker.subscribe(topic) as sub:
            copies = [r for r in await consume(sub, 24) if dict(r.headers).get("x-rerouted-by")]
        assert sorted(r.partition for r in copies) == sorted(home(k) for k in KEYS)
        (again,) = [r for r in copies if r.key == b"k0"]
        await broker.produce_batch(
            topic, [ProducerRecord(again.value, again.key, again.partition, again.headers)]
        )
        await app.topics[topic].send("k0", 5)  # after the copy, on the same partition
        expected = {**dict.fromkeys(KEYS, 2), "k0": 7}
        await wait_for(lambda: dict(sums.items()) == expected)
        await asyncio.sleep(0.2)  # the copy, had it been folded again, would show by now
        assert dict(sums.items()) == expected, "the copy was folded once"
    assert await fresh_fold(broker, name, topic) == expected


def test_folds_are_declared_on_tables_they_can_fold() -> None:
    app = App(unique("declare"), broker="memory://")
    amounts = app.topic(unique("amounts"), value_type=int)
    sums: Table[str, int] = app.table("sums", source=amounts, default=int)
    plain: Table[str, int] = app.table("plain", source=amounts)

    async def waits(total: int, event: Event[str, int]) -> int:
        return total

    with pytest.raises(DeclarationError, match="plain function"):
        sums.fold(waits)  # type: ignore[arg-type]
    with pytest.raises(DeclarationError, match="default="):
        plain.fold(lambda total, event: total)

    @sums.fold(name="adder")
    def add(total: int, event: Event[str, int]) -> int:
        return total + event.value

    assert app.agents["adder"].topic is amounts
    with pytest.raises(DeclarationError, match="already declared"):
        sums.fold(name="adder")(add)


# ---------------------------------------------------------------- property


EVENTS = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(-3, 20)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=EVENTS, chunk=st.integers(1, 25))
def test_a_fold_equals_the_fold_of_the_events_it_did_not_skip(
    events: list[tuple[str, int]], chunk: int
) -> None:
    """Whatever the events and however they are batched, with poison (negative) events
    skipped: the table is the plain fold of the others, and so is its changelog."""
    expected: dict[str, int] = {}
    for key, value in events:
        if value < 0:
            continue  # poison: skipped
        new = expected.get(key, 0) + value
        if new == 0:
            expected.pop(key, None)
        else:
            expected[key] = new

    async def run() -> tuple[dict[str, int], dict[str, int]]:
        async with brokers.connect("memory://") as log:
            name, topic = unique("prop"), unique("amounts")
            app, sums = summing_app(log, name, topic, on_error="skip", fails=lambda e: e.value < 0)
            async with app:
                for i in range(0, len(events), chunk):
                    await app.topics[topic].send_many(events[i : i + chunk])
                # sums only grow (poison is skipped), so once equal they stay equal
                await wait_for(lambda: dict(sums.items()) == expected, timeout=30)
                folded = dict(sums.items())
            return folded, await fresh_fold(log, name, topic)

    folded, replica = asyncio.run(run())
    assert folded == expected
    assert replica == expected
