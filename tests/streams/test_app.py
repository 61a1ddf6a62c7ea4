"""The App itself: which broker it runs on, and declarations that need no event loop."""

from __future__ import annotations

from pathlib import Path

import pytest

import brokers
from brokers import UnsupportedURLError
from streams import App
from tests.brokers.conftest import unique


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
