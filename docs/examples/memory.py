"""The KV memory: versions, compare-and-swap, consistency levels, TTL and observed keys.

Run: python docs/examples/memory.py   (NEUROPLEX_BROKER=... for another log)
Expect: bob lost the race: the version is now
Expect: strong read in the other service: ['apple', 'pear']
Expect: observed: current None -> set 1 -> increment 2 -> increment 3
"""

import asyncio
import os
import uuid

import brokers
from agents import CausalContext, Memory

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
NAMESPACE = f"shop-{uuid.uuid4().hex[:6]}"  # fresh on every run, so a shared server starts clean


async def main() -> None:
    async with (
        brokers.connect(URL) as log,  # one connection: memory:// keeps its log
        Memory(log, namespace=NAMESPACE) as one,  # two processes, in real life
        Memory(log, namespace=NAMESPACE) as two,
    ):
        # every write is an event on the log; the version is its position
        done = await one.set("cart:ann", ["apple"])
        print(f"set at version {done.version}")

        # two writers start from the same version: the log orders them, one wins
        ann = await one.compare_and_swap(
            "cart:ann", ["apple", "pear"], expected_version=done.version
        )
        bob = await two.compare_and_swap("cart:ann", ["plum"], expected_version=done.version)
        print(f"ann applied={ann.applied}")
        print(f"bob lost the race: the version is now {bob.version}")

        # another service reads linearizably (strong), or carries this session's context
        print("strong read in the other service:", await two.get("cart:ann", consistency="strong"))
        session = CausalContext()
        await one.set("seen:ann", True, context=session)
        print("causal read:", await two.get("seen:ann", consistency="causal", context=session))

        # keys as reactivex Observables: the current value, then every change
        changes: list[str] = []
        one.observe("visits").subscribe(lambda c: changes.append(f"{c.op} {c.new}"))
        await one.set("visits", 1)
        await one.increment("visits")
        await one.increment("visits")
        print("observed:", " -> ".join(changes))

        # TTL runs on the log's time: a janitor appends a tick when the deadline passes
        await one.set("otp:ann", "492113", ttl=0.5)
        while await one.get("otp:ann") is not None:
            await asyncio.sleep(0.1)
        print("the one-time password expired")


if __name__ == "__main__":
    asyncio.run(main())
