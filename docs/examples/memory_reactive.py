"""Keys as reactive streams: reactivex operators over changes, and a bounded subscription.

Run: python docs/examples/memory_reactive.py   (NEUROPLEX_BROKER=... for another log)
Expect: search box settled on: 'neuroplex'
Expect: prices seen by the slow reader: [101, 102, 103]
"""

import asyncio
import os
import uuid

import reactivex.operators as ops

from agents import Memory

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")


async def main() -> None:
    async with Memory(URL, namespace=f"ui-{uuid.uuid4().hex[:6]}") as mem:
        settled: list[str] = []
        (
            mem.observe("search")
            .pipe(
                ops.filter(lambda change: change.new is not None),
                ops.map(lambda change: change.new),
                ops.debounce(0.3, scheduler=mem.scheduler),  # time runs on the asyncio loop
            )
            .subscribe(settled.append)
        )
        for text in ("n", "ne", "neuro", "neuroplex"):  # typed quickly
            await mem.set("search", text)
        await asyncio.sleep(0.6)
        print(f"search box settled on: {settled[-1]!r}")

        # an async iterator with a bounded buffer: a slow reader keeps the newest changes
        prices = mem.subscribe("price:*", buffer=3, overflow="drop_oldest")
        for cents in range(98, 104):
            await mem.set("price:tea", cents)
        seen = [(await anext(prices)).new for _ in range(3)]
        print(f"prices seen by the slow reader: {seen} ({prices.dropped} dropped)")
        prices.close()


if __name__ == "__main__":
    asyncio.run(main())
