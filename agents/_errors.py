"""Errors of the agents layer, under the one hierarchy rooted in :mod:`brokers`.

::

    NeuroplexError
    ├── SerializationError
    │   └── RecordRejectedError   a write's own record was refused by the fold: not applied
    └── ResourceStateError
        └── ViewFailedError       a Memory's view stopped (reading its log failed): reopen it
"""

from __future__ import annotations

from brokers import ResourceStateError, SerializationError

__all__ = ("RecordRejectedError", "ViewFailedError")


class RecordRejectedError(SerializationError):
    """The record a write appended is not an op the fold accepts, so it was never applied.

    The write's caller gets this instead of waiting for an outcome that cannot come. It means
    a bug (in neuroplex or in what sits between it and the log), never bad user input: values
    are checked before they are written.
    """

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"record {topic}[{partition}]@{offset} was refused by the KV fold: {reason}. The "
            "write was not applied (the record stays in the log and is skipped); report it "
            "with the record's bytes (see the wire format in docs/memory.md)."
        )


class ViewFailedError(ResourceStateError):
    """A Memory's view stopped folding its log (the log failed under it, or a bug).

    Everything waiting on the view gets it: reads and writes waiting for the view, observers
    (``on_error``), subscriptions (at their next read); later calls raise it too. The view is
    not trusted past that point: close the Memory and open a new one (the original error is
    ``__cause__``).
    """

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(
            f"the view of {topic!r} stopped: {reason}. Close this Memory and open a new one "
            "(its state is folded again from the log and its snapshot)."
        )
