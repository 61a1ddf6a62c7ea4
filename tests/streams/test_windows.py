"""Event-time windows: which windows an event opens, and windowed tables on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import os
import random
import signal
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import brokers
from brokers import TopicPartition
from streams import (
    App,
    ClosedWindow,
    EventStream,
    Hopping,
    Session,
    Sliding,
    Topic,
    Tumbling,
    Window,
    WindowedTable,
)
from tests.brokers.conftest import SESSION_TIMEOUT, consume, unique
from tests.streams._counting import build_windowed, spawn

T0 = 1_700_000_000_000  # event times in ms, as producers stamp them


@given(st.integers(0, 10**13), st.integers(1, 10**6))
def test_a_tumbling_window_holds_its_event(t: int, size_ms: int) -> None:
    (w,) = Tumbling(grace_ms=0, size_ms=size_ms).windows_for(t)
    assert w.start <= t < w.end
    assert w.end - w.start == size_ms
    assert w.start % size_ms == 0


@given(st.integers(10**6, 10**13), st.integers(1, 1000), st.integers(1, 20))
def test_hopping_windows_are_every_window_of_the_grid_holding_the_event(
    t: int, step_ms: int, hops: int
) -> None:
    size_ms = step_ms * hops
    windows = Hopping(grace_ms=0, size_ms=size_ms, step_ms=step_ms).windows_for(t)
    assert len(windows) == hops
    for w in windows:
        assert w.start <= t < w.end
        assert w.start % step_ms == 0


def events(values: list[tuple[str, int, int]]) -> list[tuple[str, dict[str, int]]]:
    """(key, seconds after T0, amount) as payloads carrying their own event time."""
    return [(k, {"at": T0 + s * 1000, "n": n}) for k, s, n in values]


def at(event: object) -> int:
    return int(event.value["at"])  # type: ignore[attr-defined]


async def run_windows(
    log: brokers.Broker,
    spec: Tumbling | Hopping | Sliding | Session,
    payloads: list[tuple[str, dict[str, int]]],
    *,
    expect_closed: int,
) -> tuple[list[ClosedWindow[str, int]], dict[str, list[int]]]:
    app = App(unique("win"), broker=log, partitions=2, session_timeout=SESSION_TIMEOUT)
    clicks = app.topic(unique("clicks"), value_type=dict[str, int])
    closed: list[ClosedWindow[str, int]] = []
    current: dict[str, list[int]] = {}
    table = app.windowed_table(
        "per_key",
        source=clicks,
        window=spec,
        default=int,
        merge=operator.add,
        on_close=closed.append,
        time_of=at,
    )

    @app.agent(clicks)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            table[event.key] += event.value["n"]
            assert event.key is not None
            current.setdefault(event.key, []).append(table[event.key].current())

    async with app:
        await clicks.send_many(payloads)
        async with asyncio.timeout(40):
            while len(closed) < expect_closed or sum(map(len, current.values())) < len(payloads):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    return closed, current


async def test_tumbling_windows_close_by_stream_time_with_grace(broker: brokers.Broker) -> None:
    closed, _ = await run_windows(
        broker,
        Tumbling.of(10, grace=5),
        events(
            [
                ("a", 1, 1),
                ("a", 9, 2),  # window [0, 10)
                ("a", 12, 4),  # window [10, 20): stream time 12 < 10 + 5
                ("a", 8, 8),  # late but within grace: still counted in [0, 10)
                ("a", 16, 1),  # stream time 16 >= 15: [0, 10) closes
                ("a", 3, 100),  # too late: [0, 10) is closed, dropped
                ("a", 40, 1),  # closes [10, 20)
            ]
        ),
        expect_closed=2,
    )
    assert closed == [
        ClosedWindow("a", Window(T0, T0 + 10_000), 11),
        ClosedWindow("a", Window(T0 + 10_000, T0 + 20_000), 5),
    ]


async def test_hopping_windows_count_each_event_in_every_window(broker: brokers.Broker) -> None:
    closed, _ = await run_windows(
        broker,
        Hopping.of(10, 5),
        events([("k", 2, 1), ("k", 7, 1), ("k", 12, 1), ("k", 60, 1)]),
        expect_closed=4,
    )
    by_start = {c.window.start - T0: c.value for c in closed}
    assert by_start == {-5000: 1, 0: 2, 5000: 2, 10000: 1}


async def test_sliding_window_is_the_sum_over_the_last_size(broker: brokers.Broker) -> None:
    _, current = await run_windows(
        broker,
        Sliding.of(10),
        events([("k", 0, 1), ("k", 4, 2), ("k", 9, 4), ("k", 12, 8), ("k", 25, 16)]),
        expect_closed=0,
    )
    # at t: the sum of amounts with time in (t - 10, t]
    assert current["k"] == [1, 3, 7, 14, 16]


async def test_session_windows_merge_when_events_meet(broker: brokers.Broker) -> None:
    closed, _ = await run_windows(
        broker,
        Session.of(5, grace=5),
        # [0, 5) and [7, 12) are apart until the event at 3 bridges them; 20 closes them;
        # 4 then comes too late
        events([("u", 0, 1), ("u", 7, 1), ("u", 3, 1), ("u", 20, 1), ("u", 4, 9), ("u", 60, 1)]),
        expect_closed=2,
    )
    sessions = sorted((c.window.start - T0, c.window.end - T0, c.value) for c in closed)
    assert sessions == [(0, 12_000, 3), (20_000, 25_000, 1)]


def restartable(
    log: brokers.Broker, name: str, topic: str
) -> tuple[App, WindowedTable[str, int], list[ClosedWindow[str, int]], list[int]]:
    """A windowed count over an open broker, so a second run on memory:// finds the log."""
    app = App(name, broker=log, partitions=2, session_timeout=SESSION_TIMEOUT)
    clicks = app.topic(topic, value_type=dict[str, int])
    closed: list[ClosedWindow[str, int]] = []
    handled: list[int] = []
    table = app.windowed_table(
        "per_key",
        source=clicks,
        window=Tumbling.of(10),
        default=int,
        on_close=closed.append,
        time_of=at,
    )

    @app.agent(clicks, on_error="skip")
    async def count(stream: EventStream) -> None:
        async for event in stream:
            handled.append(event.offset)
            table[event.key] += event.value["n"]
            if event.value.get("fail"):
                raise ValueError("a failing event: its changes, stream time too, roll back")

    return app, table, closed, handled


async def wait_handled(handled: list[int], count: int) -> None:
    async with asyncio.timeout(40):
        while len(handled) < count:  # noqa: ASYNC110 - set by the agent
            await asyncio.sleep(0.02)


@pytest.mark.backends("memory")
async def test_stream_time_comes_back_with_the_windows(broker: brokers.Broker) -> None:
    """After a restart, a late event stays late: the window it belongs to does not reopen."""
    name, topic = unique("restime"), unique("clicks")
    app, table, closed, handled = restartable(broker, name, topic)
    async with app:
        clicks = app.topics[topic]
        # 50 fails and is skipped: had it moved stream time, 25 would be late
        await clicks.send_many(
            [("a", {"at": T0 + 1000, "n": 1}), ("a", {"at": T0 + 50_000, "n": 1, "fail": 1})]
        )
        await clicks.send("a", {"at": T0 + 25_000, "n": 1})  # closes [0, 10)
        await wait_handled(handled, 3)
    assert closed == [ClosedWindow("a", Window(T0, T0 + 10_000), 1)]
    assert table.late == 0

    app, table, closed, handled = restartable(broker, name, topic)
    async with app:
        await app.topics[topic].send("a", {"at": T0 + 3000, "n": 100})  # [0, 10) closed: late
        await wait_handled(handled, 1)
        after_restart = dict(table.state.items())
    assert handled == [3], "the restarted worker resumed after the committed events"
    assert table.late == 1
    assert closed == []
    assert after_restart == {"a": {f"{T0 + 20_000}:{T0 + 30_000}": 1}}

    fresh, fresh_table, _, fresh_handled = restartable(broker, unique("fresh"), topic)
    async with fresh:
        await wait_handled(fresh_handled, 4)
        assert dict(fresh_table.state.items()) == after_restart, "equal to a fresh fold"
    assert fresh_table.late == 1


async def emitted(log: brokers.Broker, topic: str) -> set[tuple[str, int, int, int]]:
    """Every closed window sent to ``topic``, as (key, start, end, value)."""
    ends = await log.end_offsets(topic)
    found: set[tuple[str, int, int, int]] = set()
    todo = {p for p, end in ends.items() if end > 0}
    if not todo:
        return found
    async with log.subscribe(topic, partitions=sorted(todo)) as sub:
        async with asyncio.timeout(60):
            while todo:
                for r in await sub.getmany(timeout=0.5):
                    w = brokers.json.loads(r.value or b"{}")
                    found.add(((r.key or b"").decode(), w["start"], w["end"], w["value"]))
                todo = {p for p in todo if (sub.position(TopicPartition(topic, p)) or 0) < ends[p]}
    return found


async def windows_of(url: str, name: str, topic: str) -> dict[str, Any]:
    """The windowed table as a fresh replica folds its changelog."""
    reader = build_windowed(url, name, topic)
    reader.agents.clear()  # a reader: no agent, so no group membership
    async with reader:
        table = reader.tables["sums"]
        assert isinstance(table, WindowedTable)
        await table.load()
        return dict(table.state.items())


@pytest.mark.chaos
@pytest.mark.timeout(300)
@pytest.mark.backends("sqlite", "kafka", "nats")
async def test_sigkill_keeps_windows_equal_to_a_fresh_fold(broker_url: str) -> None:
    """Killed mid-work and restarted, a windowed table closes what a fresh fold closes.

    Event times come out of order (some later than the grace), so a worker that came back
    with a lower stream time would reopen closed windows and emit them again with other
    values.
    """
    name, topic = unique("wchaos"), unique("clicks")
    rng = random.Random(os.environ.get("NEUROPLEX_CHAOS_SEED", "3"))
    clock = T0
    total = 0

    async def send(clicks: Topic[str, dict[str, int]], count: int) -> None:
        nonlocal clock, total
        batch = []
        for _ in range(count):
            clock += 300
            # every other event 9 s behind: mostly too late for its window, and often one
            # of the first after a restart, where a stream time that was lost shows
            late = rng.choice([0, 9000])
            batch.append((f"k{rng.randrange(6)}", {"at": clock - late, "n": 1}))
        await clicks.send_many(batch)
        total += count

    async with brokers.connect(broker_url) as log:
        feeder = build_windowed(broker_url, name, topic)
        feeder.agents.clear()
        async with feeder:
            clicks = feeder.topics[topic]
            for _kill in range(3):
                await send(clicks, 150)
                proc = await spawn(broker_url, name, topic, "windowed")
                assert proc.stdout is not None
                try:
                    async with asyncio.timeout(60):
                        for _ in range(rng.randrange(1, 6)):  # of 6 chunks of 25
                            await proc.stdout.readline()
                    await asyncio.sleep(rng.random() * 0.2)
                finally:
                    with contextlib.suppress(ProcessLookupError):  # it may have died by itself
                        proc.send_signal(signal.SIGKILL)
                    await proc.wait()
                assert proc.returncode == -signal.SIGKILL, "the worker died by itself"
            await send(clicks, 50)  # work for the last worker, which is not killed

        # the same input folded from scratch, in one go, by an app of another name
        done = [0]
        fresh = build_windowed(
            broker_url, unique("wfresh"), topic, handled=lambda n: done.__setitem__(0, done[0] + n)
        )
        fresh_table = fresh.tables["sums"]
        assert isinstance(fresh_table, WindowedTable)
        async with fresh:
            async with asyncio.timeout(120):
                while done[0] < total:  # noqa: ASYNC110 - counted by the agent
                    await asyncio.sleep(0.05)
        expected_windows = await windows_of(broker_url, fresh.name, topic)
        expected_closed = await emitted(log, f"{fresh.name}.closed")
        assert fresh_table.late > 0, "the input has late events"
        assert expected_closed, "and windows that close"

        proc = await spawn(broker_url, name, topic, "windowed")
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(120):
                await proc.stdout.readline()  # running (so SIGTERM drains it), and working
                while await windows_of(broker_url, name, topic) != expected_windows:  # noqa: ASYNC110 - a log
                    await asyncio.sleep(0.5)
            assert await emitted(log, f"{name}.closed") == expected_closed
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await proc.wait()
        assert proc.returncode == 0, "SIGTERM drains and exits 0"


@pytest.mark.backends("memory", "sqlite")  # the wall-clock task and emit_to, not a log feature
async def test_wall_clock_closes_windows_of_a_quiet_stream_to_emit_to(
    broker: brokers.Broker,
) -> None:
    """Hopping windows with grace: late events counted once; a quiet stream still emits."""
    app = App(unique("wall"), broker=broker, partitions=1, session_timeout=SESSION_TIMEOUT)
    clicks = app.topic(unique("clicks"), value_type=dict[str, int])
    closed_topic = app.topic(unique("closed"), value_type=dict[str, int])
    on_close: list[ClosedWindow[str, int]] = []
    table = app.windowed_table(
        "per_key",
        source=clicks,
        window=Hopping.of(10, 5, grace=3),
        default=int,
        on_close=on_close.append,
        emit_to=closed_topic,
        close_on_wall_clock=True,
        time_of=at,
    )
    handled: list[int] = []

    @app.agent(clicks)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            table[event.key] += 1
            handled.append(event.offset)

    # event times two minutes behind the wall clock: every window is due by it at once
    base = (time.time_ns() // 1_000_000 - 120_000) // 10_000 * 10_000

    def window(start_s: int) -> tuple[int, int]:
        return base + start_s * 1000, base + (start_s + 10) * 1000

    async def sent_windows(count: int) -> list[tuple[tuple[int, int], int]]:
        async with broker.subscribe(closed_topic.name) as sub:
            records = await consume(sub, count)
        return [
            ((v["start"], v["end"]), v["value"])
            for v in (brokers.json.loads(r.value or b"{}") for r in records)
        ]

    async with app:
        # 12 closes [-5, 5) by stream time (5 + 3 <= 12); 2 is late for it, in time for [0, 10)
        seconds = [1, 6, 12, 2]
        await clicks.send_many([("k", {"at": base + s * 1000}) for s in seconds])
        await wait_handled(handled, 4)
        assert table.late == 1, "the event late for one of its windows, counted once"
        # no more events: the other windows go out on the wall clock
        first = await sent_windows(4)
        assert sorted(first) == [(window(-5), 1), (window(0), 3), (window(5), 2), (window(10), 1)]
        assert sorted(first) == sorted(((c.window.start, c.window.end), c.value) for c in on_close)
        assert sorted(table["k"].windows()) == [Window(*window(s)) for s in (0, 5, 10)]

        # stream time then closes them: they leave the state and are not sent again
        await clicks.send("k", {"at": base + 60_000})
        await wait_handled(handled, 5)
        assert sorted(table["k"].windows()) == [Window(*window(s)) for s in (55, 60)]
        everything = await sent_windows(6)  # the new windows come on the next wall-clock tick
    assert sorted(everything[4:]) == [(window(55), 1), (window(60), 1)]
    assert len(on_close) == 6
