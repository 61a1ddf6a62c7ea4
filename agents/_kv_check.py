"""The KV memory's checks at the edge: what a caller passes, turned into ops or refused.

Keys, values, TTLs, deltas, compare-and-swap expectations and imported deadlines are checked
here, before anything reaches the log, and refused with a :class:`brokers.ConfigurationError`
that shows the value. :class:`agents.Memory` and :class:`agents.Batch` build their ops with
these functions, so both refuse the same input the same way.
"""

from __future__ import annotations

import math
from typing import Any, TypeAlias

import brokers
from agents._kv_ops import CasOp, DeleteOp, IncrementOp, SetOp
from brokers import ConfigurationError

__all__ = (
    "MISSING",
    "Exported",
    "cas_op",
    "check_key",
    "delete_op",
    "import_op",
    "increment_op",
    "set_op",
)

Exported: TypeAlias = tuple[str, Any, int | None]
"""What :meth:`Memory.export` yields and :meth:`Memory.import_keys` takes: key, value, deadline."""

MISSING: Any = object()
"""The default of ``expected_version=`` and ``expected_value=``: not passed (``None`` is absent)."""

_MAX_KEY = 1024


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY:
        raise ConfigurationError(
            f"invalid key {key!r}: keys are non-empty strings of at most {_MAX_KEY} characters"
        )
    if any(c < " " for c in key):
        raise ConfigurationError(f"invalid key {key!r}: control characters are not allowed")
    return key


def _check_value(key: str, value: Any) -> Any:
    try:
        encoded = brokers.json.dumps(value)
    except TypeError as exc:
        raise ConfigurationError(
            f"value {value!r} for key {key!r} is not JSON-serializable: {exc}. Store dicts, "
            "lists, strings, numbers, booleans or None (or a pydantic model's model_dump())"
        ) from exc
    # JSON has no NaN or infinity: the encoder would write them as null, silently
    if b"null" in encoded and _non_finite(value):
        raise ConfigurationError(
            f"value {value!r} for key {key!r} holds NaN or infinity, which JSON cannot carry "
            "(they would read back as None): store None or a string instead"
        )
    return value


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_non_finite(v) for v in value)
    dump = getattr(value, "model_dump", None)
    return callable(dump) and _non_finite(dump())


def _ttl(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if ttl <= 0:
        raise ConfigurationError(f"ttl must be positive seconds, got {ttl}")
    return max(1, round(ttl * 1000))


def set_op(key: str, value: Any, ttl: float | None) -> SetOp:
    return SetOp(key=check_key(key), value=_check_value(key, value), ttl_ms=_ttl(ttl))


def delete_op(key: str) -> DeleteOp:
    return DeleteOp(key=check_key(key))


def increment_op(key: str, delta: int | float) -> IncrementOp:
    if (
        not isinstance(delta, int | float)
        or isinstance(delta, bool)
        or (isinstance(delta, float) and not math.isfinite(delta))
    ):
        raise ConfigurationError(f"delta {delta!r} must be a finite number")
    return IncrementOp(key=check_key(key), delta=delta)


def cas_op(
    key: str,
    value: Any,
    *,
    expected_version: int | None = MISSING,
    expected_value: Any = MISSING,
    ttl: float | None = None,
) -> CasOp:
    if (expected_version is MISSING) == (expected_value is MISSING):
        raise ConfigurationError("pass exactly one of expected_version= or expected_value=")
    if expected_value is not MISSING:
        expect, version, wanted = "value", None, _check_value(key, expected_value)
    elif expected_version is None:
        expect, version, wanted = "absent", None, None
    else:
        expect, version, wanted = "version", expected_version, None
    return CasOp(
        key=check_key(key),
        value=_check_value(key, value),
        expect=expect,  # type: ignore[arg-type]  # one of the three literals above
        expected_version=version,
        expected_value=wanted,
        ttl_ms=_ttl(ttl),
    )


def import_op(item: Exported) -> SetOp:
    """A set op that keeps the exported key's deadline (``expires_at``, event time)."""
    key, value, expires_at = item
    if expires_at is not None and (not isinstance(expires_at, int) or expires_at <= 0):
        raise ConfigurationError(
            f"invalid deadline {expires_at!r} for key {key!r}: ms since the epoch or None"
        )
    return set_op(key, value, None).model_copy(update={"expires_at": expires_at})
