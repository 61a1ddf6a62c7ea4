"""The KV memory's writes: ops appended to the log and answered with what the fold decided.

:class:`KVWriter` gives every op an id, appends it to its key's partition (one op per record,
or a batch as one record per partition), notes the positions in a session's context, and waits
for the outcome the view's fold reports under that id (:class:`WriteResult`). Bulk writes go
through it a chunk at a time. Ops arrive already checked (:mod:`agents._kv_check`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import brokers
from agents._kv_consistency import CausalContext
from agents._kv_fold import Outcome
from agents._kv_ops import BatchOp, DeleteOp, KeyOp, SetOp, encode_op
from agents._kv_view import KVView
from brokers import Broker, ConfigurationError, ProducerRecord

__all__ = ("KVWriter", "WriteResult")


@dataclass(slots=True, frozen=True)
class WriteResult:
    """The fold's answer to a write: applied or not, and the key's version and value after.

    A rejected compare-and-swap has ``applied=False`` and the current ``version``/``value``.
    """

    applied: bool
    version: int | None
    value: Any
    position: brokers.Position
    reason: str | None = None


class KVWriter:
    """Writes to the topic of ``view``; ``check_open`` gives the broker, or raises if the
    Memory is not open (it is asked on every write, and before every chunk of a bulk one)."""

    def __init__(self, view: KVView, check_open: Callable[[], Broker]) -> None:
        self._view = view
        self._check_open = check_open

    async def write(self, op: KeyOp, *, wait: bool, context: CausalContext | None) -> WriteResult:
        """Append one op; with ``wait``, return once the view applied it."""
        broker = self._check_open()
        view = self._view
        op_id = uuid.uuid4().hex
        op = op.model_copy(update={"id": op_id})
        try:
            data = encode_op(op)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"value {getattr(op, 'value', None)!r} for key {op.key!r} is not JSON: {exc}"
            ) from exc
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if wait:
            view.outcomes[op_id] = future
        try:
            position = await broker.produce(view.topic, data, key=op.key.encode())
        except BaseException:
            view.outcomes.pop(op_id, None)
            raise
        if context is not None:
            context.note_write(position.partition, position.offset)
        if not wait:
            return WriteResult(True, None, None, position, "not waited for")
        outcome = await future
        return WriteResult(
            outcome.applied, outcome.version, outcome.value, position, outcome.reason
        )

    async def batch(
        self, ops: list[KeyOp], context: CausalContext | None = None
    ) -> list[WriteResult]:
        """Append the ops as one record per partition; one result per op, in order."""
        broker = self._check_open()
        view = self._view
        by_partition: dict[int, list[KeyOp]] = {}
        ids: list[str] = []
        for op in ops:
            op_id = uuid.uuid4().hex
            ids.append(op_id)
            by_partition.setdefault(view.partition_of(op.key), []).append(
                op.model_copy(update={"id": op_id})
            )
        loop = asyncio.get_running_loop()
        futures = {op_id: loop.create_future() for op_id in ids}
        view.outcomes.update(futures)
        records = [
            ProducerRecord(encode_op(BatchOp(ops=group)), None, partition)
            for partition, group in by_partition.items()
        ]
        try:
            positions = await broker.produce_batch(view.topic, records)
        except BaseException:
            for op_id in ids:
                view.outcomes.pop(op_id, None)
            raise
        if context is not None:
            for pos in positions:
                context.note_write(pos.partition, pos.offset)
        where = {
            op.id: pos
            for pos, group in zip(positions, by_partition.values(), strict=True)
            for op in group
        }
        # every outcome is taken, so none is left unretrieved when one record was refused
        outcomes = await asyncio.gather(*futures.values(), return_exceptions=True)
        results = []
        for op_id, outcome in zip(ids, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(
                WriteResult(
                    outcome.applied, outcome.version, outcome.value, where[op_id], outcome.reason
                )
            )
        return results

    async def bulk(
        self,
        ops: Iterable[SetOp | DeleteOp] | AsyncIterable[SetOp],
        chunk: int,
        progress: Callable[[int], None] | None,
        context: CausalContext | None,
    ) -> int:
        """Write ``ops`` as batches of ``chunk``, ``progress(done)`` after each; returns done."""
        done = 0
        pending: list[KeyOp] = []

        async def flush() -> None:
            nonlocal done, pending
            done += len(await self.batch(pending, context))
            pending = []
            if progress is not None:
                progress(done)

        if isinstance(ops, AsyncIterable):
            async for one in ops:
                pending.append(one)
                if len(pending) >= chunk:
                    await flush()
        else:
            for op in ops:
                pending.append(op)
                if len(pending) >= chunk:
                    await flush()
        if pending:
            await flush()
        return done
