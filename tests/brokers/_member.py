"""A consumer-group member in its own process, for the rebalance tests.

Usage: python -m tests.brokers._member URL TOPIC GROUP SESSION_TIMEOUT

Prints ``assigned p0,p1,...`` (flushed) whenever its assignment changes, and reads forever
until killed or sent SIGTERM (then it leaves the group cleanly).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import brokers


async def main(url: str, topic: str, group: str, session_timeout: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with (
        brokers.connect(url) as broker,
        broker.subscribe(topic, group=group, session_timeout=session_timeout) as sub,
    ):
        shown: frozenset[brokers.TopicPartition] | None = None
        while not stop.is_set():
            await sub.getmany(timeout=0.2)
            if sub.assignment != shown:
                shown = sub.assignment
                parts = ",".join(str(tp.partition) for tp in sorted(shown))
                print(f"assigned {parts}", flush=True)


if __name__ == "__main__":
    url, topic, group, timeout = sys.argv[1:5]
    asyncio.run(main(url, topic, group, float(timeout)))
