"""State stores: where a table keeps each partition's state on a worker.

``memory`` (the default) keeps dicts and restores a partition by replaying its whole changelog
(compacted: about one record per key). ``sqlite`` keeps the state in a local file per table,
``<state_dir>/<app>/<table>.db``: reads go through a bounded cache, so state may be larger than
memory, and the file records up to which changelog position it holds, so a restart replays only
the changelog's tail. The file is a cache of the log: deleting it loses nothing.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, Generic, Literal, TypeAlias, TypeVar

from brokers import json

__all__ = ("PartitionState", "SqliteStore", "StoreKind")

K = TypeVar("K")
V = TypeVar("V")

StoreKind: TypeAlias = Literal["memory", "sqlite"]

_MISSING: Any = object()
_CACHE = 10_000  # entries kept in memory per partition map


class PartitionState(Generic[K, V]):
    """One partition of a table: values, per-key source and upstream positions, stream time."""

    def __init__(
        self,
        data: MutableMapping[K, V],
        positions: MutableMapping[K, int],
        origins: MutableMapping[K, dict[int, int]],
        changelog_next: int = 0,
        stream_time: int | None = None,
    ) -> None:
        self.data = data
        self.positions = positions
        self.origins = origins
        self.changelog_next = changelog_next  # the changelog offset after what this state holds
        self.stream_time = stream_time  # windowed tables: the highest event time folded


class _SqliteMap(MutableMapping[Any, Any]):
    """One partition's column of a table in SQLite, with an LRU read cache and write-back."""

    def __init__(
        self,
        db: sqlite3.Connection,
        table: str,
        partition: int,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
        encode_key: Callable[[Any], bytes],
        decode_key: Callable[[bytes], Any],
    ) -> None:
        self._db, self._table, self._partition = db, table, partition
        self._encode, self._decode = encode, decode
        self._ekey, self._dkey = encode_key, decode_key
        self._cache: OrderedDict[Any, Any] = OrderedDict()
        self._dirty: dict[Any, Any] = {}  # key -> value, or _MISSING for a delete

    def _load(self, key: Any) -> Any:
        if key in self._dirty:
            return self._dirty[key]
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        row = self._db.execute(
            f"SELECT v FROM {self._table} WHERE p = ? AND k = ?",  # noqa: S608 - fixed names
            (self._partition, self._ekey(key)),
        ).fetchone()
        value = _MISSING if row is None else self._decode(row[0])
        self._cache[key] = value
        if len(self._cache) > _CACHE:
            self._cache.popitem(last=False)
        return value

    def __getitem__(self, key: Any) -> Any:
        value = self._load(key)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self._dirty[key] = value
        self._cache.pop(key, None)

    def __delitem__(self, key: Any) -> None:
        if self._load(key) is _MISSING:
            raise KeyError(key)
        self._dirty[key] = _MISSING
        self._cache.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return self._load(key) is not _MISSING

    def __iter__(self) -> Iterator[Any]:
        self.write()
        rows = self._db.execute(
            f"SELECT k FROM {self._table} WHERE p = ?",  # noqa: S608 - fixed names
            (self._partition,),
        )
        for (raw,) in rows.fetchall():
            yield self._dkey(raw)

    def __len__(self) -> int:
        self.write()
        (count,) = self._db.execute(
            f"SELECT count(*) FROM {self._table} WHERE p = ?",  # noqa: S608 - fixed names
            (self._partition,),
        ).fetchone()
        return int(count)

    def write(self) -> None:
        """Move buffered changes into the (uncommitted) transaction."""
        if not self._dirty:
            return
        puts = [
            (self._partition, self._ekey(k), self._encode(v))
            for k, v in self._dirty.items()
            if v is not _MISSING
        ]
        deletes = [
            (self._partition, self._ekey(k)) for k, v in self._dirty.items() if v is _MISSING
        ]
        if puts:
            self._db.executemany(
                f"INSERT OR REPLACE INTO {self._table} (p, k, v) VALUES (?, ?, ?)",  # noqa: S608
                puts,
            )
        if deletes:
            self._db.executemany(
                f"DELETE FROM {self._table} WHERE p = ? AND k = ?",  # noqa: S608 - fixed names
                deletes,
            )
        for key, value in self._dirty.items():
            self._cache[key] = value
        while len(self._cache) > _CACHE:
            self._cache.popitem(last=False)
        self._dirty.clear()


class SqliteStore:
    """A table's state on local disk, one file per table, committed at every flush."""

    def __init__(
        self,
        path: Path,
        *,
        encode_key: Callable[[Any], bytes],
        decode_key: Callable[[bytes], Any],
        encode_value: Callable[[Any], bytes],
        decode_value: Callable[[bytes], Any],
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a cache of the log: the log is durable
        for name in ("data", "positions", "origins"):
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {name} (p INTEGER, k BLOB, v BLOB, PRIMARY KEY (p, k))"
            )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (p INTEGER PRIMARY KEY, changelog_next INTEGER)"
        )
        self._db.execute("BEGIN")
        self._codecs = (encode_key, decode_key, encode_value, decode_value)
        self._maps: dict[int, list[_SqliteMap]] = {}

    def open(self, partition: int) -> PartitionState[Any, Any]:
        """The stored state of a partition (empty if none), and where its changelog resumes."""
        ekey, dkey, evalue, dvalue = self._codecs
        maps = [
            _SqliteMap(self._db, "data", partition, evalue, dvalue, ekey, dkey),
            _SqliteMap(self._db, "positions", partition, _int_bytes, _bytes_int, ekey, dkey),
            _SqliteMap(self._db, "origins", partition, _origins_bytes, _bytes_origins, ekey, dkey),
        ]
        self._maps[partition] = maps
        row = self._db.execute(
            "SELECT changelog_next FROM meta WHERE p = ?", (partition,)
        ).fetchone()
        return PartitionState(maps[0], maps[1], maps[2], 0 if row is None else int(row[0]))

    def release(self, partition: int, *, unflushed: bool) -> None:
        """A partition is no longer this worker's: stop writing it.

        With ``unflushed`` changes (not in the changelog yet: their events are not committed
        and come again), the partition is forgotten, since a commit of the others would make
        those changes durable here, ahead of the changelog; it is read again from the
        changelog when it comes back. Otherwise the file keeps it, current up to its position.
        """
        self._maps.pop(partition, None)  # its buffered writes go nowhere
        if unflushed:
            self.reset(partition)  # also what an iteration already moved into the transaction

    def reset(self, partition: int) -> None:
        """Forget a partition (its changelog no longer matches: replay it all)."""
        for name in ("data", "positions", "origins", "meta"):
            self._db.execute(f"DELETE FROM {name} WHERE p = ?", (partition,))  # noqa: S608

    def commit(self, partition_next: dict[int, int]) -> None:
        """Make every partition's changes durable, with the changelog offsets they reach."""
        for maps in self._maps.values():
            for m in maps:
                m.write()
        self._db.executemany(
            "INSERT OR REPLACE INTO meta (p, changelog_next) VALUES (?, ?)",
            list(partition_next.items()),
        )
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")

    def close(self) -> None:
        self._db.execute("ROLLBACK")
        self._db.close()


def _int_bytes(value: int) -> bytes:
    return str(value).encode()


def _bytes_int(data: bytes) -> int:
    return int(data)


def _origins_bytes(value: dict[int, int]) -> bytes:
    return json.dumps(value)


def _bytes_origins(data: bytes) -> dict[int, int]:
    return {int(p): int(o) for p, o in json.loads(data).items()}
