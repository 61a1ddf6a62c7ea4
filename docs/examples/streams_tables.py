"""Tables: a running total per user, restored from its changelog by the next run.

Run: python docs/examples/streams_tables.py   (NEUROPLEX_BROKER=... for another log)
Expect: second run: {'alice': 7, 'bob': 15}
"""

import asyncio
import os
import uuid

import brokers
from streams import App, EventStream

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
RUN = uuid.uuid4().hex[:6]


def build(log: brokers.Broker) -> App:
    app = App(f"tills-{RUN}", broker=log, partitions=4)
    sales = app.topic(f"sales-{RUN}", value_type=int)
    totals = app.table("totals", source=sales, default=int)

    @app.agent(sales)
    async def add(stream: EventStream) -> None:
        async for sale in stream:
            totals[sale.key] += sale.value  # exactly once, even if this worker is killed

    return app


async def settled(app: App, expected: dict[str, int]) -> dict[str, int]:
    totals = app.tables["totals"]
    while dict(totals.items()) != expected:
        await asyncio.sleep(0.05)
    return dict(sorted(totals.items()))


async def main() -> None:
    async with brokers.connect(URL) as log:  # one connection: memory:// keeps its log
        first = build(log)
        async with first:
            sales = first.topics[f"sales-{RUN}"]
            await sales.send_many([("alice", 3), ("bob", 5), ("alice", 4)])
            print("first run:", await settled(first, {"alice": 7, "bob": 5}))

        # a new worker (another process, in real life) restores the table, then goes on
        second = build(log)
        restored: list[int] = []
        second.tables["totals"].on_restore = lambda table, p, done, total: restored.append(p)
        async with second:
            sales = second.topics[f"sales-{RUN}"]
            await sales.send("bob", 10)
            print("second run:", await settled(second, {"alice": 7, "bob": 15}))
        print(f"restored {len(set(restored))} partitions that held state")


if __name__ == "__main__":
    asyncio.run(main())
