"""Keys as reactive streams on every backend: observe without gap or duplicate, reactivex
operators (in virtual time, and on the Memory's asyncio scheduler), and the feed's end reaching
observers: completed when the Memory closes, an error when its view fails."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import reactivex
import reactivex.operators as rx
from reactivex.testing import TestScheduler

import brokers
from agents import CausalContext, Change, Memory, ViewFailedError
from brokers import ClosedError
from tests.brokers.conftest import unique


def memory(log: brokers.Broker, namespace: str, **kw: Any) -> Memory:
    return Memory(log, namespace=namespace, partitions=2, **kw)


def new(change: Change) -> Any:
    return change.new


async def until(done: asyncio.Event) -> None:
    async with asyncio.timeout(30):
        await done.wait()


async def test_observe_while_writers_run_has_no_gap_and_no_duplicate(
    broker: brokers.Broker,
) -> None:
    async with memory(broker, unique("kv")) as mem:
        await mem.set("n", 0)
        halfway, subscribed = asyncio.Event(), asyncio.Event()
        mem.on("n", lambda c: halfway.set() if c.new >= 10 else None)
        written: list[int] = []

        async def writer() -> None:
            for i in range(15):
                if i == 10:  # the last writes wait until the observer is in place
                    await subscribed.wait()
                result = await mem.increment("n")
                assert result.version is not None
                written.append(result.version)

        writers = asyncio.gather(*(writer() for _ in range(3)))
        await until(halfway)
        seen: list[Change] = []
        mem.observe("n").subscribe(seen.append)  # writes are going on meanwhile
        subscribed.set()
        async with asyncio.timeout(30):
            await writers
        first, after = seen[0], seen[1:]
        assert first.op == "current"
        assert 10 <= first.new <= 30, "subscribed while the writers were running"
        assert [c.new for c in after] == list(range(first.new + 1, 46)), "no gap, no duplicate"
        assert [c.old for c in after] == list(range(first.new, 45)), "contiguous with the state"
        versions = [c.version for c in after]
        assert versions == sorted(set(versions)), "in log order, each change once"
        assert set(versions) == {v for v in written if v > first.version}, (
            "exactly the writes after the initial state"
        )
        assert first.version in written


async def test_time_operators_in_virtual_time(broker: brokers.Broker) -> None:
    """Operator semantics on the Memory's real changes, with time only moving when told."""
    async with memory(broker, unique("kv")) as mem:
        clock = TestScheduler()
        got: list[tuple[str, float, Any]] = []
        typing = mem.observe("typing").pipe(rx.skip(1), rx.map(new))  # skip: the current state
        pipes = {
            "debounce": rx.debounce(20, scheduler=clock),
            "throttle": rx.throttle_first(20, scheduler=clock),
            "buffer": rx.buffer_with_time(50, scheduler=clock),
        }

        def record(name: str) -> Any:
            return lambda value: got.append((name, clock.clock, value))

        for name, operator in pipes.items():
            typing.pipe(operator).subscribe(record(name))
        for at, text in ((110, "h"), (120, "he"), (125, "hel"), (210, "hello")):
            clock.advance_to(at)
            await mem.set("typing", text)
        clock.advance_to(260)

        def of(name: str) -> list[tuple[float, Any]]:
            return [(t, v) for n, t, v in got if n == name and v != []]

        assert of("debounce") == [(145, "hel"), (230, "hello")]
        assert of("throttle") == [(110, "h"), (210, "hello")]
        assert of("buffer") == [(150, ["h", "he", "hel"]), (250, ["hello"])]


def subsequence(part: list[Any], whole: list[Any]) -> bool:
    items = iter(whole)
    return all(any(x == y for y in items) for x in part)


async def test_operators_on_the_asyncio_scheduler(broker: brokers.Broker) -> None:
    """The same operators on real time: only what no timing can change is asserted."""
    async with memory(broker, unique("kv")) as mem:
        texts = ["n", "ne", "neu", "neur", "neuro"]
        throttled: list[str] = []
        debounced: list[str] = []
        buffered: list[list[str]] = []
        settled, flushed = asyncio.Event(), asyncio.Event()
        typing = mem.observe("typing").pipe(rx.skip(1), rx.map(new))
        typing.pipe(rx.throttle_first(0.05, scheduler=mem.scheduler)).subscribe(throttled.append)

        def on_debounced(text: str) -> None:
            debounced.append(text)
            if text == texts[-1]:
                settled.set()

        def on_buffer(items: list[str]) -> None:
            buffered.append(items)
            if sum(map(len, buffered)) == len(texts):
                flushed.set()

        typing.pipe(rx.debounce(0.05, scheduler=mem.scheduler)).subscribe(on_debounced)
        typing.pipe(rx.buffer_with_time(0.05, scheduler=mem.scheduler)).subscribe(on_buffer)
        pairs: list[tuple[Any, Any]] = []
        reactivex.zip(
            mem.observe("x").pipe(rx.map(new)), mem.observe("y").pipe(rx.map(new))
        ).subscribe(pairs.append)
        merged: list[str] = []
        reactivex.merge(mem.observe("x"), mem.observe("y")).pipe(rx.skip(2)).subscribe(
            lambda c: merged.append(f"{c.key}={c.new}")
        )
        users: list[str] = []

        def changed(change: Change) -> bool:
            return change.op != "current"

        def shown(change: Change) -> str:
            return f"{change.key}={change.new}"

        mem.observe_pattern("user:*").pipe(rx.filter(changed), rx.map(shown)).subscribe(
            users.append
        )
        counted: list[list[Any]] = []
        mem.observe("x").pipe(rx.skip(1), rx.map(new), rx.buffer_with_count(2)).subscribe(
            counted.append
        )
        for text in texts:
            await mem.set("typing", text)
        await mem.set("user:1", "ann")
        await mem.set("other", "bob")
        for i in (1, 2):
            await mem.set("x", i)
            await mem.set("y", i * 10)
        await until(settled)
        await until(flushed)
        assert throttled[0] == texts[0], "the first change passes at once"
        assert subsequence(throttled, texts), throttled
        assert debounced[-1] == texts[-1], "it settles on the last change"
        assert subsequence(debounced, texts), debounced
        assert [t for items in buffered for t in items] == texts, "buffers lose nothing"
        assert pairs == [(None, None), (1, 10), (2, 20)]
        assert merged == ["x=1", "y=10", "x=2", "y=20"]
        assert counted == [[1, 2]]
        assert users == ["user:1=ann"]


async def test_closing_completes_observers_and_ends_subscriptions(
    broker: brokers.Broker,
) -> None:
    mem = memory(broker, unique("kv"))
    async with mem:
        completed = asyncio.Event()
        values: list[Any] = []
        mem.observe("k").pipe(rx.map(new)).subscribe(values.append, on_completed=completed.set)
        everything = mem.subscribe("*")
        await mem.set("k", 1)
        reader = asyncio.create_task(anext(everything))
        far = CausalContext({mem.partition_of("k"): 2**62})
        waiting = asyncio.create_task(mem.get("k", consistency="causal", context=far))
        await asyncio.sleep(0)  # one step of the loop: the read is waiting now
    await until(completed)
    assert values == [None, 1]
    assert (await reader).new == 1, "what was buffered is still read"
    with pytest.raises(StopAsyncIteration):
        await anext(everything)
    with pytest.raises(ClosedError):
        await waiting
    errors: list[Exception] = []
    mem.observe("k").subscribe(on_error=errors.append)
    assert isinstance(errors[0], ClosedError)
    with pytest.raises(ClosedError):
        mem.subscribe("*")


async def test_a_failed_view_reaches_observers_as_an_error(broker_url: str) -> None:
    log = await brokers.connect(broker_url).open()
    try:
        async with memory(log, unique("kv"), janitor=False) as mem:
            await mem.set("k", 0)  # the view is live: subscribed to the log and folding it
            failed = asyncio.Event()
            attempts: list[int] = []
            retried: list[Any] = []
            errors: list[Exception] = []

            def attempt(_: Any) -> reactivex.Observable[Change]:
                attempts.append(1)
                return mem.observe("k")

            def failure(error: Exception) -> None:
                errors.append(error)
                failed.set()

            reactivex.defer(attempt).pipe(rx.map(new), rx.retry(3)).subscribe(
                retried.append, on_error=failure
            )
            caught: list[Any] = []
            mem.observe("k").pipe(rx.map(new), rx.catch(reactivex.of("fallback"))).subscribe(
                caught.append
            )
            changes = mem.subscribe("*")
            far = CausalContext({mem.partition_of("k"): 2**62})
            waiting = asyncio.create_task(mem.get("k", consistency="causal", context=far))
            await asyncio.sleep(0)  # one step of the loop: the read is waiting now
            await log.aclose()  # the log goes away under the Memory: its view stops
            await until(failed)
            assert isinstance(errors[0], ViewFailedError)
            assert isinstance(errors[0].__cause__, brokers.NeuroplexError)  # the log's error
            assert len(attempts) == 3, "retry subscribed again, and failed again"
            assert retried == [0]
            assert caught == [0, "fallback"]
            with pytest.raises(ViewFailedError):
                await anext(changes)
            with pytest.raises(ViewFailedError):
                await waiting
            with pytest.raises(ViewFailedError):
                await mem.set("k", 1)
    finally:
        await log.aclose()
