"""Counting workers for the chaos tests, run until killed.

Usage: python -m tests.streams._counting URL APP TOPIC [counts|folded|windowed]

``counts``: per-user counts in a table set by an agent. ``folded``: the same counts, as a
fold. ``windowed``: per-key sums in 10-second tumbling windows of the events' own times (2 s
of grace), closed windows sent to ``<app>.closed``. Each prints ``flushed`` (flushed stdout)
after each chunk of events, so a test can kill it mid-work.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

from streams import App, Event, EventStream, Tumbling

ROOT = Path(__file__).resolve().parents[2]


def build(url: str, name: str, topic_name: str, *, session_timeout: float = 3.0) -> App:
    app = App(name, broker=url, partitions=4, session_timeout=session_timeout)
    views = app.topic(topic_name, value_type=int)
    counts = app.table("counts", source=views, default=int)

    @app.agent(views)
    async def count(stream: EventStream) -> None:
        async for chunk in stream.take(50, within=0.2):
            for event in chunk:
                counts[event.key] += event.value
            print("flushed", flush=True)

    return app


def build_folded(url: str, name: str, topic_name: str, *, session_timeout: float = 3.0) -> App:
    """``counts`` as a fold (``@table.fold``); prints ``flushed`` every 50 events folded."""
    app = App(name, broker=url, partitions=4, session_timeout=session_timeout)
    views = app.topic(topic_name, value_type=int)
    counts = app.table("counts", source=views, default=int)
    folded = 0

    @counts.fold(name="count")
    def count(total: int, event: Event[str, int]) -> int:
        nonlocal folded
        folded += 1
        if folded % 50 == 0:
            print("flushed", flush=True)  # not yet: the kill comes mid-batch
        return total + event.value

    return app


def build_windowed(
    url: str,
    name: str,
    topic_name: str,
    *,
    session_timeout: float = 3.0,
    handled: Callable[[int], None] | None = None,
) -> App:
    """``handled`` hears the size of each chunk done (default: print ``flushed``)."""
    app = App(name, broker=url, partitions=2, session_timeout=session_timeout)
    clicks = app.topic(topic_name, value_type=dict[str, int])
    closed = app.topic(f"{name}.closed", value_type=dict[str, int])
    sums = app.windowed_table(
        "sums",
        source=clicks,
        window=Tumbling.of(10, grace=2),
        default=int,
        emit_to=closed,
        time_of=lambda event: event.value["at"],
    )

    @app.agent(clicks)
    async def add(stream: EventStream) -> None:
        async for chunk in stream.take(25, within=0.2):
            for event in chunk:
                sums[event.key] += event.value["n"]
            if handled is None:
                print("flushed", flush=True)
            else:
                handled(len(chunk))

    return app


async def spawn(
    url: str, name: str, topic: str, *extra: str, stdout: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """One of these workers in its own process."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.streams._counting",
        url,
        name,
        topic,
        *extra,
        cwd=ROOT,
        stdout=stdout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


if __name__ == "__main__":
    url, name, topic = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "counts"
    {"counts": build, "folded": build_folded, "windowed": build_windowed}[mode](
        url, name, topic
    ).run()
