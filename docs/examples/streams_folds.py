"""Folds: what each customer has spent, a table folded a batch at a time.

Run: python docs/examples/streams_folds.py   (NEUROPLEX_BROKER=... for another log)
Expect: spent: {'ann': 42, 'bo': 5}
Expect: after a restart: {'ann': 42, 'bo': 5, 'cy': 7}
Expect: dead letters: 1 (amount: Input should be greater than or equal to 0)
"""

import asyncio
import os
import uuid

from pydantic import BaseModel, Field

import brokers
from streams import App, Event

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
RUN = uuid.uuid4().hex[:6]


class Payment(BaseModel):
    amount: int = Field(ge=0)  # cents
    refund: bool = False


def build(log: brokers.Broker) -> App:
    app = App(f"billing-{RUN}", broker=log, partitions=4)
    payments = app.topic(f"payments-{RUN}", value_type=Payment)
    spent = app.table("spent", source=payments, default=int)

    @spent.fold
    def add(total: int, payment: Event[str, Payment]) -> int | None:
        change = -payment.value.amount if payment.value.refund else payment.value.amount
        return total + change or None  # back to zero: the customer leaves the table

    return app


async def settled(app: App, expected: dict[str, int]) -> dict[str, int]:
    spent = app.tables["spent"]
    while dict(spent.items()) != expected:
        await asyncio.sleep(0.05)
    return dict(sorted(spent.items()))


async def main() -> None:
    async with brokers.connect(URL) as log:  # one connection: memory:// keeps its log
        app = build(log)
        async with app:
            payments = app.topics[f"payments-{RUN}"]
            await payments.send_many(
                [
                    ("ann", Payment(amount=40)),
                    ("bo", Payment(amount=5)),
                    ("dee", Payment(amount=9)),
                    ("ann", Payment(amount=2)),
                    ("dee", Payment(amount=9, refund=True)),
                ]
            )
            # bad input never reaches the fold: it goes to the dead-letter topic
            await log.produce(payments.name, b'{"amount": -1}', key=b"ann")
            print("spent:", await settled(app, {"ann": 42, "bo": 5}))

        again = build(log)  # a new worker restores the table and goes on
        async with again:
            await again.topics[f"payments-{RUN}"].send("cy", Payment(amount=7))
            print("after a restart:", await settled(again, {"ann": 42, "bo": 5, "cy": 7}))

        async with log.subscribe(payments.dead_letter_topic) as sub:
            letters = await sub.getmany(timeout=5)
        reason = dict(letters[0].headers)["x-dead-letter-reason"].decode()
        print(f"dead letters: {len(letters)} ({reason})")


if __name__ == "__main__":
    asyncio.run(main())
