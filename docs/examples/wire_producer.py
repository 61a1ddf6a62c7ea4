"""A service that knows nothing of neuroplex: plain aiokafka or nats-py, publishing JSON.

It publishes one page view for each of the users u0..u9, keyed by user, to a topic of an app
that reads them as its own (docs/wire-format.md says what to send). The tests run it against
Tansu and nats-server while an app counts the views per user, and check every view lands on
its key's partition (none needs rerouting) and none is dead-lettered.

Run: python docs/examples/wire_producer.py kafka://127.0.0.1:9092 pageviews 8
     python docs/examples/wire_producer.py nats://127.0.0.1:4222 pageviews 8
Expect: published 10 page views
"""

import asyncio
import json
import sys


# --8<-- [start:kafka]
async def publish_kafka(bootstrap: str, topic: str, views: list[dict[str, object]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)  # murmur2 by default
    await producer.start()
    try:
        for view in views:
            value, key = json.dumps(view).encode(), str(view["user"]).encode()
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


# --8<-- [end:kafka]
# --8<-- [start:nats]
def murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner, ported: NATS clients do not have it."""
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


async def publish_nats(
    server: str, topic: str, partitions: int, views: list[dict[str, object]]
) -> None:
    import nats

    nc = await nats.connect(server)
    try:
        js = nc.jetstream()
        for view in views:
            key = str(view["user"])
            p = murmur2_partition(key.encode(), partitions)  # the key's partition
            subject = f"np.{topic.replace('.', '=')}.{p}"  # one subject per partition
            await js.publish(subject, json.dumps(view).encode(), headers={"Np-Key": key})
    finally:
        await nc.close()


# --8<-- [end:nats]


def main(url: str, topic: str, partitions: int) -> None:
    views: list[dict[str, object]] = [
        {"user": f"u{i}", "page": "/", "at_ms": 1_700_000_000_000 + i} for i in range(10)
    ]
    if url.startswith("kafka://"):
        asyncio.run(publish_kafka(url.removeprefix("kafka://"), topic, views))
    elif url.startswith("nats://"):
        asyncio.run(publish_nats(url, topic, partitions, views))
    else:
        sys.exit(f"a kafka:// or nats:// URL, not {url!r}")
    print(f"published {len(views)} page views to {topic}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
