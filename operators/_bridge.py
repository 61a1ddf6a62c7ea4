"""The one asyncio <-> reactivex boundary: change feeds as Observables and bounded iterators.

reactivex has no backpressure, so what crosses into asyncio goes through a bounded buffer with
a named overflow policy:

==============  ================================================================
``block``       the producer (a view's fold) waits until the consumer makes room
``drop_oldest`` the oldest buffered item is dropped (counted in ``dropped``)
``error``       the iterator raises :class:`BufferOverflowError` at the next read
==============  ================================================================
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Generic, Literal, TypeAlias, TypeVar

import reactivex
from reactivex.abc import ObserverBase, SchedulerBase
from reactivex.disposable import Disposable

from brokers import NeuroplexError

__all__ = ("BufferOverflowError", "ChangeBuffer", "OverflowPolicy", "feed_observable")

T = TypeVar("T")

OverflowPolicy: TypeAlias = Literal["block", "drop_oldest", "error"]

Listen: TypeAlias = Callable[[Callable[[T], None]], Callable[[], None]]
"""Registers a callback for every new item; returns the function that unregisters it."""


class BufferOverflowError(NeuroplexError):
    """A subscriber fell more than its buffer behind, under the ``error`` policy."""

    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(
            f"subscriber fell more than {size} changes behind. Read faster, raise buffer=, or "
            "subscribe with overflow='drop_oldest' (lossy) or 'block' (slows the view)."
        )


def feed_observable(
    listen: Listen[T], initial: Callable[[], Iterable[T]]
) -> reactivex.Observable[T]:
    """An Observable of ``initial()`` and then every item ``listen`` reports.

    Subscribing takes the initial items and registers for new ones in the same step, with no
    await between (everything runs on the event loop's thread), so no change falls in a gap and
    none comes twice. Disposing unregisters.
    """

    def on_subscribe(
        observer: ObserverBase[T], scheduler: SchedulerBase | None = None
    ) -> Disposable:
        for item in initial():
            observer.on_next(item)
        return Disposable(listen(observer.on_next))

    return reactivex.create(on_subscribe)


class ChangeBuffer(Generic[T]):
    """A bounded buffer between a synchronous producer and an async iterator."""

    def __init__(self, size: int, overflow: OverflowPolicy) -> None:
        if size < 1:
            raise ValueError(f"buffer size must be at least 1, got {size}")
        if overflow not in ("block", "drop_oldest", "error"):
            raise ValueError(f"overflow {overflow!r}: use 'block', 'drop_oldest' or 'error'")
        self.size = size
        self.overflow = overflow
        self.dropped = 0
        self._items: collections.deque[T] = collections.deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._failed = False
        self._closed = False

    @property
    def full(self) -> bool:
        return len(self._items) >= self.size

    def push(self, item: T) -> None:
        if self._closed:
            return
        if self.full:
            if self.overflow == "drop_oldest":
                self._items.popleft()
                self.dropped += 1
            elif self.overflow == "error":
                self._failed = True
                self._ready.set()
                return
            # "block": the producer awaits room() before pushing more (see room())
        self._items.append(item)
        if self.full:
            self._room.clear()
        self._ready.set()

    async def room(self) -> None:
        """Wait until there is room (only ``block`` buffers make producers wait)."""
        if self.overflow == "block" and not self._closed:
            await self._room.wait()

    def close(self) -> None:
        self._closed = True
        self._ready.set()
        self._room.set()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._failed:
                raise BufferOverflowError(self.size)
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        if self._failed:
            raise BufferOverflowError(self.size)
        item = self._items.popleft()
        if not self.full:
            self._room.set()
        return item
