"""Errors of the streams layer, under the one hierarchy rooted in :mod:`brokers`.

::

    NeuroplexError
    ├── ConfigurationError
    │   └── DeclarationError    an app, topic, agent or table declared inconsistently
    └── SerializationError
        ├── EncodeError         a value could not be encoded for its topic
        └── DecodeError         a record did not decode or validate (goes to the dead letters)
"""

from __future__ import annotations

from brokers import ConfigurationError, SerializationError

__all__ = ("DeclarationError", "DecodeError", "EncodeError")


class DeclarationError(ConfigurationError):
    """An app, topic, agent or table was declared in a way that cannot work."""


class EncodeError(SerializationError):
    """A value could not be encoded for its topic."""

    def __init__(self, topic: str, value: object, reason: str) -> None:
        self.topic = topic
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(
            f"cannot encode {shown} for topic {topic!r}: {reason}. Send a value of the "
            "topic's value_type (or plain JSON data that validates as one)."
        )


class DecodeError(SerializationError):
    """A record did not decode or validate against its topic's type."""

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"record {topic}[{partition}]@{offset} does not decode: {reason}. It was sent to "
            "the topic's dead-letter topic; fix the producer (see docs/wire-format.md)."
        )
