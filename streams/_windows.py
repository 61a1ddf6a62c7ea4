"""Event-time windows: which windows an event falls in, and when a window closes.

All times are event times in milliseconds (the record's log timestamp). A window closes when
the partition's *stream time* — the highest event time seen on it — passes the window's end
plus the grace period; events for a closed window are late and dropped (counted). Closing on
wall-clock time too is an option of the windowed table, for quiet streams.

============  =======================================================================
tumbling      fixed, non-overlapping: ``[k*size, (k+1)*size)``
hopping       fixed size, a new one every ``step``: an event is in ``size/step`` of them
sliding       ``[t - size, t]`` per event, by key: the aggregate over the last ``size``
session       per key, events closer than ``gap`` share a window; windows merge
============  =======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from streams._errors import DeclarationError

__all__ = ("Hopping", "Session", "Sliding", "Tumbling", "Window", "WindowSpec")


class Window(NamedTuple):
    """A window ``[start, end)`` in event-time milliseconds."""

    start: int
    end: int

    def __contains__(self, t: object) -> bool:
        return isinstance(t, int) and self.start <= t < self.end


def _ms(seconds: float, what: str) -> int:
    if seconds <= 0:
        raise DeclarationError(f"{what} must be positive, got {seconds}")
    return round(seconds * 1000)


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Shared by every kind: the grace period, in milliseconds."""

    grace_ms: int

    def windows_for(self, t: int) -> list[Window]:
        """The windows an event at ``t`` opens (it also joins open windows covering it)."""
        return [Window(t, t + 1)]

    @property
    def merges(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Tumbling(WindowSpec):
    """Fixed windows of ``size`` ms that do not overlap. Build with :meth:`of`."""

    size_ms: int

    @classmethod
    def of(cls, size: float, *, grace: float = 0.0) -> Tumbling:
        """Tumbling windows of ``size`` seconds, accepting events ``grace`` seconds late."""
        return cls(grace_ms=round(grace * 1000), size_ms=_ms(size, "size"))

    def windows_for(self, t: int) -> list[Window]:
        start = t - t % self.size_ms
        return [Window(start, start + self.size_ms)]


@dataclass(frozen=True, slots=True)
class Hopping(WindowSpec):
    """Windows of ``size`` ms starting every ``step`` ms (overlapping when step < size)."""

    size_ms: int
    step_ms: int

    @classmethod
    def of(cls, size: float, step: float, *, grace: float = 0.0) -> Hopping:
        spec = cls(
            grace_ms=round(grace * 1000), size_ms=_ms(size, "size"), step_ms=_ms(step, "step")
        )
        if spec.step_ms > spec.size_ms:
            raise DeclarationError(f"step ({step}s) must not exceed size ({size}s)")
        return spec

    def windows_for(self, t: int) -> list[Window]:
        last = t - t % self.step_ms
        first = last - self.size_ms + self.step_ms
        return [Window(s, s + self.size_ms) for s in range(first, last + 1, self.step_ms)]


@dataclass(frozen=True, slots=True)
class Sliding(WindowSpec):
    """An aggregate over the last ``size`` ms before each event, per key.

    Every event at ``t`` opens the window ``[t, t + size)`` and is added to every open window
    of its key that covers it; the oldest window covering ``t`` then holds exactly the events
    of ``(t - size, t]``, which is what ``table[key].current()`` returns.
    """

    size_ms: int

    @classmethod
    def of(cls, size: float, *, grace: float = 0.0) -> Sliding:
        return cls(grace_ms=round(grace * 1000), size_ms=_ms(size, "size"))

    def windows_for(self, t: int) -> list[Window]:
        return [Window(t, t + self.size_ms)]


@dataclass(frozen=True, slots=True)
class Session(WindowSpec):
    """Per key, events less than ``gap`` ms apart share a window; windows merge as they meet."""

    gap_ms: int

    @classmethod
    def of(cls, gap: float, *, grace: float = 0.0) -> Session:
        return cls(grace_ms=round(grace * 1000), gap_ms=_ms(gap, "gap"))

    def windows_for(self, t: int) -> list[Window]:
        return [Window(t, t + self.gap_ms)]

    @property
    def merges(self) -> bool:
        return True
