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
        settled: asyncio.Queue[str] = asyncio.Queue()
        (
            mem.observe("search")
            .pipe(
                ops.filter(lambda change: change.new is not None),
                ops.map(lambda change: change.new),
                ops.debounce(0.3, scheduler=mem.scheduler),  # time runs on the asyncio loop
            )
            .subscribe(settled.put_nowait)
        )
        typed = ("n", "ne", "neuro", "neuroplex")
        for text in typed:
            await mem.set("search", text)
        # a pause of 0.3 s lets a value through: on a slow log an earlier one may settle too,
        # but the last one typed always does
        async with asyncio.timeout(10):
            while (text := await settled.get()) != typed[-1]:
                pass
        print(f"search box settled on: {text!r}")

        # an async iterator with a bounded buffer: a slow reader keeps the newest changes
        prices = mem.subscribe("price:*", buffer=3, overflow="drop_oldest")
        for cents in range(98, 104):
            await mem.set("price:tea", cents)
        seen = [(await anext(prices)).new for _ in range(3)]
        print(f"prices seen by the slow reader: {seen} ({prices.dropped} dropped)")
        prices.close()


if __name__ == "__main__":
    asyncio.run(main())
