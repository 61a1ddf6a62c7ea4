"""Codecs: how a topic's keys and values become bytes and back.

Values are JSON (through :mod:`brokers.json`, i.e. orjson) validated by pydantic, whatever the
declared type: a pydantic model, a dataclass, a ``TypedDict``, ``dict``, ``int``... ``bytes``
passes through untouched and ``str`` is UTF-8. Keys are UTF-8 strings on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from brokers import json

__all__ = ("BytesCodec", "Codec", "JsonCodec", "StrCodec", "codec_for", "key_codec_for")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Codec(Protocol[T]):
    """Turns values of one type into bytes and back."""

    content_type: str

    def encode(self, value: T) -> bytes:
        """Bytes for ``value``; raises ``ValueError``/``TypeError`` saying why not."""
        ...

    def decode(self, data: bytes) -> T:
        """The value in ``data``; raises ``ValueError`` saying why not."""
        ...

    @property
    def parse(self) -> Callable[[bytes], T]:
        """:meth:`decode` without its error messages, for the hot path: whatever it raises,
        :meth:`decode` of the same bytes raises the ``ValueError`` that says why."""
        ...

    def json_schema(self) -> dict[str, Any] | None:
        """The JSON Schema producers in other languages must follow (None for raw bytes)."""
        ...


class BytesCodec:
    """Raw bytes, untouched."""

    content_type = "application/octet-stream"

    def encode(self, value: bytes) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"expected bytes, got {type(value).__name__}")
        return bytes(value)

    def decode(self, data: bytes) -> bytes:
        return data

    @property
    def parse(self) -> Callable[[bytes], bytes]:
        return self.decode

    def json_schema(self) -> dict[str, Any] | None:
        return None


class StrCodec:
    """UTF-8 text (the wire format of every key)."""

    content_type = "text/plain; charset=utf-8"

    def encode(self, value: str) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"expected str, got {type(value).__name__}")
        return value.encode()

    def decode(self, data: bytes) -> str:
        return data.decode()

    @property
    def parse(self) -> Callable[[bytes], str]:
        return bytes.decode

    def json_schema(self) -> dict[str, Any] | None:
        return {"type": "string"}


class IntKeyCodec:
    """Integer keys, as their decimal text (keys are strings on the wire)."""

    content_type = "text/plain; charset=utf-8"

    def encode(self, value: int) -> bytes:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"expected int, got {type(value).__name__}")
        return str(value).encode()

    def decode(self, data: bytes) -> int:
        return int(data.decode())

    @property
    def parse(self) -> Callable[[bytes], int]:
        return int

    def json_schema(self) -> dict[str, Any] | None:
        return {"type": "string", "pattern": "^-?[0-9]+$"}


class JsonCodec(Generic[T]):
    """JSON validated as ``type_`` by pydantic (models, dataclasses, TypedDicts, builtins)."""

    content_type = "application/json"

    def __init__(self, type_: Any) -> None:
        self.type = type_
        self._adapter: TypeAdapter[T] = TypeAdapter(type_)
        # the core validator itself: TypeAdapter.validate_json's own wrapper doubles its cost
        self._validate_json = self._adapter.validator.validate_json
        self._any = type_ is Any
        # a JSON scalar of exactly its declared type needs no serializer (a counter table)
        self._scalar = type_ if type_ in (int, float, bool) else None

    def encode(self, value: T) -> bytes:
        if self._any or (self._scalar is not None and type(value) is self._scalar):
            return json.dumps(value)
        try:
            # warnings="error": a value that is not of the declared type is refused, not coerced
            return json.dumps(self._adapter.dump_python(value, mode="json", warnings="error"))
        except PydanticSerializationError as exc:
            raise ValueError(f"expected {_name(self.type)}: {exc}") from exc

    def decode(self, data: bytes) -> T:
        if self._any:
            try:
                return cast("T", json.loads(data))
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc}") from exc
        try:
            # parsed and validated in one pass (pydantic's JSON mode: what JSON input means)
            return cast("T", self._validate_json(data))
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if errors and errors[0]["type"] == "json_invalid":
                raise ValueError(f"not JSON: {errors[0]['msg']}") from exc
            raise ValueError(_first_error(exc)) from exc

    @property
    def parse(self) -> Callable[[bytes], T]:
        return json.loads if self._any else self._validate_json

    def json_schema(self) -> dict[str, Any] | None:
        return self._adapter.json_schema()


def _first_error(exc: ValidationError) -> str:
    """The validation errors in one line: ``field: message; other: message``."""
    parts = []
    errors = exc.errors()
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "value"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _name(type_: Any) -> str:
    return getattr(type_, "__name__", None) or repr(type_)


def codec_for(type_: Any) -> Codec[Any]:
    """The codec for a topic's ``value_type``."""
    if type_ is bytes:
        return BytesCodec()
    if type_ is str:
        return StrCodec()
    return cast("Codec[Any]", JsonCodec(type_))


def key_codec_for(type_: Any) -> Codec[Any]:
    """The codec for a topic's ``key_type``: str (default), bytes or int."""
    if type_ is str or type_ is None:
        return StrCodec()
    if type_ is bytes:
        return BytesCodec()
    if type_ is int:
        return IntKeyCodec()
    from streams._errors import DeclarationError

    raise DeclarationError(
        f"key_type {type_!r} is not supported: keys are strings on the wire; use str, int or "
        "bytes and put structure in the value"
    )
