"""The file format of ``sqlite://`` logs: tables, format versions, migrations, error mapping.

A log file is a SQLite database in WAL mode whose ``application_id`` is :data:`APPLICATION_ID`
and whose ``user_version`` is its format version. Files are created by running the migrations
from version 0 (an empty database) in order, so creating a file and upgrading an old one are
the same code path. :data:`MIGRATIONS` maps each version N to the function that moves a file
from N to N + 1, run in one write transaction.

Format history:

1. The log: topics, per-partition counters, records clustered on (topic, partition, offset),
   dropped topics awaiting purge, consumer groups (generation, members with leases and
   assignments, committed offsets).
2. Compaction bookkeeping: the ``latest`` table (the newest offset of each key of compacted
   topics, with a partial index of tombstones), per-partition key counts and the cleaner's
   progress; backfilled from the records of compacted topics.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

from brokers._errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    LogCorruptedError,
    LogFileAccessError,
    LogFileError,
    LogVersionError,
    NotALogError,
)
from brokers._settings import SqliteSettings
from brokers._types import Headers

__all__ = (
    "APPLICATION_ID",
    "FORMAT_VERSION",
    "MIGRATIONS",
    "check_format",
    "connect_file",
    "decode_headers",
    "encode_headers",
    "migrate",
    "prepare_file",
    "translate_error",
)

APPLICATION_ID = 0x6E706C78
"""``PRAGMA application_id`` of a neuroplex log: ``b"nplx"``."""

_SCHEMA_V1 = """
CREATE TABLE topics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: records of a dropped id are purged
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    compacted INTEGER NOT NULL,
    retention_ms INTEGER,
    retention_bytes INTEGER,
    delete_retention_ms INTEGER NOT NULL,
    config TEXT NOT NULL                     -- JSON object of str -> str
);
CREATE TABLE partitions (
    tid INTEGER NOT NULL,
    part INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,            -- the log end; offsets are assigned from it
    count INTEGER NOT NULL,                  -- records held
    bytes INTEGER NOT NULL,                  -- their size (key + value + headers)
    PRIMARY KEY (tid, part)
) WITHOUT ROWID;
CREATE TABLE records (
    tid INTEGER NOT NULL,
    part INTEGER NOT NULL,
    off INTEGER NOT NULL,
    ts INTEGER NOT NULL,                     -- append time, ms since the Unix epoch
    key BLOB,
    value BLOB,                              -- NULL: a tombstone
    headers BLOB,                            -- NULL when there are none
    size INTEGER NOT NULL,
    PRIMARY KEY (tid, part, off)
) WITHOUT ROWID;
CREATE TABLE dropped (tid INTEGER PRIMARY KEY);
CREATE TABLE groups (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    topics TEXT NOT NULL,                    -- JSON list of topic names
    lease_until INTEGER NOT NULL,            -- wall-clock ms; past it the member is expired
    assignment TEXT NOT NULL,                -- JSON list of [topic, partition]
    PRIMARY KEY (grp, member)
) WITHOUT ROWID;
CREATE TABLE offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, part)
) WITHOUT ROWID;
"""

_SCHEMA_V2 = """
CREATE TABLE latest (
    tid INTEGER NOT NULL,
    part INTEGER NOT NULL,
    key BLOB NOT NULL,
    off INTEGER NOT NULL,                    -- the newest record of this key
    ts INTEGER NOT NULL,
    tomb INTEGER NOT NULL,                   -- that record is a tombstone
    PRIMARY KEY (tid, part, key)
) WITHOUT ROWID;
CREATE INDEX latest_tombstones ON latest (tid, part, ts) WHERE tomb;
ALTER TABLE partitions ADD COLUMN keys INTEGER NOT NULL DEFAULT 0;
ALTER TABLE partitions ADD COLUMN clean_from INTEGER;   -- the cleaner's cursor, NULL when idle
ALTER TABLE partitions ADD COLUMN clean_to INTEGER;     -- the log end when the pass started
ALTER TABLE partitions ADD COLUMN cleaned_at INTEGER NOT NULL DEFAULT 0;
"""


def _create_v1(conn: sqlite3.Connection) -> None:
    for statement in _statements(_SCHEMA_V1):
        conn.execute(statement)


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    for statement in _statements(_SCHEMA_V2):
        conn.execute(statement)
    # SQLite takes the bare columns of a max() aggregate from the row holding the maximum.
    conn.execute(
        "INSERT INTO latest (tid, part, key, off, ts, tomb) "
        "SELECT r.tid, r.part, r.key, max(r.off), r.ts, r.value IS NULL FROM records r "
        "JOIN topics t ON t.id = r.tid WHERE t.compacted AND r.key IS NOT NULL "
        "GROUP BY r.tid, r.part, r.key"
    )
    conn.execute(
        "UPDATE partitions SET keys = (SELECT count(*) FROM latest l "
        "WHERE l.tid = partitions.tid AND l.part = partitions.part)"
    )


def _statements(script: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _create_v1, 1: _v1_to_v2}
"""Version N -> the function that moves a file from format N to N + 1."""

FORMAT_VERSION = max(MIGRATIONS) + 1
"""The format version this code writes (and the newest it reads)."""

_MIN_SQLITE = (3, 35, 0)

_TABLES = frozenset(
    {"topics", "partitions", "records", "dropped", "groups", "members", "offsets", "latest"}
)


def migrate(conn: sqlite3.Connection, path: str, target: int = FORMAT_VERSION) -> int:
    """Bring the file to format ``target`` in one write transaction; returns the old version.

    Safe against other processes opening the file at the same time: the version is read again
    once the write lock is held, and whoever gets the lock first does the work.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _version(conn, path)
        for step in range(version, target):
            MIGRATIONS[step](conn)
        if version < target:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version


def _version(conn: sqlite3.Connection, path: str) -> int:
    """The file's format version (0: empty), or an error if it is not a log we can read."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == 0 and version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if tables:
            raise NotALogError(path, "it is a SQLite database of another application")
        return 0
    if app_id != APPLICATION_ID:
        raise NotALogError(path, f"it is a SQLite database of another application (id {app_id})")
    if version > FORMAT_VERSION:
        raise LogVersionError(path, version, FORMAT_VERSION)
    return version


def check_format(conn: sqlite3.Connection, path: str) -> None:
    """Inside a write transaction: refuse to write a file another process has since upgraded.

    A process reads the format version when it opens the file; a newer neuroplex in another
    process may migrate the file while this one has it open, and writing the old format into
    it then would break the new format's invariants (compaction bookkeeping, say). One pragma
    per transaction (the header page is in the cache) keeps every write in the right format.

    Raises:
        LogVersionError: the file's format is no longer the one this code writes.
    """
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != FORMAT_VERSION:
        raise LogVersionError(path, version, FORMAT_VERSION)


def connect_file(path: str, settings: SqliteSettings) -> sqlite3.Connection:
    """A connection to a prepared log file, in autocommit mode (transactions are explicit)."""
    try:
        conn = sqlite3.connect(
            path,
            timeout=settings.request_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise translate_error(exc, path) from exc
    try:
        conn.execute(f"PRAGMA synchronous = {settings.synchronous.upper()}")
        # checkpoints run in the broker's own thread, after the acknowledgements
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.execute("PRAGMA cache_size = -16384")
    except sqlite3.Error as exc:
        conn.close()
        raise translate_error(exc, path) from exc
    return conn


def prepare_file(path: str, settings: SqliteSettings) -> None:
    """Check (create, upgrade) the log file at ``path`` so that it can be opened.

    Raises:
        LogFileAccessError: the folder is missing or the file cannot be written.
        NotALogError: the file is not a neuroplex log.
        LogVersionError: the file was written by a newer neuroplex.
        LogCorruptedError: the file is damaged.
    """
    if sqlite3.sqlite_version_info < _MIN_SQLITE:
        raise ConfigurationError(
            f"sqlite:// needs SQLite {'.'.join(map(str, _MIN_SQLITE))} or newer (for RETURNING); "
            f"this Python's sqlite3 module uses {sqlite3.sqlite_version}"
        )
    folder = Path(path).parent
    if not folder.is_dir():
        raise LogFileAccessError(path, f"the folder {str(folder)!r} does not exist")
    if Path(path).is_dir():
        raise LogFileAccessError(path, "it is a folder, not a file")
    if Path(path).exists() and not os.access(path, os.R_OK | os.W_OK):
        raise LogFileAccessError(path, "this process may not read and write it")
    conn = connect_file(path, settings)
    try:
        _version(conn, path)  # before anything is written: never touch a foreign file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise LogFileAccessError(path, f"SQLite could not switch it to WAL mode ({mode})")
        migrate(conn, path)
        missing = _TABLES - {
            row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")
        }
        if missing:
            raise LogCorruptedError(path, f"tables {sorted(missing)} are missing")
        if settings.integrity_check:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise LogCorruptedError(path, "; ".join(problems))
    except sqlite3.Error as exc:
        raise translate_error(exc, path) from exc
    finally:
        conn.close()


_CORRUPT, _NOTADB = sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB
_ACCESS = frozenset(
    {
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_AUTH,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
    }
)
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def translate_error(exc: sqlite3.Error, path: str) -> BrokerError:
    """The neuroplex error for a sqlite3 error raised while using the log at ``path``."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    reason = str(exc)
    if primary == _NOTADB:
        return NotALogError(path, f"it is not a SQLite database (SQLite says: {reason})")
    if primary == _CORRUPT or "malformed" in reason:
        return LogCorruptedError(path, f"SQLite says: {reason}")
    if primary in _ACCESS:
        return LogFileAccessError(path, f"SQLite says: {reason}")
    if primary in _BUSY:
        return BrokerUnavailableError(
            f"sqlite://{path}", f"the file stayed locked by another process ({reason})"
        )
    return LogFileError(path, f"SQLite says: {reason}", "Check the file and the disk.")


_HEADER = struct.Struct(">HI")


def encode_headers(headers: Headers) -> bytes | None:
    """Headers as stored: per pair, name length (u16), value length (u32), name, value."""
    if not headers:
        return None
    parts: list[bytes] = []
    for name, value in headers:
        raw = name.encode()
        parts.append(_HEADER.pack(len(raw), len(value)))
        parts.append(raw)
        parts.append(value)
    return b"".join(parts)


def decode_headers(blob: bytes) -> Headers:
    """The inverse of :func:`encode_headers`."""
    out: list[tuple[str, bytes]] = []
    pos, end = 0, len(blob)
    while pos < end:
        name_len, value_len = _HEADER.unpack_from(blob, pos)
        pos += _HEADER.size
        name = blob[pos : pos + name_len].decode()
        pos += name_len
        out.append((name, blob[pos : pos + value_len]))
        pos += value_len
    return tuple(out)
