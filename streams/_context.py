"""The event being handled right now, for state that changes with it (tables)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from streams._event import Event
    from streams._stream import Source

__all__ = ("Current", "current")


class Current(NamedTuple):
    """Where the agent is: its source, and the record it is handling.

    Made once per event on the hot path, so a named tuple (a frozen dataclass costs about six
    times as much to build).
    """

    source: Source
    topic: str
    partition: int
    offset: int
    timestamp: int
    event: Event[Any, Any]
    origin: tuple[int, int] | None = None  # (partition, offset) upstream of a repartition


current: ContextVar[Current | None] = ContextVar("neuroplex_current_event", default=None)
