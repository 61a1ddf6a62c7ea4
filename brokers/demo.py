"""``python -m brokers.demo``: a page-view pipeline on the partitioned log, with a live summary.

Usage::

    python -m brokers.demo [--url URL] [--records N] [--duration SECONDS]

Produces ``N`` page-view events (JSON, keyed by user) to the topic ``pageviews`` (8
partitions) while the consumer group ``demo`` reads them, committing after every batch, and
prints throughput and the top users as it goes. On a durable log (a ``sqlite://`` file, Kafka,
NATS) a second run finds what the first one left, and the group resumes from its committed
positions: nothing is read twice, nothing is skipped. It shows the ``brokers`` layer alone;
``make run`` runs the main job of the ``streams`` layer.

Example:
    >>> import asyncio
    >>> asyncio.run(run("memory://", records=100, duration=30.0))  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate

import brokers
from brokers import Broker, ProducerRecord, Subscription, TopicPartition, TopicSpec
from brokers import json as jsonlib

__all__ = ("main", "run")

TOPIC = "pageviews"
GROUP = "demo"
PARTITIONS = 8
PAGES = ("/", "/pricing", "/docs", "/docs/quickstart", "/blog", "/signup", "/login", "/about")
USERS = tuple(f"user-{i:04d}" for i in range(1, 1001))
# Zipf-like popularity: user-0001 is the busiest, as real traffic has a few heavy users.
_WEIGHTS = tuple(accumulate(1 / rank for rank in range(1, len(USERS) + 1)))
PRODUCE_BATCH = 500
REPORT_EVERY = 0.25
# How long a silent member keeps its partitions: 6 s is the least Kafka accepts by default
# (group.min.session.timeout.ms), and Tansu holds a group join for half of it.
SESSION_TIMEOUT = 6.0


@dataclass(slots=True)
class Stats:
    """What this run did so far (for the live lines and the summary)."""

    started: float
    produced: int = 0
    consumed: int = 0
    pending_at_start: int = 0
    producer_done: bool = False
    caught_up: bool = False
    users: Counter[str] = field(default_factory=Counter)

    def top(self, n: int) -> list[tuple[str, int]]:
        return self.users.most_common(n)


def _n(value: int) -> str:
    return f"{value:,}"


def _events(rng: random.Random, count: int) -> list[ProducerRecord]:
    """``count`` page views, keyed by user so one user's views stay in order."""
    now = time.time_ns() // 1_000_000
    users = rng.choices(USERS, cum_weights=_WEIGHTS, k=count)
    return [
        ProducerRecord(
            jsonlib.dumps({"user": user, "page": rng.choice(PAGES), "at": now}),
            key=user.encode(),
        )
        for user in users
    ]


async def _existing(broker: Broker, committed: dict[int, int | None]) -> tuple[int, int]:
    """How many records the log holds now, and how many sit at or after the group's commits.

    Counted by reading up to the log end, so it is exact on every backend (NATS offsets are
    not contiguous: ``end - begin`` would over-count there).
    """
    ends = await broker.end_offsets(TOPIC)
    begins = await broker.beginning_offsets(TOPIC)
    todo = {p for p, end in ends.items() if end > begins[p]}
    total = pending = 0
    if not todo:
        return total, pending
    async with broker.subscribe(TOPIC, partitions=sorted(todo), max_batch=5000) as scan:
        while todo:
            for record in await scan.getmany(timeout=1.0):
                if record.offset < ends[record.partition]:
                    total += 1
                    if record.offset >= (committed[record.partition] or 0):
                        pending += 1
            for p in list(todo):
                if (scan.position(TopicPartition(TOPIC, p)) or 0) >= ends[p]:
                    todo.discard(p)
    return total, pending


async def _produce(broker: Broker, stats: Stats, records: int, deadline: float) -> None:
    rng = random.Random()
    try:
        while stats.produced < records and time.monotonic() < deadline:
            count = min(PRODUCE_BATCH, records - stats.produced)
            await broker.produce_batch(TOPIC, _events(rng, count))
            stats.produced += count
            await asyncio.sleep(0)  # let the consumer and the reporter run between batches
    finally:
        stats.producer_done = True


async def _caught_up(broker: Broker, sub: Subscription) -> bool:
    """Whether the group has committed everything the log holds (whoever consumed it)."""
    ends = await broker.end_offsets(TOPIC)
    for p, end in ends.items():
        committed = await sub.committed(TopicPartition(TOPIC, p))
        if (committed or 0) < end:
            return False
    return True


async def _consume(
    broker: Broker, sub: Subscription, stats: Stats, deadline: float, done: asyncio.Event
) -> None:
    try:
        while time.monotonic() < deadline:
            batch = await sub.getmany(timeout=0.2)
            for record in batch:
                if record.value is not None:
                    stats.users[jsonlib.loads(record.value)["user"]] += 1
            if batch:
                # commit after handling: a crash now re-reads at most this batch (at-least-once)
                await sub.commit()
                stats.consumed += len(batch)
            elif stats.producer_done and await _caught_up(broker, sub):
                stats.caught_up = True
                return
    finally:
        done.set()


async def _report(stats: Stats, done: asyncio.Event) -> None:
    """A live line every :data:`REPORT_EVERY` seconds, and a last one when ``done``."""
    last_time, last_produced, last_consumed = stats.started, 0, 0
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPORT_EVERY):
                await done.wait()
        now = time.monotonic()
        span = max(now - last_time, 1e-9)
        produced_rate = (stats.produced - last_produced) / span
        consumed_rate = (stats.consumed - last_consumed) / span
        last_time, last_produced, last_consumed = now, stats.produced, stats.consumed
        top = ", ".join(f"{user} {_n(count)}" for user, count in stats.top(3))
        lag = max(stats.pending_at_start + stats.produced - stats.consumed, 0)
        print(
            f"{now - stats.started:5.1f} s  produced {_n(stats.produced):>7} "
            f"({_n(round(produced_rate)):>6}/s)  consumed {_n(stats.consumed):>7} "
            f"({_n(round(consumed_rate)):>6}/s)  lag {_n(lag):>6}  top: {top}",
            flush=True,
        )
        if done.is_set():
            return


def _summary(stats: Stats, url: str, records: int) -> None:
    elapsed = max(time.monotonic() - stats.started, 1e-9)
    print(
        f"done in {elapsed:.1f} s: produced {_n(stats.produced)} page views "
        f"({_n(round(stats.produced / elapsed))}/s), consumed {_n(stats.consumed)} "
        f"({_n(round(stats.consumed / elapsed))}/s) as group {GROUP!r}"
    )
    if stats.pending_at_start:
        print(f"  of which {_n(stats.pending_at_start)} were left by an earlier run")
    if stats.users:
        print("top users this run:")
    for rank, (user, count) in enumerate(stats.top(5), start=1):
        print(f"  {rank}. {user}  {_n(count):>7} views")
    if not stats.caught_up:
        left = stats.pending_at_start + stats.produced - stats.consumed
        print(
            f"stopped by --duration after producing {_n(stats.produced)} of {_n(records)}, "
            f"with about {_n(max(left, 0))} not consumed yet: run again with the same --url "
            "to resume from the committed positions"
        )
    elif url.startswith("memory:"):
        print("memory:// forgets everything at exit; on a sqlite:// file a second run resumes")
    else:
        print(f"the group is at the log end; run again on {url} to add more and resume from there")


async def run(url: str, *, records: int, duration: float) -> int:
    """Run the demo on ``url``; returns the process exit code."""
    began = time.monotonic()
    deadline = began + duration
    async with brokers.connect(url) as broker:
        print(
            f"neuroplex demo on {broker.url}: topic {TOPIC!r} ({PARTITIONS} partitions), "
            f"group {GROUP!r}"
        )
        await broker.create_topic(TopicSpec(TOPIC, partitions=PARTITIONS))
        async with broker.subscribe(
            TOPIC, group=GROUP, start="earliest", session_timeout=SESSION_TIMEOUT
        ) as sub:
            committed = {
                p: await sub.committed(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)
            }
            total, pending = await _existing(broker, committed)
            if total:
                print(
                    f"found {_n(total)} page views already in the log: group {GROUP!r} had "
                    f"committed {_n(total - pending)}, {_n(pending)} left to consume; "
                    "resuming from the committed positions"
                )
            else:
                print("found no page views in the log yet: starting fresh")
            print(
                f"producing {_n(records)} page views while consuming them "
                f"(set-up took {time.monotonic() - began:.1f} s)"
            )
            stats = Stats(started=time.monotonic(), pending_at_start=pending)
            done = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_produce(broker, stats, records, deadline))
                tasks.create_task(_consume(broker, sub, stats, deadline, done))
                tasks.create_task(_report(stats, done))
    _summary(stats, url, records)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brokers.demo",
        description="Produce and consume page views on the partitioned log, with a live summary.",
    )
    parser.add_argument(
        "--url",
        default="memory://",
        help="the log: memory:// (default), sqlite:///path/to/log.db, kafka://host:9092, "
        "nats://host:4222",
    )
    parser.add_argument(
        "--records", type=int, default=20_000, help="page views to produce (default 20000)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=120.0,
        help="stop after this many seconds even if not done (default 120); a later run resumes",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line: parse ``argv`` and run; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.records < 0:
        _parser().error(f"--records must be 0 or more, got {args.records}")
    if args.duration <= 0:
        _parser().error(f"--duration must be positive, got {args.duration}")
    try:
        return asyncio.run(run(args.url, records=args.records, duration=args.duration))
    except KeyboardInterrupt:
        print("interrupted: run again with the same --url to resume from the committed positions")
        return 130
    except (brokers.NeuroplexError, ExceptionGroup) as exc:
        # a failure inside the producer or consumer task comes wrapped by the TaskGroup
        found = exc.subgroup(brokers.NeuroplexError) if isinstance(exc, ExceptionGroup) else exc
        if found is None:
            raise
        while isinstance(found, ExceptionGroup):
            found = found.exceptions[0]
        print(f"error: {found}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
