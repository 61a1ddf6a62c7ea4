"""A service that knows nothing of neuroplex: plain aiokafka or nats-py, publishing JSON.

Usage: python -m tests.streams._foreign_producer URL TOPIC PARTITIONS

Publishes users u0..u9 one page view each, keyed by user, as docs/wire-format.md says.
"""

from __future__ import annotations

import asyncio
import json
import sys


def murmur2_partition(key: bytes, partitions: int) -> int:
    # written out here on purpose: a foreign service does not import neuroplex
    length, seed, m = len(key), 0x9747B28C, 0x5BD1E995
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length % 4
    if rest:
        tail = key[length - rest :]
        if rest == 3:
            h ^= tail[2] << 16
        if rest >= 2:
            h ^= tail[1] << 8
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


async def kafka(bootstrap: str, topic: str) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(10):
            value = json.dumps({"user": f"u{i}", "page": "/", "at_ms": 1_700_000_000_000 + i})
            await producer.send_and_wait(topic, value.encode(), key=f"u{i}".encode())
    finally:
        await producer.stop()


async def nats_(server: str, topic: str, partitions: int) -> None:
    import nats

    nc = await nats.connect(server)
    try:
        js = nc.jetstream()
        for i in range(10):
            key = f"u{i}"
            value = json.dumps({"user": key, "page": "/", "at_ms": 1_700_000_000_000 + i})
            subject = f"np.{topic.replace('.', '=')}.{murmur2_partition(key.encode(), partitions)}"
            await js.publish(subject, value.encode(), headers={"Np-Key": key})
    finally:
        await nc.close()


if __name__ == "__main__":
    url, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if url.startswith("kafka://"):
        asyncio.run(kafka(url.removeprefix("kafka://"), topic))
    else:
        asyncio.run(nats_(url, topic, partitions))
