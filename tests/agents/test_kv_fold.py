"""The KV fold against a plain-dict model: every op sequence, same state and same outcomes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agents._kv_fold import KVPartition
from agents._kv_ops import (
    BatchOp,
    CasOp,
    DeleteOp,
    IncrementOp,
    SetOp,
    TickOp,
    decode_op,
    encode_op,
)

KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.one_of(
    st.integers(-5, 5),
    st.sampled_from([1, 1.0, True, False, 0, 0.0, 2.5]),  # equal in Python, not as JSON
    st.text(max_size=3),
    st.none(),
)


def same(a: Any, b: Any) -> bool:
    """JSON equality written out: the same type, and equal."""
    return type(a) is type(b) and a == b


op_st = st.one_of(
    st.builds(SetOp, key=KEYS, value=VALUES, ttl_ms=st.one_of(st.none(), st.integers(1, 30))),
    st.builds(SetOp, key=KEYS, value=VALUES, expires_at=st.integers(1, 120)),  # imported keys
    st.builds(DeleteOp, key=KEYS),
    st.builds(IncrementOp, key=KEYS, delta=st.integers(-3, 3)),
    st.builds(
        CasOp,
        key=KEYS,
        value=VALUES,
        expect=st.sampled_from(["version", "value", "absent"]),
        expected_version=st.integers(0, 12),
        expected_value=VALUES,
    ),
    st.builds(TickOp),
)


class Model:
    """What the fold must do, written as plainly as possible."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[Any, int, int | None]] = {}  # value, version, expires_at
        self.now = 0

    def live(self, key: str) -> tuple[Any, int, int | None] | None:
        item = self.data.get(key)
        if item is None or (item[2] is not None and item[2] <= self.now):
            return None
        return item

    def apply(self, offset: int, t: int, op: Any) -> tuple[bool, Any] | None:
        self.now = max(self.now, t)
        for key in list(self.data):
            if self.live(key) is None:
                del self.data[key]
        if isinstance(op, TickOp):
            return None
        current = self.live(op.key)
        if isinstance(op, DeleteOp):
            if current is None:
                return False, None
            del self.data[op.key]
            return True, None
        if isinstance(op, IncrementOp):
            base = 0 if current is None else current[0]
            if type(base) not in (int, float):  # booleans are not numbers here
                return False, base
            expires = None if current is None else current[2]
            self.data[op.key] = (base + op.delta, offset, expires)
            return True, base + op.delta
        if isinstance(op, CasOp):
            ok = {
                "value": current is not None and same(current[0], op.expected_value),
                "version": current is not None and current[1] == op.expected_version,
                "absent": current is None,
            }[op.expect]
            if not ok:
                return False, None if current is None else current[0]
        expires = None if op.ttl_ms is None else t + op.ttl_ms
        if isinstance(op, SetOp) and op.expires_at is not None:
            expires = op.expires_at
        self.data[op.key] = (op.value, offset, expires)
        return True, op.value


@settings(max_examples=300)
@given(st.lists(st.tuples(op_st, st.integers(0, 10)), max_size=40), st.booleans())
def test_fold_equals_the_model(steps: list[tuple[Any, int]], batched: bool) -> None:
    fold, model = KVPartition(), Model()
    t = 0
    for offset, (op, dt) in enumerate(steps):
        t += dt
        op = op.model_copy(update={"id": f"op{offset}"})
        record = BatchOp(ops=[op]) if batched and not isinstance(op, TickOp) else op
        _, outcomes = fold.apply(offset, t, decode_op(encode_op(record)))  # as read from the log
        expected = model.apply(offset, t, op)
        if expected is not None:
            got = dict(outcomes)[f"op{offset}"]
            assert got.applied == expected[0], (op, got)
            if got.applied:
                assert same(got.value, expected[1])
        for key in "abc":
            entry, item = fold.get(key), model.live(key)
            assert (entry is None) == (item is None), key
            if entry is not None and item is not None:
                assert (entry.value, entry.version) == item[:2]


def test_a_replayed_record_is_skipped() -> None:
    fold = KVPartition()
    fold.apply(0, 1, IncrementOp(key="n", delta=1))
    changes, _ = fold.apply(0, 1, IncrementOp(key="n", delta=1))
    assert changes == []
    entry = fold.get("n")
    assert entry is not None
    assert entry.value == 1
