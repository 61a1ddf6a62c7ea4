"""A consumer-group member in its own process, for the rebalance tests.

Usage: python -m tests.brokers._member MODE URL TOPIC GROUP SESSION_TIMEOUT [COUNT]

Every line printed is flushed at once, so a parent sees it even after a SIGKILL.

``member``
    Prints ``assigned p0,p1,...`` whenever its assignment changes, and reads forever until
    killed or sent SIGTERM (then it leaves the group cleanly).
``stall``
    Reads ``COUNT`` records, commits them and prints ``committed <partition>=<offset> ...``;
    then blocks its event loop (no heartbeats: its session runs out and its partitions move)
    until a line arrives on stdin, commits again what it read, still believing it owns its
    partitions, and prints ``stale`` (refused) or ``accepted``.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import brokers
from brokers import Broker, SqliteSettings, StaleMemberError


def _connect(url: str) -> Broker:
    # sqlite leases are renewed every heartbeat_interval (1 s by default): faster for 1 s sessions
    if url.startswith("sqlite:"):
        return brokers.connect(url, settings=SqliteSettings(heartbeat_interval=0.2))
    return brokers.connect(url)


async def member(url: str, topic: str, group: str, session_timeout: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with (
        _connect(url) as broker,
        broker.subscribe(topic, group=group, session_timeout=session_timeout) as sub,
    ):
        shown: frozenset[brokers.TopicPartition] | None = None
        while not stop.is_set():
            await sub.getmany(timeout=0.2)
            if sub.assignment != shown:
                shown = sub.assignment
                parts = ",".join(str(tp.partition) for tp in sorted(shown))
                print(f"assigned {parts}", flush=True)


async def stall(url: str, topic: str, group: str, session_timeout: float, count: int) -> None:
    async with (
        _connect(url) as broker,
        broker.subscribe(topic, group=group, session_timeout=session_timeout) as sub,
    ):
        got = 0
        async with asyncio.timeout(60):
            while got < count:
                got += len(await sub.getmany(timeout=0.5))
        await sub.commit()
        marks = [f"{tp.partition}={sub.position(tp)}" for tp in sorted(sub.assignment)]
        print("committed", *marks, flush=True)
        sys.stdin.readline()  # blocks the event loop: no heartbeat, the session runs out
        try:
            await sub.commit()
        except StaleMemberError:
            print("stale", flush=True)
        else:
            print("accepted", flush=True)


if __name__ == "__main__":
    mode, url, topic, group, timeout, *rest = sys.argv[1:]
    if mode == "member":
        asyncio.run(member(url, topic, group, float(timeout)))
    elif mode == "stall":
        asyncio.run(stall(url, topic, group, float(timeout), int(rest[0])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
