"""The main job: page views counted per user, in 10-second windows and in total.

``python -m streams.examples.pageviews --broker sqlite://data/neuroplex.db --duration 20``

A generator publishes page-view events; an agent keeps each user's running total in a table
and per-user counts in 10-second tumbling windows. Every second it prints what happened; at
the end a summary. The state lives in the log, so a second run resumes the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

from pydantic import BaseModel, ConfigDict

from streams import App, ClosedWindow, EventStream, Tumbling

USERS = [f"user-{i:03d}" for i in range(200)]
PAGES = ["/", "/search", "/product/1", "/product/2", "/cart", "/checkout", "/help"]


class PageView(BaseModel):
    """One page view, as any service may publish it (JSON)."""

    model_config = ConfigDict(frozen=True)

    user: str
    page: str
    at_ms: int


app = App("pageviews", partitions=8)
views = app.topic("pageviews", value_type=PageView)
totals = app.table("totals", source=views, default=int)
closed: list[ClosedWindow[str, int]] = []
per_window = app.windowed_table(
    "views_10s",
    source=views,
    window=Tumbling.of(10, grace=1),
    default=int,
    on_close=closed.append,
    time_of=lambda event: event.value.at_ms,
    close_on_wall_clock=True,
)
processed = 0


@app.agent(views)
async def count(stream: EventStream) -> None:
    """Per user: one more in the running total and in the current 10-second window."""
    global processed
    async for event in stream:
        totals[event.key] += 1
        per_window[event.key] += 1
        processed += 1


async def generate(rate: float, until: float, rng: random.Random) -> int:
    """Publish page views at about ``rate`` per second until the monotonic time ``until``."""
    sent = 0
    while time.monotonic() < until:
        batch = []
        for _ in range(max(1, int(rate / 10))):
            user = USERS[min(int(rng.paretovariate(1.2)) - 1, len(USERS) - 1)]
            batch.append(
                (
                    user,
                    PageView(user=user, page=rng.choice(PAGES), at_ms=time.time_ns() // 1_000_000),
                )
            )
        await views.send_many(batch)
        sent += len(batch)
        await asyncio.sleep(0.1)
    return sent


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000))


def top(n: int = 5) -> str:
    best = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{user} {count}" for user, count in best) or "-"


async def main(broker: str, duration: float, rate: float, seed: int) -> int:
    app.use_broker(broker)
    async with app:
        # wait for the agent to own (and restore) every partition before counting
        async with asyncio.timeout(60):
            while len(totals.partitions) < 8:  # noqa: ASYNC110 - filled by the agent's restore
                await asyncio.sleep(0.05)
        before = sum(count for _, count in totals.items())
        print(f"neuroplex pageviews on {broker}: {before} views already counted by earlier runs")
        start = time.monotonic()
        producer = asyncio.create_task(generate(rate, start + duration, random.Random(seed)))
        shown = 0
        while not producer.done():
            await asyncio.sleep(1.0)
            lines = [f"[{time.monotonic() - start:4.0f}s] processed {processed:6d}  top: {top()}"]
            lines += [
                f"        {_clock(c.window.start)}-{_clock(c.window.end)} {c.key}: {c.value} views"
                for c in closed[shown:][:3]
            ]
            shown = len(closed)
            print("\n".join(lines), flush=True)
        sent = await producer
        async with asyncio.timeout(30):
            while processed < sent:  # noqa: ASYNC110 - the agent catches up
                await asyncio.sleep(0.05)
        after = sum(count for _, count in totals.items())
    print(
        f"summary: sent {sent}, processed {processed} this run; totals {before} -> {after} "
        f"over {len(list(totals))} users; {len(closed)} windows closed; top: {top()}"
    )
    return 0 if after == before + sent else 1


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--broker", default=os.environ.get("NEUROPLEX_BROKER", "memory://"))
    parser.add_argument("--duration", type=float, default=15.0, help="seconds to generate")
    parser.add_argument("--rate", type=float, default=2000.0, help="page views per second")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    return asyncio.run(main(args.broker, args.duration, args.rate, args.seed))


if __name__ == "__main__":
    sys.exit(cli())
