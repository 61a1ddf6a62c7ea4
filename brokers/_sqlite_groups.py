"""Consumer groups of ``sqlite://`` logs, kept in the log file itself.

Every process that opens the file sees the same tables, in the same transactions:

- ``members``: one row per member, with the topics it reads, a lease (wall-clock ms; processes
  on one machine share the clock) renewed by each heartbeat, and its current assignment.
- ``groups``: the generation, bumped in the same transaction as every membership change.
- ``offsets``: committed next-offsets.

A member whose lease passed is expired by the next heartbeat of any member of its group, which
rebalances the group: the generation goes up and :func:`brokers._groups.assign_partitions`
deals the partitions again over the members left (deterministic, so no leader is needed).
A commit checks, in its transaction, that the group is still at the member's generation and
that the member owns every partition it commits: a member that slept through its lease is
fenced with :class:`StaleMemberError`.

Each function runs inside a write transaction opened by the writer thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping

from brokers import json
from brokers._errors import StaleMemberError
from brokers._groups import assign_partitions
from brokers._sqlite_ops import Txn
from brokers._types import TopicPartition

__all__ = ("commit", "heartbeat", "join", "leave")

Assignment = frozenset[TopicPartition]


def join(
    conn: sqlite3.Connection,
    txn: Txn,
    *,
    group: str,
    member: str,
    topics: Collection[str],
    session_ms: int,
) -> tuple[int, Assignment]:
    """Add ``member`` to ``group`` and rebalance; its generation and assignment."""
    _expire(conn, txn, group, keep=member)
    conn.execute("INSERT OR IGNORE INTO groups (name, generation) VALUES (?, 0)", (group,))
    conn.execute(
        "INSERT OR REPLACE INTO members (grp, member, topics, lease_until, assignment) "
        "VALUES (?, ?, ?, ?, '[]')",
        (group, member, _text(sorted(topics)), txn.now_ms + session_ms),
    )
    generation, assignment = _rebalance(conn, txn, group)
    return generation, assignment.get(member, frozenset())


def heartbeat(
    conn: sqlite3.Connection,
    txn: Txn,
    *,
    group: str,
    member: str,
    topics: Collection[str],
    session_ms: int,
) -> tuple[int, Assignment]:
    """Renew ``member``'s lease (rejoin if it was expired) and expire silent members.

    Returns the group's generation and this member's assignment in it.
    """
    renewed = conn.execute(
        "UPDATE members SET lease_until = ? WHERE grp = ? AND member = ?",
        (txn.now_ms + session_ms, group, member),
    ).rowcount
    if not renewed:
        return join(conn, txn, group=group, member=member, topics=topics, session_ms=session_ms)
    if _expire(conn, txn, group, keep=member):
        generation, assignment = _rebalance(conn, txn, group)
        return generation, assignment.get(member, frozenset())
    generation = conn.execute("SELECT generation FROM groups WHERE name = ?", (group,)).fetchone()
    mine = conn.execute(
        "SELECT assignment FROM members WHERE grp = ? AND member = ?", (group, member)
    ).fetchone()
    return generation[0], _decode(mine[0])


def leave(conn: sqlite3.Connection, txn: Txn, *, group: str, member: str) -> None:
    """Take ``member`` out of ``group``; the others get its partitions."""
    gone = conn.execute(
        "DELETE FROM members WHERE grp = ? AND member = ?", (group, member)
    ).rowcount
    if gone:
        _rebalance(conn, txn, group)


def commit(
    conn: sqlite3.Connection,
    txn: Txn,
    *,
    group: str,
    member: str,
    generation: int,
    offsets: Mapping[TopicPartition, int],
) -> None:
    """Store committed next-offsets, if ``member`` still owns them in ``generation``.

    Raises:
        StaleMemberError: the group moved to another generation, the member was expired, or
            it commits partitions it does not own.
    """
    row = conn.execute("SELECT generation FROM groups WHERE name = ?", (group,)).fetchone()
    if row is None or row[0] != generation:
        raise StaleMemberError(
            group, "the group rebalanced since this member's assignment (a new generation)"
        )
    mine = conn.execute(
        "SELECT assignment FROM members WHERE grp = ? AND member = ?", (group, member)
    ).fetchone()
    if mine is None:
        raise StaleMemberError(group, "this member's lease expired and it left the group")
    foreign = sorted(set(offsets) - _decode(mine[0]))
    if foreign:
        raise StaleMemberError(group, f"partitions {foreign} are not assigned to this member")
    conn.executemany(
        "INSERT INTO offsets (grp, topic, part, next_offset) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (grp, topic, part) DO UPDATE SET next_offset = excluded.next_offset",
        [(group, tp.topic, tp.partition, offset) for tp, offset in offsets.items()],
    )


def _expire(conn: sqlite3.Connection, txn: Txn, group: str, *, keep: str) -> int:
    """Remove the members of ``group`` whose lease passed (never ``keep``); how many."""
    count: int = conn.execute(
        "DELETE FROM members WHERE grp = ? AND lease_until < ? AND member != ?",
        (group, txn.now_ms, keep),
    ).rowcount
    return count


def _rebalance(conn: sqlite3.Connection, txn: Txn, group: str) -> tuple[int, dict[str, Assignment]]:
    """A new generation for ``group`` with the partitions dealt over its current members."""
    members = {
        member: frozenset(json.loads(topics))
        for member, topics in conn.execute(
            "SELECT member, topics FROM members WHERE grp = ?", (group,)
        )
    }
    names = sorted(set().union(*members.values())) if members else []
    partitions = [
        TopicPartition(name, p)
        for name, count in conn.execute(
            f"SELECT name, partitions FROM topics WHERE name IN ({','.join('?' * len(names))})",  # noqa: S608  # placeholders only
            names,
        )
        for p in range(count)
    ]
    assignment = assign_partitions(members, partitions)
    conn.execute("UPDATE groups SET generation = generation + 1 WHERE name = ?", (group,))
    generation: int = conn.execute(
        "SELECT generation FROM groups WHERE name = ?", (group,)
    ).fetchone()[0]
    conn.executemany(
        "UPDATE members SET assignment = ? WHERE grp = ? AND member = ?",
        [(_encode(tps), group, member) for member, tps in assignment.items()],
    )
    txn.groups[group] = (generation, assignment)
    return generation, assignment


def _encode(tps: Assignment) -> str:
    return _text([list(tp) for tp in sorted(tps)])


def _text(value: object) -> str:
    return json.dumps(value).decode()


def _decode(raw: str) -> Assignment:
    return frozenset(TopicPartition(topic, part) for topic, part in json.loads(raw))
