"""Bounded reading: everything a topic held at one moment, while writers keep going.

Run: python docs/examples/read_to_end.py   (NEUROPLEX_BROKER=... for another log)
Expect: read 10000 readings, 0 written after we looked
"""

import asyncio
import os

import brokers
from brokers import ProducerRecord, Record, TopicPartition, TopicSpec

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
TOPIC = "readings"


async def read_up_to(log: brokers.Broker, topic: str, ends: dict[int, int]) -> list[Record]:
    """Every record before ``ends`` (taken with ``log.end_offsets(topic)``): a strong read."""
    begins = await log.beginning_offsets(topic)  # per partition: the first record still held
    todo = {p for p, end in ends.items() if end > begins[p]}  # skip empty partitions
    records: list[Record] = []
    if not todo:
        return records
    # max_batch bounds one getmany; max_buffer bounds what is fetched ahead of us
    async with log.subscribe(topic, partitions=sorted(todo), max_batch=500, max_buffer=2000) as sub:
        while todo:
            batch = await sub.getmany(timeout=1.0)
            # records past the ends were written after we looked: not part of this read
            records += [r for r in batch if r.offset < ends[r.partition]]
            # offsets may skip numbers (NATS), so compare positions with the ends, never count
            todo = {p for p in todo if (sub.position(TopicPartition(topic, p)) or 0) < ends[p]}
    return records


async def writer(log: brokers.Broker, count: int) -> None:
    for i in range(count):
        await log.produce(TOPIC, f"late-{i}".encode())


async def main() -> None:
    async with brokers.connect(URL) as log:
        await log.create_topic(TopicSpec(TOPIC, partitions=3))
        readings = [
            ProducerRecord(f"{i}".encode(), key=f"sensor-{i % 7}".encode()) for i in range(10_000)
        ]
        await log.produce_batch(TOPIC, readings)

        # per partition: one past the offset of its last record, now
        ends = await log.end_offsets(TOPIC)
        async with asyncio.TaskGroup() as tasks:
            reading = tasks.create_task(read_up_to(log, TOPIC, ends))
            tasks.create_task(writer(log, 500))  # keeps appending while we read
        records = reading.result()
        late = sum(1 for r in records if (r.value or b"").startswith(b"late-"))
        print(f"read {len(records)} readings, {late} written after we looked")


if __name__ == "__main__":
    asyncio.run(main())
