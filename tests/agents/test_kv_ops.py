"""The KV wire format: every op, whatever JSON it carries, decodes to what was encoded."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents._kv_ops import (
    BatchOp,
    CasOp,
    DeleteOp,
    IncrementOp,
    SetOp,
    TickOp,
    decode_op,
    encode_op,
    op_ids,
)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
KEYS = st.text(min_size=1, max_size=5)
IDS = st.none() | st.text(min_size=1, max_size=4)
TTLS = st.none() | st.integers(1, 10**9)

key_op = st.one_of(
    st.builds(SetOp, id=IDS, key=KEYS, value=JSON_VALUES, ttl_ms=TTLS),
    st.builds(SetOp, id=IDS, key=KEYS, value=JSON_VALUES, expires_at=st.integers(1, 2**62)),
    st.builds(DeleteOp, id=IDS, key=KEYS),
    st.builds(
        IncrementOp,
        id=IDS,
        key=KEYS,
        delta=st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False),
    ),
    st.builds(
        CasOp,
        id=IDS,
        key=KEYS,
        value=JSON_VALUES,
        expect=st.sampled_from(["version", "value", "absent"]),
        expected_version=st.none() | st.integers(0, 2**62),
        expected_value=JSON_VALUES,
        ttl_ms=TTLS,
    ),
)
any_op = key_op | st.builds(TickOp, id=IDS) | st.builds(BatchOp, id=IDS, ops=st.lists(key_op))


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1, 1.0 and True differ; so do a missing field and a None one."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, SetOp | DeleteOp | CasOp | IncrementOp | TickOp | BatchOp):
        return same(dict(a), dict(b))
    return bool(a == b)


@settings(max_examples=400)
@given(any_op)
def test_every_op_decodes_to_what_was_encoded(op: Any) -> None:
    data = encode_op(op)
    decoded = decode_op(data)
    assert same(decoded, op), (data, decoded)
    assert encode_op(decoded) == data


def test_none_values_are_written_not_left_out() -> None:
    assert encode_op(SetOp(key="k", value=None)) == b'{"op":"set","key":"k","value":null}'
    cas = CasOp(key="k", value=None, expect="value", expected_value=None)
    assert decode_op(encode_op(cas)) == cas


def test_a_set_has_one_deadline_at_most() -> None:
    with pytest.raises(ValueError, match="not both"):
        SetOp(key="k", value=1, ttl_ms=5, expires_at=10)


def test_a_value_nested_as_deep_as_the_encoder_goes_decodes() -> None:
    value: Any = 1
    for _ in range(250):
        value = [value]
    op = SetOp(key="k", value=value)
    assert decode_op(encode_op(op)) == op


def test_the_ids_of_a_record_that_is_not_an_op_are_found() -> None:
    assert op_ids(b'{"op":"batch","id":"b","ops":[{"op":"set","id":"x"},7]}') == ["b", "x"]
    assert op_ids(b"garbage") == []
    assert op_ids(None) == []
    assert op_ids(b"[1]") == []
