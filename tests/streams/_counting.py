"""A counting worker for the chaos test: per-user counts in a table, run until killed.

Usage: python -m tests.streams._counting URL APP TOPIC

Prints ``flushed`` (flushed stdout) whenever a batch is done, so the test can kill it
mid-work.
"""

from __future__ import annotations

import sys

from streams import App, EventStream


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


if __name__ == "__main__":
    build(*sys.argv[1:4]).run()
