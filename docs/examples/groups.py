"""Consumer groups: two workers split a topic, commit as they go, and a newcomer resumes.

Run: python docs/examples/groups.py   (NEUROPLEX_BROKER=... for another log)
Expect: handled 100 payments
Expect: worker-c resumed from the committed positions and read [b'late-1', b'late-2']
"""

import asyncio
import os
from collections import Counter

import brokers
from brokers import ProducerRecord, StaleMemberError, Subscription, TopicPartition, TopicSpec

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
TOPIC, GROUP, PARTITIONS = "payments", "billing", 4
SESSION_TIMEOUT = 6.0  # seconds a silent worker keeps its partitions before they move
handled: Counter[str] = Counter()


def tell(worker: str, change: str) -> brokers.AssignmentCallback:
    async def callback(tps: frozenset[TopicPartition]) -> None:
        print(f"{worker} {change} partitions {sorted(tp.partition for tp in tps)}")

    return callback


def member(log: brokers.Broker, name: str) -> Subscription:
    return log.subscribe(
        TOPIC,
        group=GROUP,
        session_timeout=SESSION_TIMEOUT,
        on_assigned=tell(name, "was assigned"),
        on_revoked=tell(name, "lost"),
    )


async def done(sub: Subscription, ends: dict[int, int]) -> bool:
    """The group has committed every partition up to ``ends`` (whichever member read it)."""
    for p, end in ends.items():
        if (await sub.committed(TopicPartition(TOPIC, p)) or 0) < end:
            return False
    return True


async def work(name: str, sub: Subscription, ends: dict[int, int]) -> None:
    while not await done(sub, ends):
        batch = await sub.getmany(timeout=0.5)
        handled[name] += len(batch)  # handle the records here
        if not batch:
            continue
        try:
            await sub.commit()  # after handling: at-least-once
        except StaleMemberError:
            # the group rebalanced and these partitions moved: their new owner reads them
            # again from the last commit, so this worker just goes on with what it has now
            print(f"{name}: commit refused after a rebalance, carrying on")


async def main() -> None:
    async with brokers.connect(URL) as log:
        await log.create_topic(TopicSpec(TOPIC, partitions=PARTITIONS))
        payments = [
            ProducerRecord(f"payment-{i}".encode(), key=f"card-{i % 10}".encode())
            for i in range(100)
        ]
        await log.produce_batch(TOPIC, payments)
        ends = await log.end_offsets(TOPIC)

        # two workers of one group (one process here; normally one per process or machine)
        async with (
            member(log, "worker-a") as a,
            member(log, "worker-b") as b,
            asyncio.TaskGroup() as workers,
        ):
            workers.create_task(work("worker-a", a, ends))
            workers.create_task(work("worker-b", b, ends))
        print(f"handled {handled.total()} payments ({dict(handled)}); all committed")

        # a newcomer in the same group starts from the committed positions, not the beginning
        await log.produce_batch(TOPIC, [ProducerRecord(b"late-1"), ProducerRecord(b"late-2")])
        async with member(log, "worker-c") as sub:
            fresh: list[bytes] = []
            async with asyncio.timeout(30):
                while len(fresh) < 2:
                    fresh += [r.value or b"" for r in await sub.getmany(timeout=1.0)]
            await sub.commit()
        # sorted: the two went to different partitions, and there is no order across partitions
        print(f"worker-c resumed from the committed positions and read {sorted(fresh)}")


if __name__ == "__main__":
    asyncio.run(main())
