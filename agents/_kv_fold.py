"""The KV memory's fold: a deterministic function of the log's records, per partition.

Nothing here reads a clock, draws a random number or does I/O: every replica that applied the
same records holds the same state and decided the same outcomes (who won a CAS, what an
increment returned). Time is the records' own: a partition's *stream time* is the latest record
time it has seen, and a key whose deadline is at or before it is gone.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from agents._kv_ops import BatchOp, CasOp, DeleteOp, IncrementOp, SetOp, TickOp

__all__ = ("Change", "ChangeOp", "Entry", "KVPartition", "Outcome", "same_json")

ChangeOp: TypeAlias = Literal["current", "set", "delete", "cas", "increment", "expire"]


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, type-strictly: ``1``, ``1.0`` and ``true`` differ (Python's ``==``
    says they are equal), and so do ``{"a": 1}`` and ``{"a": true}``."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass(slots=True, frozen=True)
class Entry:
    """A key's state: its value, its version (the offset that last changed it), its deadline."""

    value: Any
    version: int
    expires_at: int | None = None  # ms, event time


@dataclass(slots=True, frozen=True)
class Change:
    """One change of a key, as observers see it.

    ``old``/``new`` are ``None`` when the key was/is absent. ``version`` is the offset of the
    record that made the change (for ``expire``: of the record whose time passed the deadline).
    """

    key: str
    old: Any
    new: Any
    version: int
    op: ChangeOp
    timestamp: int
    partition: int


@dataclass(slots=True, frozen=True)
class Outcome:
    """What the fold decided for one op: applied or not, the key's version and value after."""

    applied: bool
    version: int | None  # the key's version after the op (None: absent)
    value: Any
    reason: str | None = None


@dataclass(slots=True)
class KVPartition:
    """The state of one partition of a namespace."""

    partition: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)
    stream_time: int = 0
    applied: int = -1  # offset of the last record applied
    _deadlines: list[tuple[int, str]] = field(default_factory=list)

    def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= self.stream_time):
            return None
        return entry

    def apply(
        self,
        offset: int,
        timestamp: int,
        op: SetOp | DeleteOp | CasOp | IncrementOp | TickOp | BatchOp,
    ) -> tuple[list[Change], list[tuple[str | None, Outcome]]]:
        """Apply one record; returns the changes and, per op with an id, its outcome.

        A record at or below the applied offset is skipped (idempotent replays).
        """
        if offset <= self.applied:
            return [], []
        self.applied = offset
        changes: list[Change] = []
        if timestamp > self.stream_time:
            self.stream_time = timestamp
            changes += self._expire(offset)
        outcomes: list[tuple[str | None, Outcome]] = []
        ops = op.ops if isinstance(op, BatchOp) else [op]
        for one in ops:
            if isinstance(one, TickOp):
                continue
            outcome = self._apply_one(offset, timestamp, one, changes)
            if one.id is not None:
                outcomes.append((one.id, outcome))
        if isinstance(op, BatchOp) and op.id is not None:
            outcomes.append((op.id, Outcome(True, offset, None)))
        return changes, outcomes

    def _apply_one(
        self,
        offset: int,
        timestamp: int,
        op: SetOp | DeleteOp | CasOp | IncrementOp,
        changes: list[Change],
    ) -> Outcome:
        current = self.get(op.key)
        old = None if current is None else current.value
        if isinstance(op, DeleteOp):
            if current is None:
                return Outcome(False, None, None, "absent")
            del self.entries[op.key]
            changes.append(Change(op.key, old, None, offset, "delete", timestamp, self.partition))
            return Outcome(True, None, None)
        if isinstance(op, IncrementOp):
            base = 0 if current is None else current.value
            if not isinstance(base, int | float) or isinstance(base, bool):
                return Outcome(False, current.version if current else None, base, "not a number")
            new = base + op.delta
            kept = None if current is None else current.expires_at
            self.entries[op.key] = Entry(new, offset, kept)
            changes.append(Change(op.key, old, new, offset, "increment", timestamp, self.partition))
            return Outcome(True, offset, new)
        if isinstance(op, CasOp):
            if op.expect == "value":
                ok = current is not None and same_json(current.value, op.expected_value)
            elif op.expect == "version":
                ok = current is not None and current.version == op.expected_version
            else:
                ok = current is None
            if not ok:
                return Outcome(
                    False,
                    None if current is None else current.version,
                    old,
                    "the version or value changed",
                )
        expires = op.expires_at if isinstance(op, SetOp) else None
        if op.ttl_ms is not None:
            expires = timestamp + op.ttl_ms
        self.entries[op.key] = Entry(op.value, offset, expires)
        if expires is not None:
            heapq.heappush(self._deadlines, (expires, op.key))
        changes.append(Change(op.key, old, op.value, offset, op.op, timestamp, self.partition))
        return Outcome(True, offset, op.value)

    def _expire(self, offset: int) -> list[Change]:
        changes: list[Change] = []
        heap = self._deadlines
        while heap and heap[0][0] <= self.stream_time:
            deadline, key = heapq.heappop(heap)
            entry = self.entries.get(key)
            if entry is not None and entry.expires_at == deadline:
                del self.entries[key]
                changes.append(
                    Change(key, entry.value, None, offset, "expire", deadline, self.partition)
                )
        return changes

    def schedule(self, key: str, deadline: int) -> None:
        """Remember a key's deadline (entries loaded from a snapshot)."""
        heapq.heappush(self._deadlines, (deadline, key))

    def next_deadline(self) -> int | None:
        """The earliest deadline still pending (for the janitor)."""
        heap = self._deadlines
        while heap:
            deadline, key = heap[0]
            entry = self.entries.get(key)
            if entry is not None and entry.expires_at == deadline:
                return deadline
            heapq.heappop(heap)
        return None
