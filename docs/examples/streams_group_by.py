"""Re-keying: clicks arrive keyed by page; a table counts them per user, after a group_by.

Run: python docs/examples/streams_group_by.py   (NEUROPLEX_BROKER=... for another log)
Expect: clicks per user: {'ann': 3, 'bo': 1}
"""

import asyncio
import os
import uuid

from streams import App, EventStream

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")
RUN = uuid.uuid4().hex[:6]

app = App(f"site-{RUN}", broker=URL, partitions=4)
clicks = app.topic(f"clicks-{RUN}", value_type=dict[str, str])  # keyed by page

# --8<-- [start:group_by]
by_user = app.group_by(clicks, lambda e: e.value["user"], name="by_user")
per_user = app.table("per_user", source=by_user, default=int)
# --8<-- [end:group_by]


@app.agent(by_user)
async def count(stream: EventStream) -> None:
    async for click in stream:  # keyed by user now: each user's clicks on one partition
        per_user[click.key] += 1


async def main() -> None:
    async with app:
        await clicks.send_many(
            [
                ("/", {"user": "ann"}),
                ("/cart", {"user": "ann"}),
                ("/", {"user": "bo"}),
                ("/help", {"user": "ann"}),
            ]
        )
        while dict(per_user.items()) != {"ann": 3, "bo": 1}:
            await asyncio.sleep(0.05)
        print("clicks per user:", dict(sorted(per_user.items())))


if __name__ == "__main__":
    asyncio.run(main())
