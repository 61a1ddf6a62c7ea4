"""Where a key lands, and how to spot a record that a foreign producer put elsewhere.

Run: python docs/examples/partitioning.py   (NEUROPLEX_BROKER=... for another log)
Expect: 'user-42' -> partition 4 of 8
Expect: misplaced record: key b'user-42' on partition 5, but the key belongs on 4
"""

import asyncio
import os

import brokers
from brokers import Record, TopicSpec, default_partitioner

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
TOPIC, PARTITIONS = "clicks", 8


def misplaced(record: Record, partitions: int) -> bool:
    """A keyed record that is not where Kafka's default partitioner puts its key."""
    if record.key is None:
        return False
    return default_partitioner(record.key, partitions) != record.partition


async def main() -> None:
    # the same answer as Java's default partitioner, kafkajs v2 and librdkafka murmur2_random
    for key in ("user-42", "ünïcode-🔑"):
        print(
            f"{key!r} -> partition {default_partitioner(key.encode(), PARTITIONS)} of {PARTITIONS}"
        )

    async with brokers.connect(URL) as log:
        spec = await log.create_topic(TopicSpec(TOPIC, partitions=PARTITIONS))
        home = await log.produce(TOPIC, b"right", key=b"user-42")  # our partitioner
        # what a librdkafka producer on its default (consistent_random) may do to a key
        elsewhere = (home.partition + 1) % PARTITIONS
        await log.produce(TOPIC, b"wrong", key=b"user-42", partition=elsewhere)

        async with log.subscribe(TOPIC) as sub:
            records: list[Record] = []
            async with asyncio.timeout(30):
                while len(records) < 2:
                    records += await sub.getmany(timeout=1.0)
        for record in records:
            if record.key is not None and misplaced(record, spec.partitions):
                home_partition = default_partitioner(record.key, spec.partitions)
                print(
                    f"misplaced record: key {record.key!r} on partition {record.partition}, "
                    f"but the key belongs on {home_partition}"
                )


if __name__ == "__main__":
    asyncio.run(main())
