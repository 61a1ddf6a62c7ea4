"""Consumer groups across real processes: a member that dies, one that stops cleanly.

Only the backends a second process can share run here (memory is one process by definition;
its groups are covered in the conformance suite).
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from brokers import Broker, ProducerRecord, TopicPartition, TopicSpec
from tests.brokers.conftest import (
    SESSION_TIMEOUT,
    all_partitions,
    consume,
    poll_until,
    read_line,
    spawn,
    stop,
    unique,
)

pytestmark = pytest.mark.backends("sqlite", "kafka", "nats")


async def _spawn(
    mode: str, url: str, topic: str, group: str, session_timeout: float, *args: str
) -> asyncio.subprocess.Process:
    return await spawn(
        "tests.brokers._member",
        *(mode, url, topic, group, str(session_timeout), *args),
        stdin=mode == "stall",
    )


async def _wait_assigned(proc: asyncio.subprocess.Process) -> set[int]:
    """Read the child's lines until it reports a non-empty assignment."""
    while True:
        _, *parts = (await read_line(proc)).split()  # "assigned 0,2" or "assigned"
        if parts:
            return {int(p) for p in parts[0].split(",")}


@pytest.mark.parametrize("ending", ["killed", "terminated"])
async def test_partitions_move_when_a_member_process_ends(
    broker: Broker, broker_url: str, ending: str
) -> None:
    topic, group = unique("proc"), unique("g")
    await broker.create_topic(TopicSpec(topic, partitions=4))
    total = all_partitions(topic, 4)
    async with broker.subscribe(topic, group=group, session_timeout=SESSION_TIMEOUT) as here:
        proc = await _spawn("member", broker_url, topic, group, SESSION_TIMEOUT)
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
            await stop(proc)
        # a killed member is expired after the session timeout; a clean one leaves at once
        await poll_until([here], lambda: here.assignment == total, timeout=SESSION_TIMEOUT * 4)
        assert here.assignment == total


# a short session where the backend allows it (Tansu holds JoinGroup for half of it)
_STALL_SESSION = {"sqlite": 1.0, "nats": 3.0, "kafka": SESSION_TIMEOUT}


async def test_a_stalled_member_is_fenced_and_the_next_owner_resumes_at_its_commits(
    broker: Broker, broker_url: str, backend: str
) -> None:
    """A member process whose event loop blocks (no heartbeats) loses its partitions when its
    session runs out; the new owner starts at the stalled member's committed positions; when
    the stalled member wakes up, still believing it owns them, its commit is refused by the
    group (its generation is over), not by a local check of its assignment."""
    topic, group = unique("stall"), unique("g")
    session = _STALL_SESSION[backend]
    await broker.create_topic(TopicSpec(topic, partitions=2))
    await broker.produce_batch(
        topic, [ProducerRecord(b"%d" % i, partition=i % 2) for i in range(40)]
    )
    child = await _spawn("stall", broker_url, topic, group, session, "40")
    try:
        marks = (await read_line(child)).removeprefix("committed ").split()
        committed = {int(p): int(o) for p, o in (m.split("=") for m in marks)}
        assert set(committed) == {0, 1}
        late = await broker.produce_batch(
            topic, [ProducerRecord(b"late", partition=p) for p in (0, 1)]
        )
        async with broker.subscribe(topic, group=group, session_timeout=session) as here:
            got = await poll_until(
                [here],
                lambda: here.assignment == all_partitions(topic, 2),
                timeout=session * 4 + 30,
            )
            records = got[0] + await consume(here, 2 - len(got[0]))
            # the next owner resumes exactly where the stalled member committed
            assert {(r.partition, r.offset) for r in records} == {
                (p.partition, p.offset) for p in late
            }
            assert all(committed[p.partition] <= p.offset for p in late)
            await here.commit()
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            assert await read_line(child) == "stale"
        # the stalled member's commit changed nothing
        async with broker.subscribe(topic, group=group, session_timeout=session) as after:
            for p in late:
                assert await after.committed(TopicPartition(topic, p.partition)) == p.offset + 1
    finally:
        await stop(child)
