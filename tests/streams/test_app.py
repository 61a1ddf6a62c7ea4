"""The App itself: which broker it runs on, and declarations that need no event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import brokers
from brokers import UnsupportedURLError
from streams import App, EventStream, GlobalTable, Table, Tumbling
from tests.brokers.conftest import SESSION_TIMEOUT, unique


async def test_the_broker_is_neuroplex_broker_when_none_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv("NEUROPLEX_BROKER", url)
    app = App(unique("env"), partitions=2)  # declared before the variable is read: at start
    topic = app.topic(unique("events"), value_type=int)
    async with app:
        await topic.send("k", 1)
    async with brokers.connect(url) as log:  # the record is in the file the variable names
        assert sum((await log.end_offsets(topic.name)).values()) == 1


async def test_an_explicit_broker_wins_over_neuroplex_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_url = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv("NEUROPLEX_BROKER", env_url)
    app = App(unique("explicit"), broker="memory://", partitions=2)
    topic = app.topic(unique("events"), value_type=int)
    async with app:
        await topic.send("k", 1)
        assert app.broker.url == "memory://"
    assert not (tmp_path / "from-env.db").exists(), "the variable's log was not touched"


@pytest.mark.parametrize("value", [None, ""])
async def test_without_broker_or_neuroplex_broker_the_app_runs_in_memory(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("NEUROPLEX_BROKER", raising=False)
    else:
        monkeypatch.setenv("NEUROPLEX_BROKER", value)  # set but empty counts as unset
    app = App(unique("default"), partitions=1)
    async with app:
        assert app.broker.url == "memory://"


async def test_a_bad_neuroplex_broker_fails_the_start_saying_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEUROPLEX_BROKER", "kafak://127.0.0.1:9092")
    app = App(unique("typo"))
    with pytest.raises(UnsupportedURLError) as info:
        async with app:
            pass
    message = str(info.value)
    assert "'kafak://127.0.0.1:9092'" in message
    assert "NEUROPLEX_BROKER" in message
    assert "kafka://host:port" in message, "it says which URLs work"


def test_declared_without_a_loop_the_app_runs_in_two_loops_in_turn(tmp_path: Path) -> None:
    """Nothing is bound to an event loop at import or declaration time, nor left bound by a run.

    A plain (sync) test: no loop runs while the app, its topics, agents and tables are declared;
    then two ``asyncio.run`` calls, two loops, run it in turn. The second goes on from the log.
    """
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    app = App(
        unique("loopfree"),
        broker=f"sqlite:///{tmp_path / 'log.db'}",
        partitions=2,
        session_timeout=SESSION_TIMEOUT,
        state_dir=tmp_path / "state",
    )
    events = app.topic(unique("events"), value_type=int)
    by_parity = app.group_by(events, lambda e: "odd" if e.value % 2 else "even", name="parity")
    totals: Table[str, int] = app.table("totals", source=events, default=int)
    parities: Table[str, int] = app.table("parities", source=by_parity, default=int, store="sqlite")
    per_window = app.windowed_table("per_10s", source=events, window=Tumbling.of(10), default=int)
    everywhere: GlobalTable[str, int] = app.global_table("everywhere", topic=totals.changelog)

    @app.agent(events)
    async def total(stream: EventStream) -> None:
        async for event in stream:
            assert event.key is not None
            totals[event.key] += event.value
            per_window[event.key] += 1

    @app.agent(by_parity)
    async def parity(stream: EventStream) -> None:
        async for chunk in stream.take(10, within=0.05):
            for event in chunk:
                assert event.key is not None
                parities[event.key] += 1

    async def run(values: range) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        async with app:
            await events.send_many([(f"k{v % 3}", v) for v in values])
            async with asyncio.timeout(40):
                while sum(dict(parities.items()).values()) < values.stop:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                while sum(dict(totals.items()).values()) < sum(range(values.stop)):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await everywhere.catch_up()
            return dict(totals.items()), dict(parities.items()), dict(everywhere.items())

    first = asyncio.run(run(range(0, 30)))
    expected = {f"k{k}": sum(v for v in range(30) if v % 3 == k) for k in range(3)}
    assert first == (expected, {"even": 15, "odd": 15}, expected)
    second = asyncio.run(run(range(30, 60)))
    expected = {f"k{k}": sum(v for v in range(60) if v % 3 == k) for k in range(3)}
    assert second == (expected, {"even": 30, "odd": 30}, expected)
