"""A racer: reads the key's version, then tries one compare-and-swap from it.

Usage: python -m tests.agents._cas_child URL NAMESPACE NAME VERSION
Prints ``won`` or ``lost <current version>``.
"""

from __future__ import annotations

import asyncio
import sys

from agents import Memory


async def main(url: str, namespace: str, name: str, version: int) -> None:
    async with Memory(url, namespace=namespace, partitions=2, janitor=False) as mem:
        result = await mem.compare_and_swap("leader", name, expected_version=version)
        print("won" if result.applied else f"lost {result.version}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
