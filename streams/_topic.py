"""Typed topics: a topic name with its key and value codecs and its dead-letter topic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from brokers import Position, ProducerRecord, Record, TopicSpec
from streams._codec import Codec, codec_for, key_codec_for
from streams._errors import DecodeError, EncodeError
from streams._event import Event

if TYPE_CHECKING:
    from streams._app import App

__all__ = ("DEAD_LETTER_SUFFIX", "Topic")

K = TypeVar("K")
V = TypeVar("V")

_new_tuple = tuple.__new__

DEAD_LETTER_SUFFIX = ".dead-letter"
"""A topic's dead letters go to ``<topic>.dead-letter``."""


class Topic(Generic[K, V]):
    """A topic of the app with typed keys and values. Declare with :meth:`App.topic`.

    Records that do not decode go to :attr:`dead_letter_topic` with the reason and their
    source position in headers (``x-dead-letter-reason``, ``x-source-topic``,
    ``x-source-partition``, ``x-source-offset``).
    """

    def __init__(
        self,
        app: App,
        name: str,
        *,
        key_type: Any = str,
        value_type: Any = Any,
        partitions: int | None = None,
        compacted: bool = False,
        retention_ms: int | None = None,
        internal: bool = False,
        repartition: bool = False,
    ) -> None:
        self.app = app
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        self.key_codec: Codec[Any] = key_codec_for(key_type)
        self.value_codec: Codec[Any] = codec_for(value_type)
        self.parse_key = self.key_codec.parse  # bound once: decode runs once per event
        self.parse_value = self.value_codec.parse
        self.partitions = partitions
        self.compacted = compacted
        self.retention_ms = retention_ms
        self.internal = internal
        self.repartition = repartition  # records carry their upstream position (group_by)
        TopicSpec(name, partitions=partitions or 1)  # validates the name now, not at start

    def __repr__(self) -> str:
        return f"<Topic {self.name} key={self.key_type!r} value={self.value_type!r}>"

    @property
    def dead_letter_topic(self) -> str:
        return self.name + DEAD_LETTER_SUFFIX

    def spec(self, default_partitions: int) -> TopicSpec:
        return TopicSpec(
            self.name,
            partitions=self.partitions or default_partitions,
            compacted=self.compacted,
            retention_ms=self.retention_ms,
        )

    # ------------------------------------------------------------ encoding
    def encode_key(self, key: K | None) -> bytes | None:
        if key is None:
            return None
        try:
            return self.key_codec.encode(key)
        except (TypeError, ValueError) as exc:
            raise EncodeError(self.name, key, f"bad key: {exc}") from exc

    def encode_value(self, value: V | None) -> bytes | None:
        if value is None:
            return None
        try:
            return self.value_codec.encode(value)
        except (TypeError, ValueError) as exc:
            raise EncodeError(self.name, value, str(exc)) from exc

    def decode(self, record: Record) -> Event[K, V]:
        """The record as an event; raises :class:`DecodeError` saying what is wrong."""
        key, value = record.key, record.value
        try:  # the hot path: the parsers themselves, and Event(...) without its __new__
            return _new_tuple(
                Event,
                (
                    None if key is None else self.parse_key(key),
                    None if value is None else self.parse_value(value),
                    record.topic,
                    record.partition,
                    record.offset,
                    record.timestamp,
                    record.headers,
                ),
            )
        except Exception:  # noqa: BLE001 - decoded again, to say what is wrong
            return self._decode_checked(record)

    def _decode_checked(self, record: Record) -> Event[K, V]:
        """:meth:`decode` through the codecs' ``decode``, whose errors say what is wrong."""
        try:
            key = None if record.key is None else self.key_codec.decode(record.key)
        except (TypeError, ValueError) as exc:
            raise DecodeError(record.topic, record.partition, record.offset, f"key: {exc}") from exc
        try:
            value: Any = None if record.value is None else self.value_codec.decode(record.value)
        except (TypeError, ValueError) as exc:
            raise DecodeError(record.topic, record.partition, record.offset, str(exc)) from exc
        return Event(
            key,
            value,
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            record.headers,
        )

    # ------------------------------------------------------------ sending
    async def send(
        self,
        key: K | None,
        value: V | None,
        *,
        partition: int | None = None,
        headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]] | None = None,
    ) -> Position:
        """Append one record (``value=None`` is a tombstone); returns its position."""
        return await self.app.broker.produce(
            self.name,
            self.encode_value(value),
            key=self.encode_key(key),
            partition=partition,
            headers=headers,
        )

    async def send_many(self, items: Iterable[tuple[K | None, V | None]]) -> list[Position]:
        """Append many (key, value) pairs in one batch; positions in the same order."""
        records = [ProducerRecord(self.encode_value(v), self.encode_key(k)) for k, v in items]
        return await self.app.broker.produce_batch(self.name, records)
