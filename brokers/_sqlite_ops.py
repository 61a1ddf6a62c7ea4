"""The SQL of a ``sqlite://`` log: appends and topic changes (writer thread) and reads.

Writes take a connection inside a write transaction opened by the writer thread and a
:class:`Txn` where they note what changed; reads take the reader thread's connection (each read
statement sees the last committed state). Reads go by range on the records' primary key
(topic id, partition, offset): one B-tree range per partition.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from brokers import json
from brokers._errors import (
    ConfigurationError,
    NeuroplexError,
    TopicConflictError,
    UnknownTopicError,
)
from brokers._sqlite_maintenance import STEP_ROWS, retain
from brokers._sqlite_schema import decode_headers, encode_headers
from brokers._types import Position, ProducerRecord, Record, TopicPartition, TopicSpec

__all__ = (
    "Append",
    "Txn",
    "append",
    "beginning_offsets",
    "committed",
    "create_topic",
    "delete_topic",
    "describe_topic",
    "end_offsets",
    "fetch",
    "list_topics",
    "start_offsets",
)


@dataclass(slots=True)
class Txn:
    """What one write transaction did, told to the event loop once it committed.

    Attributes:
        now_ms: the transaction's wall-clock time: the timestamp of its records.
        touched: partitions whose log changed, with their new log end.
        groups: groups that rebalanced: the generation and every member's assignment.
        written: bytes of records appended.
    """

    now_ms: int
    touched: dict[TopicPartition, int] = field(default_factory=dict)
    groups: dict[str, tuple[int, dict[str, frozenset[TopicPartition]]]] = field(
        default_factory=dict
    )
    written: int = 0


@dataclass(slots=True, frozen=True)
class Append:
    """Records for one topic, checked and with partitions resolved, to append atomically."""

    topic: str
    records: Sequence[ProducerRecord]


_TOPIC_COLUMNS = (
    "id, partitions, compacted, retention_ms, retention_bytes, delete_retention_ms, config"
)
_INSERT = (
    "INSERT INTO records (tid, part, off, ts, key, value, headers, size) VALUES (?,?,?,?,?,?,?,?)"
)


@dataclass(slots=True, frozen=True)
class _Topic:
    tid: int
    spec: TopicSpec

    @property
    def has_retention(self) -> bool:
        return self.spec.retention_ms is not None or self.spec.retention_bytes is not None


def _topic(conn: sqlite3.Connection, name: str) -> _Topic | None:
    row = conn.execute(f"SELECT {_TOPIC_COLUMNS} FROM topics WHERE name = ?", (name,)).fetchone()  # noqa: S608  # constant columns
    if row is None:
        return None
    tid, partitions, compacted, retention_ms, retention_bytes, delete_retention_ms, config = row
    spec = TopicSpec(
        name,
        partitions=partitions,
        compacted=bool(compacted),
        retention_ms=retention_ms,
        retention_bytes=retention_bytes,
        delete_retention_ms=delete_retention_ms,
        config=json.loads(config),
    )
    return _Topic(tid, spec)


# ---------------------------------------------------------------- writes (writer thread)
def append(
    conn: sqlite3.Connection, txn: Txn, jobs: Sequence[Append]
) -> list[list[Position] | NeuroplexError]:
    """Append each job's records (offsets assigned here, per partition, contiguously).

    A job for a topic that is gone, or for partitions it no longer has, is refused before
    anything is written; the others go through in one ``executemany``.
    """
    now = txn.now_ms
    topics: dict[str, _Topic | None] = {}
    ends: dict[tuple[int, int], int] = {}  # (tid, part) -> next offset
    added: dict[tuple[int, int], list[int]] = {}  # (tid, part) -> [count, bytes]
    rows: list[tuple[object, ...]] = []
    latest: dict[tuple[int, int], dict[bytes, tuple[int, bool]]] = {}
    results: list[list[Position] | NeuroplexError] = []
    for job in jobs:
        name = job.topic
        if name not in topics:
            topics[name] = _topic(conn, name)
        topic = topics[name]
        if topic is None:
            results.append(UnknownTopicError(name))
            continue
        tid, partitions = topic.tid, topic.spec.partitions
        parts = {r.partition for r in job.records}
        bad = sorted(-1 if p is None else p for p in parts if p is None or not 0 <= p < partitions)
        if bad:
            results.append(
                ConfigurationError(
                    f"partitions {bad} are out of range for topic {name!r}, which has "
                    f"partitions 0..{partitions - 1} (was it deleted and created again?)"
                )
            )
            continue
        # the hot loop: per partition, offsets and sizes in local dicts keyed by int
        next_off: dict[int, int] = {}
        size_of: dict[int, int] = {}
        for p in parts:
            assert p is not None
            next_off[p] = ends[(tid, p)] if (tid, p) in ends else _next_offset(conn, tid, p)
            size_of[p] = 0
        first = dict(next_off)
        positions: list[Position] = []
        add_row, add_position = rows.append, positions.append
        for rec in job.records:
            part = rec.partition
            assert part is not None
            off = next_off[part]
            next_off[part] = off + 1
            key, value, headers = rec.key, rec.value, rec.headers
            size = (0 if key is None else len(key)) + (0 if value is None else len(value))
            if headers:
                size += sum(len(n) + len(v) for n, v in headers)
                add_row((tid, part, off, now, key, value, encode_headers(headers), size))
            else:
                add_row((tid, part, off, now, key, value, None, size))
            size_of[part] += size
            add_position(Position(name, part, off, now))
        if topic.spec.compacted:
            for pos, rec in zip(positions, job.records, strict=True):
                if rec.key is not None:
                    newest = latest.setdefault((tid, pos.partition), {})
                    newest[rec.key] = (pos.offset, rec.value is None)
        for p, end in next_off.items():
            slot = (tid, p)
            counters = added.setdefault(slot, [0, 0])
            counters[0] += end - first[p]
            counters[1] += size_of[p]
            ends[slot] = end
        results.append(positions)
    if not rows:
        return results
    conn.executemany(_INSERT, rows)
    keys = _update_latest(conn, now, latest)
    conn.executemany(
        "UPDATE partitions SET next_offset = ?, count = count + ?, bytes = bytes + ?, "
        "keys = keys + ? WHERE tid = ? AND part = ?",
        [
            (ends[slot], n, size, keys.get(slot, 0), slot[0], slot[1])
            for slot, (n, size) in added.items()
        ],
    )
    by_id = {t.tid: t for t in topics.values() if t is not None}
    for (tid, part), (n, size) in added.items():
        topic = by_id[tid]
        txn.touched[TopicPartition(topic.spec.name, part)] = ends[(tid, part)]
        txn.written += size
        if topic.has_retention:
            # like Kafka's log roll, retention keeps pace with appends: a bounded step now,
            # the rest of a backlog in the background
            retain(
                conn,
                tid,
                part,
                retention_ms=topic.spec.retention_ms,
                retention_bytes=topic.spec.retention_bytes,
                compacted=topic.spec.compacted,
                now_ms=now,
                budget=n + STEP_ROWS,
            )
    return results


def _next_offset(conn: sqlite3.Connection, tid: int, part: int) -> int:
    row = conn.execute(
        "SELECT next_offset FROM partitions WHERE tid = ? AND part = ?", (tid, part)
    ).fetchone()
    if row is None:  # the partition rows are written with the topic: the file was altered
        raise sqlite3.DatabaseError(f"malformed log: partition {part} of topic id {tid} missing")
    offset: int = row[0]
    return offset


def _update_latest(
    conn: sqlite3.Connection, now: int, latest: dict[tuple[int, int], dict[bytes, tuple[int, bool]]]
) -> dict[tuple[int, int], int]:
    """Point each key of compacted partitions at its newest record; new keys per partition."""
    new_keys: dict[tuple[int, int], int] = {}
    for (tid, part), newest in latest.items():
        items = [(tid, part, key, off, now, tomb) for key, (off, tomb) in newest.items()]
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO latest (tid, part, key, off, ts, tomb) VALUES (?,?,?,?,?,?)",
            items,
        )
        new_keys[(tid, part)] = conn.total_changes - before
        conn.executemany(
            "UPDATE latest SET off = ?, ts = ?, tomb = ? WHERE tid = ? AND part = ? AND key = ?",
            [(off, ts, tomb, t, p, key) for t, p, key, off, ts, tomb in items],
        )
    return new_keys


def create_topic(conn: sqlite3.Connection, txn: Txn, spec: TopicSpec) -> TopicSpec:
    """Create the topic, or return the existing one if partitions and compaction agree."""
    existing = _topic(conn, spec.name)
    if existing is not None:
        old = existing.spec
        if old.partitions != spec.partitions:
            raise TopicConflictError(
                spec.name, f"it has {old.partitions} partitions, not {spec.partitions}"
            )
        if old.compacted != spec.compacted:
            raise TopicConflictError(spec.name, f"compacted={old.compacted}, not {spec.compacted}")
        return old
    tid = conn.execute(
        "INSERT INTO topics (name, partitions, compacted, retention_ms, retention_bytes, "
        "delete_retention_ms, config) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            spec.name,
            spec.partitions,
            int(spec.compacted),
            spec.retention_ms,
            spec.retention_bytes,
            spec.delete_retention_ms,
            json.dumps(dict(spec.config)).decode(),
        ),
    ).lastrowid
    conn.executemany(
        "INSERT INTO partitions (tid, part, next_offset, count, bytes) VALUES (?, ?, 0, 0, 0)",
        [(tid, p) for p in range(spec.partitions)],
    )
    return spec


def delete_topic(conn: sqlite3.Connection, txn: Txn, name: str) -> None:
    """Remove the topic at once; its records are purged in the background."""
    topic = _topic(conn, name)
    if topic is None:
        raise UnknownTopicError(name)
    conn.execute("DELETE FROM topics WHERE id = ?", (topic.tid,))
    conn.execute("DELETE FROM partitions WHERE tid = ?", (topic.tid,))
    conn.execute("DELETE FROM offsets WHERE topic = ?", (name,))
    conn.execute("INSERT INTO dropped (tid) VALUES (?)", (topic.tid,))
    for part in range(topic.spec.partitions):
        txn.touched[TopicPartition(name, part)] = 0  # wakes readers, who find it gone


# ---------------------------------------------------------------- reads (reader thread)
def describe_topic(conn: sqlite3.Connection, name: str) -> TopicSpec:
    topic = _topic(conn, name)
    if topic is None:
        raise UnknownTopicError(name)
    return topic.spec


def list_topics(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM topics ORDER BY name")]


def end_offsets(conn: sqlite3.Connection, name: str) -> dict[int, int]:
    topic = _topic(conn, name)
    if topic is None:
        raise UnknownTopicError(name)
    return dict(
        conn.execute(
            "SELECT part, next_offset FROM partitions WHERE tid = ? ORDER BY part", (topic.tid,)
        ).fetchall()
    )


def beginning_offsets(conn: sqlite3.Connection, name: str) -> dict[int, int]:
    topic = _topic(conn, name)
    if topic is None:
        raise UnknownTopicError(name)
    return dict(
        conn.execute(
            "SELECT p.part, coalesce((SELECT min(r.off) FROM records r "
            "WHERE r.tid = p.tid AND r.part = p.part), p.next_offset) "
            "FROM partitions p WHERE p.tid = ? ORDER BY p.part",
            (topic.tid,),
        ).fetchall()
    )


_FETCH = (
    "SELECT off, ts, key, value, headers FROM records "
    "WHERE tid = (SELECT id FROM topics WHERE name = ?) AND part = ? AND off >= ? "
    "ORDER BY off LIMIT ?"
)


def fetch(
    conn: sqlite3.Connection, plan: Iterable[tuple[TopicPartition, int]], limit: int
) -> list[list[Record]]:
    """Up to ``limit`` records, read from each (partition, next offset) in ``plan`` in turn."""
    chunks: list[list[Record]] = []
    for (topic, part), start in plan:
        rows = conn.execute(_FETCH, (topic, part, start, limit)).fetchall()
        if not rows:
            continue
        chunks.append(
            [
                Record(topic, part, off, ts, key, value, decode_headers(h) if h else ())
                for off, ts, key, value, h in rows
            ]
        )
        limit -= len(rows)
        if limit <= 0:
            break
    return chunks


def start_offsets(
    conn: sqlite3.Connection,
    group: str | None,
    wanted: Iterable[tuple[TopicPartition, Literal["earliest", "latest"] | int]],
) -> dict[TopicPartition, int]:
    """Where each partition starts: the group's committed offset, else its start position."""
    out: dict[TopicPartition, int] = {}
    for tp, start in wanted:
        if group is not None:
            done = committed(conn, group, tp)
            if done is not None:
                out[tp] = done
                continue
        if isinstance(start, int):
            out[tp] = start
            continue
        topic = _topic(conn, tp.topic)
        if topic is None:
            raise UnknownTopicError(tp.topic)
        if start == "latest":
            out[tp] = _next_offset(conn, topic.tid, tp.partition)
        else:
            first = conn.execute(
                "SELECT coalesce((SELECT min(off) FROM records WHERE tid = ?1 AND part = ?2), "
                "(SELECT next_offset FROM partitions WHERE tid = ?1 AND part = ?2))",
                (topic.tid, tp.partition),
            ).fetchone()[0]
            out[tp] = first
    return out


def committed(conn: sqlite3.Connection, group: str, tp: TopicPartition) -> int | None:
    row = conn.execute(
        "SELECT next_offset FROM offsets WHERE grp = ? AND topic = ? AND part = ?",
        (group, tp.topic, tp.partition),
    ).fetchone()
    return None if row is None else int(row[0])
