"""Errors of the agents layer, under the one hierarchy rooted in :mod:`brokers`.

::

    NeuroplexError
    └── SerializationError
        └── RecordRejectedError   a write's own record was refused by the fold: not applied
"""

from __future__ import annotations

from brokers import SerializationError

__all__ = ("RecordRejectedError",)


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
