"""Helpers for the broker conformance suite."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from brokers import Record, Subscription, TopicPartition

ROOT = Path(__file__).resolve().parents[2]

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


# ---------------------------------------------------------------- child processes


async def spawn(
    module: str, *args: str, stdin: bool = False, stderr: bool = False
) -> asyncio.subprocess.Process:
    """Run ``python -m module args...`` from the project root; its stdout is read by lines
    (``stdin``/``stderr``: pipes to write to it and to read its errors, else inherited)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stderr else None,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def read_line(proc: asyncio.subprocess.Process, *, timeout: float = 60.0) -> str:
    """The child's next line (fails if it exits first, or after ``timeout`` seconds)."""
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        line = (await proc.stdout.readline()).decode()
    if not line:
        raise AssertionError(f"child exited with {await proc.wait()} before printing")
    return line.strip()


async def stop(proc: asyncio.subprocess.Process) -> None:
    """Kill the child if it still runs, and reap it."""
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
