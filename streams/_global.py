"""Global tables: every worker's full, read-only copy of a topic's latest value per key.

The right side of stream-table joins: a worker handling any partition of a stream can look any
key up, whichever worker owns it. It follows its topic (all partitions, no consumer group), so
it lags the log by a little; :meth:`GlobalTable.catch_up` waits until it has applied everything
the log held when called (a strong read).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from brokers import TopicPartition
from streams._table import SOURCE_HEADER, _positions_in

if TYPE_CHECKING:
    from streams._app import App
    from streams._topic import Topic

__all__ = ("GlobalTable",)

log = logging.getLogger("neuroplex.tables")

K = TypeVar("K")
V = TypeVar("V")


class GlobalTable(Generic[K, V]):
    """Latest value per key of ``topic`` (tombstones delete), on every worker.

    Declare with :meth:`App.global_table`; ``table.changelog`` of a :class:`Table` is the usual
    topic, giving every worker a copy of that table.
    """

    def __init__(self, app: App, name: str, *, topic: Topic[K, V]) -> None:
        self.app = app
        self.name = name
        self.topic = topic
        self._data: dict[K, V] = {}
        self._positions: dict[K, int] = {}
        self._applied: dict[TopicPartition, int] = {}
        self._advanced: asyncio.Event | None = None  # made on the running loop, in follow()

    def start(self) -> None:
        """The app starts: an empty copy, followed afresh on this run's loop."""
        self._data.clear()
        self._positions.clear()
        self._applied.clear()
        self._advanced = None

    def __repr__(self) -> str:
        return f"<GlobalTable {self.name} of {self.topic.name}: {len(self._data)} keys>"

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._data.get(key, default)

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(self._data.items())

    async def catch_up(self, timeout: float | None = 30.0) -> None:
        """Wait until every record the topic held at this call is applied (a strong read)."""
        ends = await self.app.broker.end_offsets(self.topic.name)
        await asyncio.sleep(0)  # always let the agents run: a loop around this must not starve them
        async with asyncio.timeout(timeout):
            while any(
                self._applied.get(TopicPartition(self.topic.name, p), 0) < end
                for p, end in ends.items()
            ):
                if self._advanced is None:
                    await asyncio.sleep(0.01)  # follow() has not started yet
                    continue
                self._advanced.clear()
                await self._advanced.wait()

    async def follow(self) -> None:
        """Apply the topic's records as they come, until cancelled (the app runs this)."""
        name = self.topic.name
        self._advanced = advanced = asyncio.Event()
        async with self.app.broker.subscribe(name, max_batch=5000) as sub:
            while True:
                batch = await sub.getmany(timeout=0.5)
                for record in batch:
                    self._applied[TopicPartition(name, record.partition)] = record.offset + 1
                    if record.key is None:
                        continue
                    key = self.topic.key_codec.decode(record.key)
                    # a table's changelog: per key, the record of the highest source position wins
                    position = _positions_in(record.headers)[0] if _has(record.headers) else -1
                    if position >= 0 and self._positions.get(key, -1) > position:
                        continue
                    if position >= 0:
                        self._positions[key] = position
                    if record.value is None:
                        self._data.pop(key, None)
                    else:
                        self._data[key] = self.topic.value_codec.decode(record.value)
                if batch:
                    advanced.set()


def _has(headers: tuple[tuple[str, bytes], ...]) -> bool:
    return any(name == SOURCE_HEADER for name, _ in headers)
