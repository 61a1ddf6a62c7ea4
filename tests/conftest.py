"""Suite-wide test support: what a hung asynchronous test was waiting on.

pytest-timeout ends a hung test with the stack of the main thread, which for an asyncio test
is the event loop's ``select``: it says nothing of which await never returned. So every
coroutine test gets a watchdog that, a few seconds before pytest-timeout fires, prints every
task's stack to stderr, where the failure report shows it.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import sys
from collections.abc import AsyncIterator
from typing import Any

import hypothesis  # noqa: F401 - imported here, at start-up: see below
import pytest

# hypothesis's pytest plugin imports hypothesis at the end of a run when no test did; after a
# test that left a coroutine suspended in an except block (an agent swallowing cancellations),
# CPython 3.11.7 then fails to compile it ("AST constructor recursion depth mismatch",
# gh-106905, fixed in 3.11.8), and the run ends in a SystemError although every test passed.

_AHEAD = 10.0  # seconds before pytest-timeout's limit


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and inspect.iscoroutinefunction(function):
            item.fixturenames.append("_task_watchdog")  # type: ignore[attr-defined]  # pytest.Function has it


def _limit(request: pytest.FixtureRequest) -> float:
    marker = request.node.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    try:
        return float(request.config.getini("timeout") or 0)
    except ValueError:
        return 0.0


def _awaits(task: asyncio.Task[Any]) -> list[str]:
    """Where the task is suspended: each coroutine or async generator of its await chain."""
    where: list[str] = []
    step: Any = task.get_coro()
    for _ in range(40):
        frame = getattr(step, "cr_frame", None) or getattr(step, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            where.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_qualname}")
        following = getattr(step, "cr_await", None) or getattr(step, "ag_await", None)
        if following is None:
            if step is not None and frame is None:
                where.append(f"  awaiting {step!r}"[:300])
            break
        step = following
    return where


def _dump(loop: asyncio.AbstractEventLoop, after: float) -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks(loop)
    print(f"--- {len(tasks)} asyncio tasks still waiting after {after:g} s ---", file=out)
    for task in sorted(tasks, key=lambda t: t.get_name()):
        print(f"task {task.get_name()!r}:", *_awaits(task), sep="\n", file=out)
    sys.stderr.write(out.getvalue())


@pytest.fixture
async def _task_watchdog(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    limit = _limit(request)
    if limit <= _AHEAD:
        yield
        return
    loop = asyncio.get_running_loop()
    handle = loop.call_later(limit - _AHEAD, _dump, loop, limit - _AHEAD)
    try:
        yield
    finally:
        handle.cancel()
