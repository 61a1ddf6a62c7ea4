"""Batches for the KV memory: a builder whose ops go to the log together.

Ops of one partition travel in one record, so they are applied at one log position: all of
them are visible together or none is. Ops of several partitions make one record per partition.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents._kv_check import cas_op, delete_op, increment_op, set_op
from agents._kv_ops import CasOp, DeleteOp, IncrementOp, SetOp

if TYPE_CHECKING:
    from agents._kv_consistency import CausalContext
    from agents._kv_write import WriteResult
    from agents._memory import Memory

__all__ = ("Batch", "BatchResult")


@dataclass(slots=True, frozen=True)
class BatchResult:
    """What a batch did: one result per op (in order), counts, the errors, and its duration.

    ``errors`` has one line per op not applied: ``"<key>: <reason> (<topic>[<p>]@<offset>)"``.
    """

    results: list[WriteResult]
    applied: int
    rejected: int
    errors: list[str] = field(default_factory=list)
    duration: float = 0.0


class Batch:
    """Collects ops; ``await memory.execute_batch(batch)`` (or ``await batch.execute()``)."""

    def __init__(self, memory: Memory) -> None:
        self._memory = memory
        self.ops: list[SetOp | DeleteOp | CasOp | IncrementOp] = []

    def __len__(self) -> int:
        return len(self.ops)

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> Batch:
        self.ops.append(set_op(key, value, ttl))
        return self

    def delete(self, key: str) -> Batch:
        self.ops.append(delete_op(key))
        return self

    def increment(self, key: str, delta: int | float = 1) -> Batch:
        self.ops.append(increment_op(key, delta))
        return self

    def decrement(self, key: str, delta: int | float = 1) -> Batch:
        return self.increment(key, -delta)

    def compare_and_swap(self, key: str, value: Any, **expected: Any) -> Batch:
        self.ops.append(cas_op(key, value, **expected))
        return self

    def set_many(self, items: Mapping[str, Any]) -> Batch:
        for key, value in items.items():
            self.set(key, value)
        return self

    async def execute(self, *, context: CausalContext | None = None) -> BatchResult:
        return await self._memory.execute_batch(self, context=context)


def summarize(
    ops: list[SetOp | DeleteOp | CasOp | IncrementOp], results: list[WriteResult], started: float
) -> BatchResult:
    """The batch's result; an error names the op's key, why, and where the record is."""
    errors = [
        f"{op.key}: {r.reason} ({r.position.topic}[{r.position.partition}]@{r.position.offset})"
        for op, r in zip(ops, results, strict=True)
        if not r.applied
    ]
    applied = sum(1 for r in results if r.applied)
    return BatchResult(
        results, applied, len(results) - applied, errors, time.perf_counter() - started
    )
