"""The quickstart's pipeline: each customer's running total of purchases, kept in a table.

Run: python docs/examples/shop.py   (NEUROPLEX_BROKER=... for another log)
or as a worker, from this directory: neuroplex worker shop:app   (see the command line page)
Expect: totals: {'alice': 42.5, 'bob': 12.0}
"""

import asyncio

from streams import App, EventStream

# the log: NEUROPLEX_BROKER, else memory:// (or name it: App("shop", broker="sqlite://shop.db"))
app = App("shop")
purchases = app.topic("purchases", value_type=dict[str, float])
totals = app.table("totals", source=purchases, default=float)


@app.agent(purchases)
async def add_up(stream: EventStream) -> None:
    async for purchase in stream:
        totals[purchase.key] += purchase.value["total"]


async def main() -> None:
    async with app:  # connects, creates the topics, starts the agent; leaving drains it
        await purchases.send_many([("alice", {"total": 30}), ("bob", {"total": 12})])
        await purchases.send("alice", {"total": 12.5})
        while dict(totals.items()) != {"alice": 42.5, "bob": 12.0}:
            await asyncio.sleep(0.05)  # the agent folds the purchases into the table
        print("totals:", dict(sorted(totals.items())))


if __name__ == "__main__":
    asyncio.run(main())
