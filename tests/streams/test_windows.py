"""Event-time windows: which windows an event opens, and windowed tables on every backend."""

from __future__ import annotations

import asyncio
import operator

from hypothesis import given
from hypothesis import strategies as st

import brokers
from streams import (
    App,
    ClosedWindow,
    EventStream,
    Hopping,
    Session,
    Sliding,
    Tumbling,
    Window,
)
from tests.brokers.conftest import SESSION_TIMEOUT, unique

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
