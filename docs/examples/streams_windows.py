"""Windows: clicks per user per 10 seconds of event time, with 5 seconds of grace.

Run: python docs/examples/streams_windows.py   (NEUROPLEX_BROKER=... for another log)
Expect: closed [10s, 20s): ann clicked 2 times
"""

import asyncio
import os
import uuid

from streams import App, ClosedWindow, EventStream, Tumbling

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
RUN = uuid.uuid4().hex[:6]
T0 = 1_700_000_000_000  # event times, in ms, stamped by the producers

app = App(f"clicks-{RUN}", broker=URL, partitions=2)
clicks = app.topic(f"clicks-{RUN}", value_type=dict[str, int])
closed: list[ClosedWindow[str, int]] = []
per_10s = app.windowed_table(
    "per_10s",
    source=clicks,
    window=Tumbling.of(10, grace=5),
    default=int,
    on_close=closed.append,
    time_of=lambda event: event.value["at"],  # event time from the payload
)


@app.agent(clicks)
async def count(stream: EventStream) -> None:
    async for click in stream:
        per_10s[click.key] += 1
        so_far = per_10s[click.key].current()  # this click's window, so far
        print(f"{click.key} at {(click.value['at'] - T0) // 1000:>2}s: {so_far} in its window")


async def main() -> None:
    async with app:
        seconds = [1, 4, 12, 8, 17, 3, 31]  # 8 is late but within grace; 3 comes too late
        await clicks.send_many([("ann", {"at": T0 + s * 1000}) for s in seconds])
        while len(closed) < 2:
            await asyncio.sleep(0.05)
    for window in closed:
        start, end = ((t - T0) // 1000 for t in window.window)
        print(f"closed [{start}s, {end}s): {window.key} clicked {window.value} times")
    print(f"late clicks dropped: {per_10s.late}")


if __name__ == "__main__":
    asyncio.run(main())
