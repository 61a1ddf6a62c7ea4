"""The KV memory's events on the log: one JSON object per record, its ``op`` field first.

These pydantic models are the wire format (docs/memory.md): any service can append them.
The record's key is the KV key; its partition is Kafka's murmur2 of the key. An optional field
(``id``, ``ttl_ms``, ``expires_at``, ``expected_version``, ``expected_value``) left out means
``null``; every
other field is written, ``null`` values included (``{"op": "set", "key": "k", "value": null}``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from brokers import json

__all__ = (
    "BatchOp",
    "CasOp",
    "DeleteOp",
    "IncrementOp",
    "KeyOp",
    "Op",
    "SetOp",
    "TickOp",
    "decode_op",
    "encode_op",
    "op_ids",
)


class _Op(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str | None = None  # the writer's id for this op: its outcome is reported back by it


class SetOp(_Op):
    """Set ``key`` to ``value``; with ``ttl_ms`` it expires that long after the record's time,
    with ``expires_at`` at that event time (ms since the epoch: an imported key's deadline)."""

    op: Literal["set"] = "set"
    key: str
    value: Any
    ttl_ms: int | None = Field(default=None, gt=0)
    expires_at: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_deadline(self) -> Self:
        if self.ttl_ms is not None and self.expires_at is not None:
            raise ValueError("give ttl_ms or expires_at, not both")
        return self


class DeleteOp(_Op):
    op: Literal["delete"] = "delete"
    key: str


class CasOp(_Op):
    """Set ``key`` to ``value`` only if it is still as expected.

    ``expect`` is ``version`` (its version is ``expected_version``), ``value`` (its value equals
    ``expected_value``) or ``absent`` (the key does not exist).
    """

    op: Literal["cas"] = "cas"
    key: str
    value: Any
    expect: Literal["version", "value", "absent"]
    expected_version: int | None = None
    expected_value: Any = None
    ttl_ms: int | None = Field(default=None, gt=0)


class IncrementOp(_Op):
    """Add ``delta`` to the number at ``key`` (absent counts as 0)."""

    op: Literal["increment"] = "increment"
    key: str
    delta: int | float


class TickOp(_Op):
    """Time passed: keys whose deadline is at or before this record's time expire."""

    op: Literal["tick"] = "tick"


KeyOp: TypeAlias = Annotated[SetOp | DeleteOp | CasOp | IncrementOp, Field(discriminator="op")]


class BatchOp(_Op):
    """Several ops applied at one log position, in order (their keys share a partition)."""

    op: Literal["batch"] = "batch"
    ops: list[KeyOp]


Op: TypeAlias = Annotated[
    SetOp | DeleteOp | CasOp | IncrementOp | TickOp | BatchOp, Field(discriminator="op")
]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Op)

# per op class, the fields left out of the record when they are None (they decode back to None)
_OPTIONAL: dict[type[BaseModel], frozenset[str]] = {}


def _wire(op: BaseModel) -> dict[str, Any]:
    """The op as the JSON object it is on the log: ``op`` first, optional ``None`` fields out."""
    cls = type(op)
    optional = _OPTIONAL.get(cls)
    if optional is None:
        optional = frozenset(n for n, f in cls.model_fields.items() if f.default is None)
        _OPTIONAL[cls] = optional
    fields = op.__dict__
    data: dict[str, Any] = {"op": fields["op"]}
    for name, value in fields.items():
        if name == "op" or (value is None and name in optional):
            continue
        data[name] = [_wire(one) for one in value] if name == "ops" else value
    return data


def encode_op(op: _Op) -> bytes:
    """The record value of an op. Raises ``TypeError`` if a value is not JSON (checked at the
    edge, so only a bug gets here)."""
    return json.dumps(_wire(op))


def decode_op(data: bytes) -> SetOp | DeleteOp | CasOp | IncrementOp | TickOp | BatchOp:
    """Parse an op; raises ``ValueError`` (bad JSON, or a ``pydantic.ValidationError``) if it is
    not one.

    The JSON is parsed by the same library that wrote it (orjson), so whatever
    :func:`encode_op` writes, nesting included, parses back.
    """
    op: SetOp | DeleteOp | CasOp | IncrementOp | TickOp | BatchOp = _ADAPTER.validate_python(
        json.loads(data)
    )
    return op


def op_ids(data: bytes | None) -> list[str]:
    """The writers' ids in a record that did not decode (the op's, and its batch ops'), so the
    writers waiting for them can be told; ``[]`` where none can be read."""
    try:
        value = json.loads(data or b"")
    except ValueError:
        return []
    if not isinstance(value, dict):
        return []
    found = [value.get("id")]
    ops = value.get("ops")
    if isinstance(ops, list):
        found += [one.get("id") for one in ops if isinstance(one, dict)]
    return [i for i in found if isinstance(i, str)]
