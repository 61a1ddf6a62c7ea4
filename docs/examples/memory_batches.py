"""KV batches, bulk writes with progress, export and import.

Run: python docs/examples/memory_batches.py   (NEUROPLEX_BROKER=... for another log)
Expect: batch: 3 applied, 1 rejected (absent)
Expect: imported 501 keys into the copy
Expect: the offer expires at the same moment in the copy: True
"""

import asyncio
import os
import uuid

import brokers
from agents import Memory

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
RUN = uuid.uuid4().hex[:6]


async def main() -> None:
    async with (
        brokers.connect(URL) as log,
        Memory(log, namespace=f"stock-{RUN}") as stock,
        Memory(log, namespace=f"copy-{RUN}") as copy,
    ):
        result = await stock.execute_batch(
            stock.create_batch()
            .set("apples", 10)
            .increment("pears", 4)
            .set("plums", 2)
            .delete("figs")
        )
        why = result.results[3].reason
        print(f"batch: {result.applied} applied, {result.rejected} rejected ({why})")

        await stock.bulk_set(
            {f"sku:{i}": i for i in range(500)},
            chunk=200,
            progress=lambda done: print(f"  {done} written"),
        )
        await stock.set("sku:offer", "half price", ttl=3600)  # a deadline, kept by the copy
        exported = [item async for item in stock.export("sku:*")]  # (key, value, expires_at)
        imported = await copy.import_keys(exported)
        print(f"imported {imported} keys into the copy")
        original, offer = await stock.get_entry("sku:offer"), await copy.get_entry("sku:offer")
        same = (
            original is not None and offer is not None and offer.expires_at == original.expires_at
        )
        print(f"the offer expires at the same moment in the copy: {same}")


if __name__ == "__main__":
    asyncio.run(main())
