"""Quickstart: connect, create a topic, produce, read it back.

Run: python docs/examples/quickstart.py   (NEUROPLEX_BROKER=... for another log)
Expect: read 3 orders
"""

import asyncio
import os

import brokers
from brokers import ProducerRecord, TopicSpec
from brokers import json as jsonlib

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")


async def main() -> None:
    async with brokers.connect(URL) as log:
        # create_topic is idempotent: it accepts a topic that exists with the same partitions
        await log.create_topic(TopicSpec("orders", partitions=4))

        # one record: bytes in, and its position in the log back once the log has it
        pos = await log.produce("orders", jsonlib.dumps({"total": 30}), key=b"alice")
        print(f"alice's order is at partition {pos.partition}, offset {pos.offset}")

        # many records at once; records with the same key always land on the same partition
        await log.produce_batch(
            "orders",
            [
                ProducerRecord(jsonlib.dumps({"total": 12}), key=b"bob"),
                ProducerRecord(jsonlib.dumps({"total": 7}), key=b"alice"),
            ],
        )

        # read from the beginning of every partition (start="earliest" is the default);
        # iterating yields batches, in offset order within each partition
        seen = 0
        async with log.subscribe("orders") as sub:
            async for batch in sub:
                for record in batch:
                    order = jsonlib.loads(record.value or b"null")
                    print(f"{record.key!r} p{record.partition}@{record.offset}: {order}")
                    seen += 1
                if seen >= 3:
                    break
        print(f"read {seen} orders")


if __name__ == "__main__":
    asyncio.run(main())
