"""Helpers for the broker conformance suite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from brokers import Record, Subscription, TopicPartition

SESSION_TIMEOUT = 6.0
"""Group session timeout in tests: Tansu holds JoinGroup for half of it (BROKERS.md)."""


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def consume(sub: Subscription, count: int, *, timeout: float = 30.0) -> list[Record]:
    """Read until ``count`` records arrived (fails the test after ``timeout`` seconds)."""
    records: list[Record] = []
    async with asyncio.timeout(timeout):
        while len(records) < count:
            records.extend(await sub.getmany(timeout=0.5))
    return records


async def poll_until(
    subs: list[Subscription],
    done: Callable[[], bool],
    *,
    timeout: float = 40.0,
) -> dict[int, list[Record]]:
    """Poll every subscription in turn until ``done()``; returns what each one read."""
    got: dict[int, list[Record]] = {i: [] for i in range(len(subs))}
    async with asyncio.timeout(timeout):
        while not done():
            results = await asyncio.gather(*(s.getmany(timeout=0.2) for s in subs))
            for i, batch in enumerate(results):
                got[i].extend(batch)
    return got


def all_partitions(topic: str, n: int) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(topic, p) for p in range(n))
