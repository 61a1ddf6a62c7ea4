"""Errors: one tree, typed, each message saying what to do.

Run: python docs/examples/errors.py   (NEUROPLEX_BROKER=... for another log)
Expect: UnknownTopicError: topic 'invoices' does not exist
Expect: TopicConflictError: topic 'invoices' already exists with other settings
Expect: ClosedError: broker
"""

import asyncio
import os

import brokers
from brokers import (
    ClosedError,
    ConfigurationError,
    NeuroplexError,
    RecordTooLargeError,
    TopicConflictError,
    TopicSpec,
    UnknownTopicError,
    UnsupportedURLError,
)

URL = os.environ.get("NEUROPLEX_BROKER", "memory://")


def show(exc: NeuroplexError) -> None:
    print(f"{type(exc).__name__}: {exc}")


async def main() -> None:
    try:
        brokers.connect("redis://localhost:6379")  # refused at once, nothing is contacted
    except UnsupportedURLError as exc:
        show(exc)

    async with brokers.connect(URL) as log:
        try:
            await log.produce("invoices", b"{}")  # topics are never auto-created
        except UnknownTopicError as exc:
            show(exc)
            await log.create_topic(TopicSpec("invoices", partitions=2))

        try:
            await log.create_topic(TopicSpec("invoices", partitions=6))
        except TopicConflictError as exc:
            show(exc)

        try:
            await log.produce("invoices", b"{}", key="INV-1")  # type: ignore[arg-type]  # str
        except ConfigurationError as exc:  # bad arguments: fix the call
            show(exc)

        try:  # the size is checked before anything is sent (settings.max_record_bytes)
            await log.produce("invoices", b"x" * 2_000_000, key=b"INV-2")
        except RecordTooLargeError as exc:
            show(exc)
            print(f"  (size={exc.size}, limit={exc.limit}, retriable={exc.retriable})")

    try:
        await log.produce("invoices", b"{}")
    except ClosedError as exc:  # a closed broker stays closed: connect again
        show(exc)


if __name__ == "__main__":
    asyncio.run(main())
