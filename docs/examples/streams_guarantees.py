"""Guarantees: agents get every event at least once; a table applies each exactly once.

The app's consumer group is rewound to offset 0, so every event is delivered again: the agent
handles each a second time, the table holds each once.

Run: python docs/examples/streams_guarantees.py   (NEUROPLEX_BROKER=... for another log)
Expect: first run: 3 handled, 3 applied; balances {'ann': 30, 'bo': 12}
Expect: second run: 3 handled, 0 applied; balances {'ann': 30, 'bo': 12}
Expect: a new deposit: 1 handled, 1 applied; balances {'ann': 35, 'bo': 12}
"""

import asyncio
import os
import uuid
from collections import Counter

import brokers
from brokers import TopicPartition
from streams import App, EventStream

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
RUN = uuid.uuid4().hex[:6]
PARTITIONS = 4
SESSION_TIMEOUT = 3.0  # short, so joining the group again is quick (Tansu holds a join for half)


def build(log: brokers.Broker) -> tuple[App, Counter[str]]:
    """One worker of the app: a balance per account, folded from its deposits."""
    app = App(f"bank-{RUN}", broker=log, partitions=PARTITIONS, session_timeout=SESSION_TIMEOUT)
    deposits = app.topic(f"deposits-{RUN}", value_type=int)
    balances = app.table("balances", source=deposits, default=int)
    seen: Counter[str] = Counter()

    @app.agent(deposits)
    async def credit(stream: EventStream) -> None:
        async for deposit in stream:
            seen["handled"] += 1
            if balances.will_apply(deposit.key):  # False for an event the table holds already
                seen["applied"] += 1
            balances[deposit.key] += deposit.value  # and a write for such an event is ignored

    return app, seen


async def settled(app: App, seen: Counter[str], handled: int, balances: dict[str, int]) -> str:
    table = app.tables["balances"]
    while seen["handled"] < handled or dict(table.items()) != balances:
        await asyncio.sleep(0.05)
    got = dict(sorted(table.items()))
    return f"{seen['handled']} handled, {seen['applied']} applied; balances {got}"


async def rewind(log: brokers.Broker, group: str, topic: str) -> None:
    """What an operator's `kafka-consumer-groups --reset-offsets --to-earliest` does."""
    everything = {TopicPartition(topic, p) for p in range(PARTITIONS)}
    async with log.subscribe(topic, group=group, session_timeout=SESSION_TIMEOUT) as sub:
        while sub.assignment != everything:  # joined the group, which now has no other member
            await sub.getmany(timeout=0.5)
        await sub.commit(dict.fromkeys(everything, 0))


async def main() -> None:
    async with brokers.connect(URL) as log:  # one connection: memory:// keeps its log
        first, seen = build(log)
        async with first:  # leaving drains: the changelog is written, the positions committed
            deposits = first.topics[f"deposits-{RUN}"]
            await deposits.send_many([("ann", 20), ("bo", 12), ("ann", 10)])
            print("first run:", await settled(first, seen, 3, {"ann": 30, "bo": 12}))

        await rewind(log, f"{first.name}.credit", deposits.name)  # the agent's consumer group
        print("the group is rewound to offset 0: every deposit is delivered again")

        second, seen = build(log)  # a restarted worker: restores the table, then reads from 0
        async with second:
            print("second run:", await settled(second, seen, 3, {"ann": 30, "bo": 12}))
            seen.clear()
            await second.topics[deposits.name].send("ann", 5)
            print("a new deposit:", await settled(second, seen, 1, {"ann": 35, "bo": 12}))


if __name__ == "__main__":
    asyncio.run(main())
