"""The event being handled right now, for state that changes with it (tables)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams._event import Event
    from streams._stream import Source

__all__ = ("Current", "current")


@dataclass(slots=True)
class Current:
    """Where the agent is: its source, and the record it is handling.

    Made once per event on the hot path, so not frozen (a frozen dataclass costs about a
    microsecond more to build); nothing changes one after it is made.
    """

    source: Source
    topic: str
    partition: int
    offset: int
    timestamp: int
    event: Event[Any, Any]
    origin: tuple[int, int] | None = None  # (partition, offset) upstream of a repartition


current: ContextVar[Current | None] = ContextVar("neuroplex_current_event", default=None)
