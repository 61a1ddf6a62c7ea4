"""Joins: orders enriched from a table on every worker; clicks paired with purchases.

Run: python docs/examples/streams_joins.py   (NEUROPLEX_BROKER=... for another log)
Expect: ann bought 20s after the click
"""

import asyncio
import os
import uuid

from brokers import json
from streams import App, EventStream

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
RUN = uuid.uuid4().hex[:6]
T0 = 1_700_000_000_000

app = App(f"store-{RUN}", broker=URL, partitions=4)
profiles = app.topic(f"profiles-{RUN}", value_type=dict[str, str])
orders = app.topic(f"orders-{RUN}", value_type=int)
clicks = app.topic(f"clicks-{RUN}", value_type=dict[str, int])
buys = app.topic(f"buys-{RUN}", value_type=dict[str, int])

# --8<-- [start:stream_table]
cities = app.table("cities", source=profiles, value_type=str)
cities_everywhere = app.global_table("cities_everywhere", topic=cities.changelog)
enriched: list[str] = []


@app.agent(profiles)
async def keep_city(stream: EventStream) -> None:
    async for profile in stream:
        cities[profile.key] = profile.value["city"]


@app.agent(orders)
async def enrich(stream: EventStream) -> None:
    async for order, city in stream.join(cities_everywhere):  # any worker looks any key up
        enriched.append(f"order of {order.value} from {order.key} in {city}")


# --8<-- [end:stream_table]


# --8<-- [start:windowed]
pairs = app.join_windowed(
    clicks, buys, within=60, grace=60, name="click_to_buy", time_of=lambda e: e.value["at"]
)
# --8<-- [end:windowed]


async def main() -> None:
    async with app:
        await profiles.send_many([("ann", {"city": "Lyon"}), ("bo", {"city": "Oslo"})])
        while len(cities_everywhere) < 2:  # every worker's copy follows the changelog
            await asyncio.sleep(0.05)
        await orders.send_many([("ann", 30), ("bo", 12), ("cy", 5)])
        await clicks.send_many([("ann", {"at": T0}), ("bo", {"at": T0})])
        await buys.send_many([("ann", {"at": T0 + 20_000}), ("bo", {"at": T0 + 300_000})])
        async with app.broker.subscribe(pairs.name) as joined:
            got = []
            while not got:
                got = await joined.getmany(timeout=10)
        while len(enriched) < 3:
            await asyncio.sleep(0.05)
    for line in sorted(enriched):
        print(line)
    for record in got:
        pair = json.loads(record.value or b"{}")
        waited = (pair["right"]["at"] - pair["left"]["at"]) // 1000
        print(f"{pair['key']} bought {waited}s after the click")


if __name__ == "__main__":
    asyncio.run(main())
