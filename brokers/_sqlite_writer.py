"""The writer thread of a ``sqlite://`` broker: group commit of every write of one process.

Produce calls, topic changes, heartbeats and commits are queued as jobs. The writer thread takes
everything queued (up to a bound), runs it in one transaction and acknowledges each job only
after ``COMMIT`` returned: concurrent producers share one transaction and one sync to disk.
Consecutive appends are merged into one ``executemany``. Every other job runs in a savepoint,
so a refused job (a conflict, a stale member) does not undo the others. Between batches the
thread runs background upkeep (retention, compaction) in small transactions: only when no
write is queued, or at most ten steps per ``maintenance_interval`` under constant load, so
producers go first but upkeep is never starved. A second thread checkpoints the write-ahead
log after the acknowledgements, off the produce path. Every write transaction first checks
the file's format version (:func:`~brokers._sqlite_schema.check_format`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from brokers._errors import ClosedError, LogVersionError, NeuroplexError
from brokers._sqlite_maintenance import maintain
from brokers._sqlite_ops import Append, Txn, append
from brokers._sqlite_schema import check_format, translate_error
from brokers._types import Position

__all__ = ("Writer",)

T = TypeVar("T")
_log = logging.getLogger("brokers.sqlite")

_MAX_BATCH_RECORDS = 20_000
_MAX_BATCH_BYTES = 16 << 20
_CHECKPOINT_BYTES = 4 << 20

Work = Callable[[sqlite3.Connection, Txn], T]


@dataclass(slots=True)
class _Job:
    work: Work[Any] | Append
    future: asyncio.Future[Any]

    @property
    def records(self) -> int:
        return len(self.work.records) if isinstance(self.work, Append) else 1

    @property
    def size(self) -> int:
        """About how many bytes it writes (values only: they dominate)."""
        if isinstance(self.work, Append):
            return sum(len(r.value) for r in self.work.records if r.value is not None)
        return 64


Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class Writer:
    """Runs queued writes in group-committed transactions on its own thread."""

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        checkpoint_conn: sqlite3.Connection,
        *,
        loop: asyncio.AbstractEventLoop,
        on_commit: Callable[[Txn], None],
        maintenance_interval: float,
    ) -> None:
        self._path = path
        self._conn = conn
        self._checkpoint_conn = checkpoint_conn
        self._loop = loop
        self._on_commit = on_commit
        self._interval = maintenance_interval
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closing = False
        self._stopped = False
        self._dirty = False
        self._unflushed = 0
        self.transactions = 0  # write transactions committed (upkeep not counted)
        self._checkpoint_due = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sqlite-writer {path}")
        self._checkpointer = threading.Thread(
            target=self._checkpoints, name=f"sqlite-checkpoint {path}"
        )

    def start(self) -> None:
        self._thread.start()
        self._checkpointer.start()

    # ------------------------------------------------------------ loop side
    def submit(self, work: Work[T]) -> asyncio.Future[T]:
        """Queue ``work(conn, txn)``; the future resolves after its transaction committed."""
        return self._put(work)

    def submit_append(self, work: Append) -> asyncio.Future[list[Position]]:
        """Queue an append; the future gets the records' positions once they are committed."""
        return self._put(work)

    def _put(self, work: Work[Any] | Append) -> asyncio.Future[Any]:
        if self._closing:
            raise ClosedError(f"broker sqlite://{self._path}")
        future = self._loop.create_future()
        self._queue.put(_Job(work, future))
        return future

    async def aclose(self) -> None:
        """Finish every queued job, then stop both threads and close their connections."""
        if self._closing:
            return
        self._closing = True
        self._queue.put(None)
        await asyncio.to_thread(self._join)
        self._conn.close()
        self._checkpoint_conn.close()

    def _join(self) -> None:
        if self._thread.ident is not None:
            self._thread.join()
        self._stopped = True
        self._checkpoint_due.set()
        if self._checkpointer.ident is not None:
            self._checkpointer.join()

    # ------------------------------------------------------------ writer thread
    def _run(self) -> None:
        pending: list[_Job] = []
        try:
            next_upkeep = time.monotonic()
            while True:
                timeout = max(0.0, next_upkeep - time.monotonic())
                try:
                    first = self._queue.get(timeout=timeout)
                except queue.Empty:
                    more = self._upkeep()
                    next_upkeep = time.monotonic() + (0.0 if more else self._interval)
                    continue
                if first is None:
                    return
                pending = [first]
                stop = self._collect(pending)
                self._commit(pending)
                pending = []
                if stop:
                    return
                now = time.monotonic()
                # queued writes go first, but constant load does not starve upkeep
                if now >= next_upkeep and (
                    self._queue.empty() or now >= next_upkeep + self._interval / 10
                ):
                    more = self._upkeep()
                    next_upkeep = time.monotonic() + (0.0 if more else self._interval)
        finally:
            # only reached with jobs left if the thread itself failed: never leave callers hanging
            leftover = pending
            with contextlib.suppress(queue.Empty):
                while True:
                    job = self._queue.get_nowait()
                    if job is not None:
                        leftover.append(job)
            if leftover:
                error = ClosedError(f"broker sqlite://{self._path}")
                self._deliver([(job.future, None, error) for job in leftover], None)
            self._closing = True

    def _collect(self, batch: list[_Job]) -> bool:
        """Add whatever else is queued to ``batch``; True if the stop sentinel was met."""
        records, size = batch[0].records, batch[0].size
        while records < _MAX_BATCH_RECORDS and size < _MAX_BATCH_BYTES:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return False
            if job is None:
                return True
            batch.append(job)
            records += job.records
            size += job.size
        return False

    def _commit(self, batch: list[_Job]) -> None:
        conn = self._conn
        txn = Txn(time.time_ns() // 1_000_000)
        outcomes: list[Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            check_format(conn, self._path)
            i = 0
            while i < len(batch):
                job = batch[i]
                if isinstance(job.work, Append):
                    run = [job]
                    i += 1
                    while i < len(batch) and isinstance(batch[i].work, Append):
                        run.append(batch[i])
                        i += 1
                    results = append(conn, txn, [j.work for j in run])  # type: ignore[misc]  # all Appends
                    for j, result in zip(run, results, strict=True):
                        if isinstance(result, NeuroplexError):
                            outcomes.append((j.future, None, result))
                        else:
                            outcomes.append((j.future, result, None))
                    continue
                outcomes.append(self._isolated(conn, txn, job))
                i += 1
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            error = translate_error(exc, self._path)
            error.__cause__ = exc
            self._deliver([(job.future, None, error) for job in batch], None)
            return
        except Exception as exc:  # noqa: BLE001  # not swallowed: every caller in the batch gets it
            # a bug in one job must not stop the writer: undo the batch, tell everyone in it
            self._rollback()
            self._deliver([(job.future, None, exc) for job in batch], None)
            return
        self.transactions += 1
        self._deliver(outcomes, txn)
        self._wrote(txn.written + 64 * len(batch))

    def _wrote(self, size: int) -> None:
        self._dirty = True
        self._unflushed += size
        if self._unflushed >= _CHECKPOINT_BYTES:
            self._unflushed = 0
            self._checkpoint_due.set()

    def _isolated(self, conn: sqlite3.Connection, txn: Txn, job: _Job) -> Outcome:
        """Run one job in a savepoint: a refusal undoes only its own writes."""
        work = job.work
        assert not isinstance(work, Append)
        conn.execute("SAVEPOINT job")
        try:
            result = work(conn, txn)
        except NeuroplexError as exc:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            return (job.future, None, exc)
        conn.execute("RELEASE job")
        return (job.future, result, None)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _upkeep(self) -> bool:
        """One bounded step of retention and compaction; True if more work is waiting."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            check_format(conn, self._path)
            changes = conn.total_changes
            more = maintain(conn, time.time_ns() // 1_000_000)
            changed = conn.total_changes != changes
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            _log.warning("log upkeep of %s failed, will retry: %s", self._path, exc)
            return False
        except LogVersionError as exc:
            self._rollback()
            _log.warning("log upkeep of %s stopped: %s", self._path, exc)
            return False
        except Exception:  # noqa: BLE001  # logged; upkeep must not take the writer down
            self._rollback()
            _log.exception("log upkeep of %s failed, will retry", self._path)
            return False
        if changed:  # an idle log needs no checkpoint
            self._wrote(4096)
        return more

    def _deliver(self, outcomes: list[Outcome], txn: Txn | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._resolve, outcomes, txn)
        except RuntimeError:
            # the event loop is closed: nobody is waiting any more
            return

    def _resolve(self, outcomes: list[Outcome], txn: Txn | None) -> None:
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        if txn is not None:
            self._on_commit(txn)

    # ------------------------------------------------------------ checkpoint thread
    def _checkpoints(self) -> None:
        """Copy the write-ahead log into the database file, off the produce path."""
        while True:
            self._checkpoint_due.wait(timeout=self._interval)
            self._checkpoint_due.clear()
            if self._stopped:
                return
            if not self._dirty:
                continue
            self._dirty = False
            try:
                self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                _log.warning("checkpoint of %s failed, will retry: %s", self._path, exc)
