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
from typing import Literal, TypeAlias, TypeVar

import reactivex
from reactivex.abc import ObserverBase, SchedulerBase
from reactivex.disposable import Disposable

from brokers import NeuroplexError

__all__ = ("BufferOverflowError", "ChangeBuffer", "OverflowPolicy", "feed_observable")

T = TypeVar("T")

OverflowPolicy: TypeAlias = Literal["block", "drop_oldest", "error"]

Listen: TypeAlias = Callable[[ObserverBase[T]], Callable[[], None]]
"""Registers an observer for every new item, and for the feed's end (``on_completed`` when it is
closed, ``on_error`` when it fails); returns the function that unregisters it."""


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
    """An Observable of ``initial()`` and then every item ``listen`` reports, until the feed ends.

    Subscribing takes the initial items and registers for new ones in the same step, with no
    await between (everything runs on the event loop's thread), so no change falls in a gap and
    none comes twice. The feed's end reaches the observer: ``on_completed`` when it is closed,
    ``on_error`` when it fails (so ``retry`` and ``catch`` act on it); an ``initial`` that raises
    (a feed already closed or failed) is an ``on_error`` at once. Disposing unregisters.
    """

    def on_subscribe(
        observer: ObserverBase[T], scheduler: SchedulerBase | None = None
    ) -> Disposable:
        try:
            items = list(initial())
        except Exception as exc:  # noqa: BLE001 - handed to the observer, as Rx does
            observer.on_error(exc)
            return Disposable()
        for item in items:
            observer.on_next(item)
        return Disposable(listen(observer))

    return reactivex.create(on_subscribe)


class ChangeBuffer(ObserverBase[T]):
    """A bounded buffer between a synchronous producer and an async iterator.

    It is an observer of the feed: ``on_next`` buffers an item, ``on_completed`` (or
    :meth:`close`) ends the iteration once the buffered items are read (``StopAsyncIteration``),
    ``on_error`` raises the error there instead. ``on_close`` is called once, when it is closed.
    """

    def __init__(
        self, size: int, overflow: OverflowPolicy, *, on_close: Callable[[], None] | None = None
    ) -> None:
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
        self._error: Exception | None = None
        self._overflowed = False
        self._closed = False
        self._on_close = on_close

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
                self._overflowed = True
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
        """End the iteration after the items already buffered. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        self._room.set()
        if self._on_close is not None:
            self._on_close()

    # the feed's side
    def on_next(self, value: T) -> None:
        self.push(value)

    def on_completed(self) -> None:
        self.close()

    def on_error(self, error: Exception) -> None:
        if not self._closed:
            self._error = error
        self.close()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._overflowed:
                raise BufferOverflowError(self.size)
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        if self._overflowed:
            raise BufferOverflowError(self.size)
        item = self._items.popleft()
        if not self.full:
            self._room.set()
        return item
