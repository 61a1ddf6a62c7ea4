"""Who hears a KV view's changes: observers of a key or a glob pattern, and the feed's end.

The fold hands every applied change to :meth:`ChangeFeed.dispatch`, in log order per partition.
When the Memory closes, every observer is completed (``on_completed``; a subscription's
iterator ends); when its view fails, every observer gets the error (``on_error``), so reactivex
``retry``/``catch`` act on it and nobody waits for changes that will not come.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass

from reactivex.abc import ObserverBase

from agents._kv_fold import Change

__all__ = ("ChangeFeed",)

log = logging.getLogger("neuroplex.memory")


@dataclass(slots=True, eq=False)
class _Sink:
    key: str | None  # only this key (observe); None: any key
    pattern: str | None  # only keys matching this glob; None: any key
    observer: ObserverBase[Change]


class _Callback(ObserverBase[Change]):
    """A plain callback as an observer: it hears changes and nothing of the feed's end."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[Change], None]) -> None:
        self._callback = callback

    def on_next(self, value: Change) -> None:
        self._callback(value)

    def on_error(self, error: Exception) -> None:
        pass

    def on_completed(self) -> None:
        pass


class ChangeFeed:
    def __init__(self) -> None:
        self._sinks: list[_Sink] = []
        self._error: Exception | None = None
        self._completed = False

    def attach(
        self,
        observer: ObserverBase[Change] | Callable[[Change], None],
        *,
        key: str | None = None,
        pattern: str | None = None,
    ) -> Callable[[], None]:
        """Send ``observer`` the changes of ``key`` / keys matching ``pattern`` (all if neither),
        and the feed's end; returns the function that detaches it. A feed that already ended
        ends the observer at once."""
        if not isinstance(observer, ObserverBase):
            observer = _Callback(observer)
        if self._error is not None:
            observer.on_error(self._error)
            return _nothing
        if self._completed:
            observer.on_completed()
            return _nothing
        sink = _Sink(key, pattern, observer)
        self._sinks.append(sink)

        def detach() -> None:
            with contextlib.suppress(ValueError):
                self._sinks.remove(sink)

        return detach

    def dispatch(self, change: Change) -> None:
        for sink in list(self._sinks):
            if sink.key is not None and sink.key != change.key:
                continue
            if sink.pattern is not None and not fnmatch.fnmatchcase(change.key, sink.pattern):
                continue
            try:
                sink.observer.on_next(change)
            except Exception:  # an observer's bug must not stop the fold
                log.exception("observer of %r failed on %r", sink.key or sink.pattern, change)

    def complete(self) -> None:
        """The feed is over: every observer is completed and detached."""
        if self._completed or self._error is not None:
            return
        self._completed = True
        self._end(lambda observer: observer.on_completed())

    def fail(self, error: Exception) -> None:
        """The feed broke: every observer gets ``error`` and is detached."""
        if self._completed or self._error is not None:
            return
        self._error = error
        self._end(lambda observer: observer.on_error(error))

    def _end(self, tell: Callable[[ObserverBase[Change]], None]) -> None:
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                tell(sink.observer)
            except Exception:  # one observer's bug must not keep the others from hearing
                log.exception("observer of %r failed at the end of the feed", sink.key)


def _nothing() -> None:
    pass
