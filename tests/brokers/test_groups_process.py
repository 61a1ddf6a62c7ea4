"""Consumer groups across real processes: a member that dies, one that stops cleanly.

Only the backends a second process can share run here (memory is one process by definition;
its groups are covered in the conformance suite).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from brokers import Broker, TopicSpec
from tests.brokers.conftest import SESSION_TIMEOUT, all_partitions, poll_until, unique

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.backends("sqlite", "kafka", "nats")


async def _spawn(url: str, topic: str, group: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.brokers._member",
        url,
        topic,
        group,
        str(SESSION_TIMEOUT),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def _wait_assigned(proc: asyncio.subprocess.Process, *, timeout: float = 40.0) -> set[int]:
    """Read the child's lines until it reports a non-empty assignment."""
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"member process exited with {await proc.wait()}")
            parts = line.removeprefix("assigned ").strip()
            if parts:
                return {int(p) for p in parts.split(",")}


@pytest.mark.parametrize("ending", ["killed", "terminated"])
async def test_partitions_move_when_a_member_process_ends(
    broker: Broker, broker_url: str, ending: str
) -> None:
    topic, group = unique("proc"), unique("g")
    await broker.create_topic(TopicSpec(topic, partitions=4))
    total = all_partitions(topic, 4)
    async with broker.subscribe(topic, group=group, session_timeout=SESSION_TIMEOUT) as here:
        proc = await _spawn(broker_url, topic, group)
        try:
            theirs = await _wait_assigned(proc)
            await poll_until(
                [here],
                lambda: {tp.partition for tp in here.assignment} == {0, 1, 2, 3} - theirs,
            )
            assert here.assignment != total
            if ending == "killed":
                proc.send_signal(signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGTERM)
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        # a killed member is expired after the session timeout; a clean one leaves at once
        await poll_until([here], lambda: here.assignment == total, timeout=SESSION_TIMEOUT * 4)
        assert here.assignment == total
