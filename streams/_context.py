"""The event being handled right now, for state that changes with it (tables)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams._event import Event
    from streams._stream import Source

__all__ = ("Current", "current")


@dataclass(slots=True, frozen=True)
class Current:
    """Where the agent is: its source, and the record it is handling."""

    source: Source
    topic: str
    partition: int
    offset: int
    timestamp: int
    event: Event[Any, Any]
    origin: tuple[int, int] | None = None  # (partition, offset) upstream of a repartition


current: ContextVar[Current | None] = ContextVar("neuroplex_current_event", default=None)
