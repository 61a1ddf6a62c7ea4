"""Ending background tasks: surely, and without losing a cancellation of the one ending them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

__all__ = ("stop_task", "supervise")

_AGAIN = 0.5
"""Seconds between cancellations of a task that has not ended yet (see :func:`stop_task`)."""


async def stop_task(task: asyncio.Task[Any] | None, *, timeout: float | None = None) -> bool:
    """Cancel ``task`` and wait until it has ended; whether it ended (``False``: ``timeout``
    seconds passed first, the task outlasting every cancellation).

    A cancellation can be lost on Python 3.11: ``asyncio.wait_for``, which nats-py and aiokafka
    await everywhere, returns the result instead of raising ``CancelledError`` when the awaited
    future completes in the same loop iteration as the cancel (CPython gh-86296, fixed in
    3.12). The task then carries on as if never cancelled (a background loop: forever). So the
    task is cancelled again every half second until it ends.

    ``with suppress(CancelledError): await task`` would also swallow a cancellation of the
    caller arriving meanwhile, and the caller would carry on as if never cancelled; waiting
    with :func:`asyncio.wait` lets that one through. An exception the task ended with is
    retrieved (so asyncio does not report it as never retrieved) but not raised: a task
    being stopped is past reporting to anyone.
    """
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while not task.done():
        task.cancel()
        wait = _AGAIN if deadline is None else min(_AGAIN, deadline - loop.time())
        if wait <= 0:
            return False
        await asyncio.wait([task], timeout=wait)
    if not task.cancelled():
        task.exception()
    return True


async def supervise(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Wait for ``tasks`` to end, as an :class:`asyncio.TaskGroup` would, but surely.

    The first to fail has the others stopped and its exception raised (not wrapped in an
    exception group). When the caller is cancelled, every task is cancelled, *again every half
    second* until all have ended, then the cancellation goes on: a TaskGroup cancels its tasks
    once, so one whose cancel was lost (see :func:`stop_task`) would keep it waiting forever.
    """
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        while not all(task.done() for task in tasks):
            for task in tasks:
                task.cancel()
            # a further cancel of the caller: it is what is being done already
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(tasks, timeout=_AGAIN)
        for task in tasks:
            if not task.cancelled():
                task.exception()
        raise
    failures = [
        exc
        for task in tasks
        if task in done and not task.cancelled() and (exc := task.exception()) is not None
    ]
    if not failures:
        return
    for task in tasks:
        await stop_task(task)
    raise failures[0]
