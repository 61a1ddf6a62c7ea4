"""A small app for ``neuroplex worker tests.streams._cli_app:app``, configured by environment.

``NEUROPLEX_BROKER`` is the log (the App is declared without ``broker=``, so it reads it when
it starts), ``NEUROPLEX_TEST_APP`` the app's name and ``NEUROPLEX_TEST_TOPIC`` the topic whose
integer values are summed per key in the table ``counts``.
"""

from __future__ import annotations

import os

from streams import App, EventStream


def build(name: str, topic_name: str, *, broker: str | None = None) -> App:
    app = App(name, broker=broker, partitions=4, session_timeout=3.0)
    events = app.topic(topic_name, value_type=int)
    counts = app.table("counts", source=events, default=int)

    @app.agent(events)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            counts[event.key] += event.value

    return app


app = build(
    os.environ.get("NEUROPLEX_TEST_APP", "cli-app"),
    os.environ.get("NEUROPLEX_TEST_TOPIC", "cli-app-events"),
)
