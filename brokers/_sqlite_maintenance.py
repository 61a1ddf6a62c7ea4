"""Background upkeep of a ``sqlite://`` log: retention, compaction, purge of deleted topics.

Every function here runs inside a write transaction the caller opened and does a bounded amount
of work, so producers never wait long behind it: the writer thread runs one step between
produce batches and comes back for more while work remains.

- **Retention** drops a prefix of a partition: records older than ``retention_ms`` and the
  oldest records while the partition holds more than ``retention_bytes``. Produce also applies
  it inline, within the appending transaction, for the partitions it touched.
- **Compaction** (compacted topics) deletes every record that is not the newest of its key. A
  pass starts when more than half of a partition is dead (and at least
  :data:`COMPACT_MIN_DEAD` records), or when a tombstone outlived ``delete_retention_ms``; it
  walks the partition from its beginning to the log end it saw at the start, in chunks. A
  tombstone is dropped only within a pass, once it is older than ``delete_retention_ms``:
  every older record of its key existed when the pass started and was dead, so it was deleted
  in an earlier chunk of the same pass. A reader can never see an old value come back.
- **Deleted topics** lose their records in chunks after the topic is gone (ids are never
  reused, so a topic created again under the same name starts empty at once).
"""

from __future__ import annotations

import sqlite3

__all__ = ("COMPACT_MIN_DEAD", "STEP_ROWS", "maintain", "retain")

COMPACT_MIN_DEAD = 1024
"""A compaction pass starts once more dead records than this are half of a partition."""

STEP_ROWS = 2000
"""About how many records one upkeep step deletes or scans before it commits."""

_TOMBSTONE_PASS_EVERY_MS = 60_000
"""The least time between two passes started only to drop expired tombstones."""


def retain(
    conn: sqlite3.Connection,
    tid: int,
    part: int,
    *,
    retention_ms: int | None,
    retention_bytes: int | None,
    compacted: bool,
    now_ms: int,
    budget: int = STEP_ROWS,
) -> int:
    """Drop the expired prefix of one partition (at most ``budget`` records); how many."""
    row = conn.execute(
        "SELECT count, bytes FROM partitions WHERE tid = ? AND part = ?", (tid, part)
    ).fetchone()
    if row is None or row[0] == 0:
        return 0
    excess = row[1] - retention_bytes if retention_bytes is not None else 0
    horizon = now_ms - retention_ms if retention_ms is not None else None
    if excess <= 0:
        if horizon is None:
            return 0
        first = conn.execute(
            "SELECT ts FROM records WHERE tid = ? AND part = ? ORDER BY off LIMIT 1", (tid, part)
        ).fetchone()
        if first is None or first[0] >= horizon:
            return 0
    # walk the oldest records only as far as needed (the cursor reads them one by one)
    doomed: list[tuple[int, bytes | None]] = []
    freed = 0
    cursor = conn.execute(
        "SELECT off, ts, size, key FROM records WHERE tid = ? AND part = ? ORDER BY off LIMIT ?",
        (tid, part, budget),
    )
    try:
        for off, ts, size, key in cursor:
            if freed < excess or (horizon is not None and ts < horizon):
                freed += size
                doomed.append((off, key))
            else:
                break
    finally:
        cursor.close()
    dropped = len(doomed)
    if dropped == 0:
        return 0
    cut = doomed[-1][0] + 1
    conn.execute("DELETE FROM records WHERE tid = ? AND part = ? AND off < ?", (tid, part, cut))
    keys_gone = 0
    if compacted:
        before = conn.total_changes
        conn.executemany(
            "DELETE FROM latest WHERE tid = ? AND part = ? AND key = ? AND off = ?",
            [(tid, part, key, off) for off, key in doomed if key is not None],
        )
        keys_gone = conn.total_changes - before
    conn.execute(
        "UPDATE partitions SET count = count - ?, bytes = bytes - ?, keys = keys - ? "
        "WHERE tid = ? AND part = ?",
        (dropped, freed, keys_gone, tid, part),
    )
    return dropped


def clean(
    conn: sqlite3.Connection,
    tid: int,
    part: int,
    *,
    delete_retention_ms: int,
    now_ms: int,
    budget: int = STEP_ROWS,
) -> int:
    """One chunk of a compaction pass over one partition; 0 if no pass is due."""
    next_offset, count, keys, clean_from, clean_to, cleaned_at = conn.execute(
        "SELECT next_offset, count, keys, clean_from, clean_to, cleaned_at FROM partitions "
        "WHERE tid = ? AND part = ?",
        (tid, part),
    ).fetchone()
    horizon = now_ms - delete_retention_ms
    if clean_from is None:
        dead = count - keys
        due = dead > COMPACT_MIN_DEAD and dead * 2 > count
        if not due and now_ms - cleaned_at >= min(delete_retention_ms, _TOMBSTONE_PASS_EVERY_MS):
            due = (
                conn.execute(
                    "SELECT 1 FROM latest WHERE tid = ? AND part = ? AND tomb AND ts < ? LIMIT 1",
                    (tid, part, horizon),
                ).fetchone()
                is not None
            )
        if not due:
            return 0
        first = conn.execute(
            "SELECT min(off) FROM records WHERE tid = ? AND part = ?", (tid, part)
        ).fetchone()[0]
        clean_from = next_offset if first is None else first
        clean_to = next_offset
    bound = conn.execute(
        "SELECT off FROM records WHERE tid = ? AND part = ? AND off >= ? ORDER BY off "
        "LIMIT 1 OFFSET ?",
        (tid, part, clean_from, budget),
    ).fetchone()
    hi = clean_to if bound is None else min(bound[0], clean_to)
    deleted = conn.execute(
        "DELETE FROM records WHERE tid = :t AND part = :p AND off >= :lo AND off < :hi AND ("
        " off IS NOT (SELECT l.off FROM latest l"
        "             WHERE l.tid = :t AND l.part = :p AND l.key = records.key)"
        " OR (value IS NULL AND ts < :horizon)) "
        "RETURNING key, off, value IS NULL, size",
        {"t": tid, "p": part, "lo": clean_from, "hi": hi, "horizon": horizon},
    ).fetchall()
    before = conn.total_changes
    conn.executemany(
        "DELETE FROM latest WHERE tid = ? AND part = ? AND key = ? AND off = ?",
        [(tid, part, key, off) for key, off, tomb, _size in deleted if tomb],
    )
    keys_gone = conn.total_changes - before
    done = hi >= clean_to
    conn.execute(
        "UPDATE partitions SET count = count - ?, bytes = bytes - ?, keys = keys - ?, "
        "clean_from = ?, clean_to = ?, cleaned_at = ? WHERE tid = ? AND part = ?",
        (
            len(deleted),
            sum(row[3] for row in deleted),
            keys_gone,
            None if done else hi,
            None if done else clean_to,
            now_ms if done else cleaned_at,
            tid,
            part,
        ),
    )
    return max(len(deleted), 1)


def purge_dropped(conn: sqlite3.Connection, budget: int = STEP_ROWS) -> int:
    """Delete a chunk of the records of a deleted topic; how many rows went (0: nothing left)."""
    row = conn.execute("SELECT tid FROM dropped LIMIT 1").fetchone()
    if row is None:
        return 0
    tid = row[0]
    gone = conn.execute(
        "DELETE FROM records WHERE (tid, part, off) IN "
        "(SELECT tid, part, off FROM records WHERE tid = ? LIMIT ?)",
        (tid, budget),
    ).rowcount
    gone += conn.execute(
        "DELETE FROM latest WHERE (tid, part, key) IN "
        "(SELECT tid, part, key FROM latest WHERE tid = ? LIMIT ?)",
        (tid, budget),
    ).rowcount
    if gone == 0:
        conn.execute("DELETE FROM dropped WHERE tid = ?", (tid,))
        return 1
    return gone


def maintain(conn: sqlite3.Connection, now_ms: int, budget: int = STEP_ROWS) -> bool:
    """One bounded step of upkeep over the whole log; True if more work may be waiting."""
    if purge_dropped(conn, budget):
        return True
    work = 0
    topics = conn.execute(
        "SELECT id, partitions, compacted, retention_ms, retention_bytes, delete_retention_ms "
        "FROM topics WHERE compacted OR retention_ms IS NOT NULL "
        "OR retention_bytes IS NOT NULL ORDER BY id"
    ).fetchall()
    for tid, partitions, compacted, retention_ms, retention_bytes, delete_retention_ms in topics:
        for part in range(partitions):
            if retention_ms is not None or retention_bytes is not None:
                work += retain(
                    conn,
                    tid,
                    part,
                    retention_ms=retention_ms,
                    retention_bytes=retention_bytes,
                    compacted=bool(compacted),
                    now_ms=now_ms,
                    budget=budget,
                )
            if compacted:
                work += clean(
                    conn,
                    tid,
                    part,
                    delete_retention_ms=delete_retention_ms,
                    now_ms=now_ms,
                    budget=budget,
                )
            if work >= budget:
                return True
    return work > 0
