"""Ending background tasks without losing a cancellation of the one that ends them."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ("stop_task",)


async def stop_task(task: asyncio.Task[Any] | None, *, timeout: float | None = None) -> bool:
    """Cancel ``task`` and wait until it has ended; whether it ended (``False``: ``timeout``
    seconds passed first, the task ignoring or outlasting its cancellation).

    ``with suppress(CancelledError): await task`` would also swallow a cancellation of the
    caller arriving meanwhile, and the caller would carry on as if never cancelled; waiting
    with :func:`asyncio.wait` lets that one through. An exception the task ended with is
    retrieved (so asyncio does not report it as never retrieved) but not raised: a task
    being stopped is past reporting to anyone.
    """
    if task is None:
        return True
    if not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=timeout)
        if not task.done():
            return False
    if not task.cancelled():
        task.exception()
    return True
