"""Stopping background tasks: a cancellation of the one that stops them is never swallowed."""

from __future__ import annotations

import asyncio

import pytest

from brokers._tasks import stop_task, supervise


async def test_stopping_a_task_waits_for_its_end() -> None:
    cleaned: list[str] = []

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # cleanup that takes a while
            cleaned.append("done")

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    assert await stop_task(task) is True
    assert task.cancelled()
    assert cleaned == ["done"]


async def test_a_cancellation_of_the_caller_is_not_swallowed() -> None:
    """What ``with suppress(CancelledError): await task`` gets wrong."""
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    closer = asyncio.create_task(stop_task(task))
    await asyncio.sleep(0.01)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    release.set()
    await task


async def test_a_task_outlasting_the_timeout_is_reported_and_its_failure_retrieved() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue
        raise ValueError("failed on the way out")

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await stop_task(task, timeout=0.05) is False
    release.set()
    assert await stop_task(task) is True  # ended with an exception: retrieved, not raised
    assert isinstance(task.exception(), ValueError)
    assert await stop_task(None) is True


async def test_a_lost_cancellation_is_made_again() -> None:
    """On Python 3.11, ``wait_for`` loses a cancel that lands as its future completes
    (CPython gh-86296): nats-py's requests are built on it. The task must end anyway."""
    answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    after: list[str] = []

    async def worker() -> None:
        await asyncio.wait_for(answer, 10)  # the reply arrives as the cancel does
        after.append("carried on")  # on 3.11: the cancel was lost here
        await asyncio.Event().wait()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    answer.set_result(None)
    async with asyncio.timeout(10):
        assert await stop_task(task) is True
    assert task.cancelled()


async def test_supervised_tasks_stop_at_the_first_failure_which_is_raised() -> None:
    stopped: list[str] = []

    async def long() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append("long")

    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("broken")

    tasks = [asyncio.create_task(long()), asyncio.create_task(failing())]
    with pytest.raises(ValueError, match="broken"):  # itself, not an exception group
        await supervise(tasks)
    assert stopped == ["long"]
    assert all(task.done() for task in tasks)


async def test_a_supervised_task_whose_cancel_was_lost_is_cancelled_again() -> None:
    """What a TaskGroup gets wrong: it cancels its tasks once, then waits forever."""
    answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def worker() -> None:
        await asyncio.wait_for(answer, 10)
        await asyncio.Event().wait()

    child = asyncio.create_task(worker())
    parent = asyncio.create_task(supervise([child]))
    await asyncio.sleep(0)
    answer.set_result(None)
    parent.cancel()  # cancels the child in this same iteration: on 3.11 the cancel is lost
    async with asyncio.timeout(10):
        with pytest.raises(asyncio.CancelledError):
            await parent
    assert child.cancelled()
