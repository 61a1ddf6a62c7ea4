"""A second process on a ``sqlite://`` log, for the tests in test_sqlite.py.

Usage: python -m tests.brokers._sqlite_child MODE URL TOPIC [ARGS...]

Modes (every line printed is flushed at once, so a parent sees it even after a SIGKILL):

``produce URL TOPIC TASKS``
    ``TASKS`` concurrent tasks append batches of 1 to 200 keyless records forever (so each batch
    spans partitions, and several batches share a transaction). A record's value is
    ``"<pid>:<task>:<seq>:<i>:<n>"``: record ``i`` of ``n`` of batch ``seq``. After each
    ``produce_batch`` returns, prints ``ack <pid>:<task>:<seq> <n>``. Every fourth batch, each
    task also overwrites its :data:`COMPACTED_KEYS` keys ``<pid>:<task>:<k>`` in the compacted
    topic ``TOPIC.compacted`` with the value ``<seq>`` and prints ``kack <pid>:<task> <seq>``.
``echo URL TOPIC OUT``
    Reads ``TOPIC`` from the latest offset and produces every value to ``OUT`` unchanged;
    prints ``ready`` once subscribed and ``lag <ms>`` for each record whose value is a send
    time in ns (the one-way latency from the parent's produce to this read).
``open URL TOPIC``
    Opens the log (creating it if needed), creates ``TOPIC`` (4 partitions), produces one
    record and prints ``ok <partition>:<offset>``.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time

import brokers
from brokers import ProducerRecord, TopicSpec

COMPACTED_KEYS = 10


async def produce(url: str, topic: str, tasks: int) -> None:
    pid = os.getpid()

    async def task(t: int, broker: brokers.Broker) -> None:
        rng = random.Random(pid * 1000 + t)
        for seq in range(1_000_000):
            n = rng.randint(1, 200)
            name = f"{pid}:{t}:{seq}"
            batch = [ProducerRecord(f"{name}:{i}:{n}".encode()) for i in range(n)]
            await broker.produce_batch(topic, batch)
            sys.stdout.write(f"ack {name} {n}\n")
            sys.stdout.flush()
            if seq % 4 == 0:  # the compacted topic: every key of this task overwritten
                keyed = [
                    ProducerRecord(b"%d" % seq, key=f"{pid}:{t}:{k}".encode())
                    for k in range(COMPACTED_KEYS)
                ]
                await broker.produce_batch(f"{topic}.compacted", keyed)
                sys.stdout.write(f"kack {pid}:{t} {seq}\n")
                sys.stdout.flush()

    async with brokers.connect(url) as broker:
        await asyncio.gather(*(task(t, broker) for t in range(tasks)))


async def echo(url: str, topic: str, out: str) -> None:
    async with brokers.connect(url) as broker, broker.subscribe(topic, start="latest") as sub:
        await sub.getmany(timeout=0)
        print("ready", flush=True)
        while True:
            for record in await sub.getmany(timeout=1.0):
                now = time.time_ns()
                assert record.value is not None
                sent = int(record.value)
                print(f"lag {(now - sent) / 1e6:.3f}", flush=True)
                await broker.produce(out, record.value)


async def open_and_produce(url: str, topic: str) -> None:
    async with brokers.connect(url) as broker:
        await broker.create_topic(TopicSpec(topic, partitions=4))
        pos = await broker.produce(topic, b"hello", key=str(os.getpid()).encode())
        print(f"ok {pos.partition}:{pos.offset}", flush=True)


def main(argv: list[str]) -> None:
    mode, url, topic, *rest = argv
    if mode == "produce":
        asyncio.run(produce(url, topic, int(rest[0])))
    elif mode == "echo":
        asyncio.run(echo(url, topic, rest[0]))
    elif mode == "open":
        asyncio.run(open_and_produce(url, topic))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
