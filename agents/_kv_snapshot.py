"""Local snapshots of a KV memory's view, so a restart folds only the log's tail.

One SQLite file per namespace: every live entry, and per partition the last applied offset and
the stream time. It is a cache of the log: deleting it only makes the next open slower; a
snapshot ahead of the log (the topic was recreated) is ignored.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agents._kv_fold import Entry, KVPartition
from brokers import json

__all__ = ("load_snapshot", "save_snapshot")


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS entries (p INTEGER, k TEXT, v BLOB, version INTEGER,"
        " expires_at INTEGER, PRIMARY KEY (p, k))"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS parts (p INTEGER PRIMARY KEY, applied INTEGER,"
        " stream_time INTEGER)"
    )
    return db


def save_snapshot(path: Path, parts: list[KVPartition]) -> None:
    """Write the whole view at once (replacing the previous snapshot)."""
    db = _connect(path)
    try:
        db.execute("BEGIN")
        db.execute("DELETE FROM entries")
        db.execute("DELETE FROM parts")
        for part in parts:
            db.executemany(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                (
                    (part.partition, key, json.dumps(e.value), e.version, e.expires_at)
                    for key, e in part.entries.items()
                ),
            )
            db.execute(
                "INSERT INTO parts VALUES (?, ?, ?)",
                (part.partition, part.applied, part.stream_time),
            )
        db.execute("COMMIT")
    finally:
        db.close()


def load_snapshot(path: Path, parts: list[KVPartition], ends: dict[int, int]) -> int:
    """Fill ``parts`` from the snapshot where it is consistent with the log; returns keys loaded."""
    if not path.exists():
        return 0
    db = _connect(path)
    loaded = 0
    try:
        for p, applied, stream_time in db.execute("SELECT p, applied, stream_time FROM parts"):
            if p >= len(parts) or applied >= ends.get(p, 0):
                continue  # a partition the log no longer has, or a snapshot ahead of the log
            part = parts[p]
            rows = db.execute("SELECT k, v, version, expires_at FROM entries WHERE p = ?", (p,))
            for key, value, version, expires_at in rows:
                part.entries[key] = Entry(json.loads(value), version, expires_at)
                if expires_at is not None:
                    part.schedule(key, expires_at)
                loaded += 1
            part.applied, part.stream_time = applied, stream_time
    finally:
        db.close()
    return loaded
