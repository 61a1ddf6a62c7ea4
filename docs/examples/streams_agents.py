"""Apps, typed topics and agents: a pipeline over orders, with a dead letter.

Run: python docs/examples/streams_agents.py   (NEUROPLEX_BROKER=... for another log)
Expect: dead letter from orders: total: Field required
"""

import asyncio
import os
import uuid

from pydantic import BaseModel

from streams import App, EventStream

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
RUN = uuid.uuid4().hex[:6]  # fresh names on every run, so a shared server starts clean


class Order(BaseModel):
    user: str
    total: float


app = App(f"shop-{RUN}", broker=URL, partitions=4)
orders = app.topic(f"orders-{RUN}", value_type=Order)  # keys are str by default
big_orders = app.topic(f"big-orders-{RUN}", value_type=Order)
seen: list[str] = []


@app.agent(orders, sink=big_orders)
def route(event):  # a plain function, called per event; what it returns goes to the sink
    seen.append(f"{event.key} {event.value.total}")
    return event.value if event.value.total >= 100 else None


@app.agent(big_orders, on_error="dead_letter", retries=1, backoff=0.01)
async def audit(stream: EventStream) -> None:  # a stream function: per-partition order kept
    async for event in stream.map(lambda e: e.value):
        if event.total > 1000:
            raise ValueError("needs a human")  # retried once, then dead-lettered
        print(f"big order: {event.user} {event.total}")


async def main() -> None:
    async with app:
        await orders.send("alice", Order(user="alice", total=30))
        await orders.send("bob", Order(user="bob", total=250))
        await orders.send("carol", Order(user="carol", total=5000))
        # a record from a service that got the schema wrong: it goes to the dead letters
        await app.broker.produce(orders.name, b'{"user": "dave"}', key=b"dave")
        async with app.broker.subscribe(
            [orders.dead_letter_topic, big_orders.dead_letter_topic]
        ) as letters:
            found = []
            while len(found) < 2:
                found += await letters.getmany(timeout=10)
        for letter in sorted(found, key=lambda r: r.topic):
            reason = dict(letter.headers)["x-dead-letter-reason"].decode()
            print(f"dead letter from {letter.topic.split('-')[0]}: {reason}")
    print(f"routed {len(seen)} orders")


if __name__ == "__main__":
    asyncio.run(main())
