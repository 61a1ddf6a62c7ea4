"""The KV memory's events on the log: one JSON object per record, its ``op`` field first.

These pydantic models are the wire format (docs/memory.md): any service can append them.
The record's key is the KV key; its partition is Kafka's murmur2 of the key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

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
)


class _Op(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str | None = None  # the writer's id for this op: its outcome is reported back by it


class SetOp(_Op):
    """Set ``key`` to ``value``; with ``ttl_ms`` it expires that long after the record's time."""

    op: Literal["set"] = "set"
    key: str
    value: Any
    ttl_ms: int | None = Field(default=None, gt=0)


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


def encode_op(op: _Op) -> bytes:
    return op.model_dump_json(exclude_none=True).encode()


def decode_op(data: bytes) -> SetOp | DeleteOp | CasOp | IncrementOp | TickOp | BatchOp:
    """Parse an op; raises ``pydantic.ValidationError`` (a ``ValueError``) if it is not one."""
    op: SetOp | DeleteOp | CasOp | IncrementOp | TickOp | BatchOp = _ADAPTER.validate_json(data)
    return op
