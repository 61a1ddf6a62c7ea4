"""``sqlite://`` specifics: durability under SIGKILL, several processes on one file, groups
across processes, bad files, format migrations, retention and compaction.

Other processes are real (``tests/brokers/_sqlite_child.py`` run with ``sys.executable``).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

import brokers
from brokers import (
    Broker,
    ProducerRecord,
    Record,
    SqliteSettings,
    TopicSpec,
    UnsupportedURLError,
)
from brokers import _sqlite_ops as ops
from brokers._errors import (
    LogCorruptedError,
    LogFileAccessError,
    LogFileError,
    LogVersionError,
    NotALogError,
)
from brokers._sqlite import SqliteBroker
from brokers._sqlite_maintenance import clean
from brokers._sqlite_schema import (
    APPLICATION_ID,
    FORMAT_VERSION,
    MIGRATIONS,
    connect_file,
    migrate,
    prepare_file,
)
from tests.brokers._sqlite_child import COMPACTED_KEYS
from tests.brokers.conftest import consume, read_line, spawn, stop

FAST = SqliteSettings(maintenance_interval=0.05, heartbeat_interval=0.2)


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


@contextmanager
def _db(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection for looking inside the file (closed after)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await spawn("tests.brokers._sqlite_child", *args, stderr=True)


async def _eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Wait for the log's background upkeep, which has no event to wait on, to get somewhere."""
    async with asyncio.timeout(timeout):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.05)


async def _read_all(broker: Broker, topic: str) -> list[Record]:
    """Every record the topic holds now, in partition then offset order.

    A fetch reads the file directly (nothing is buffered), so an empty one means the end.
    """
    records: list[Record] = []
    async with broker.subscribe(topic) as sub, asyncio.timeout(30):
        while batch := await sub.getmany(timeout=0):
            records.extend(batch)
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def _holds(broker: Broker, topic: str, count: int) -> bool:
    """Whether ``topic`` holds ``count`` records (or fewer)."""
    return len(await _read_all(broker, topic)) <= count


# ---------------------------------------------------------------- durability


@pytest.mark.chaos
async def test_sigkilled_producers_lose_no_acknowledged_batch(tmp_path: Path) -> None:
    """Producer processes killed at random moments, while compaction runs beside them: every
    acked batch is there, whole; no batch is there in part; offsets stay contiguous; the
    compacted topic loses overwritten records but no key's last acknowledged write."""
    url = _url(tmp_path / "log.db")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    acked: dict[str, int] = {}
    key_acked: dict[str, int] = {}  # "<pid>:<task>" -> the last acked seq of its keys
    key_writes: dict[str, int] = defaultdict(int)  # "<pid>:<task>" -> acked batches of keys
    # this broker's upkeep compacts (every 50 ms) while the children write and die
    async with brokers.connect(url, settings=FAST) as broker:
        await broker.create_topic(TopicSpec("chaos", partitions=3))
        await broker.create_topic(TopicSpec("chaos.compacted", partitions=2, compacted=True))
        for _ in range(5):
            procs = [await _spawn("produce", url, "chaos", "3") for _ in range(2)]

            async def collect(proc: asyncio.subprocess.Process) -> None:
                assert proc.stdout is not None
                async for raw in proc.stdout:
                    kind, name, n = raw.decode().split()
                    if kind == "ack":
                        acked[name] = int(n)
                    else:
                        key_acked[name] = int(n)
                        key_writes[name] += 1

            async def kill_later(proc: asyncio.subprocess.Process) -> None:
                if rng.random() < 0.8:  # mostly while producing; sometimes while starting
                    await asyncio.sleep(0.6)
                await asyncio.sleep(rng.uniform(0, 0.5))
                proc.send_signal(signal.SIGKILL)

            try:
                async with asyncio.timeout(60):
                    await asyncio.gather(
                        *(collect(p) for p in procs), *(kill_later(p) for p in procs)
                    )
            finally:
                for proc in procs:
                    await stop(proc)
            for proc in procs:  # killed by us, not dead of their own
                assert proc.stderr is not None
                assert b"Traceback" not in await proc.stderr.read()

        records = await _read_all(broker, "chaos")
        ends = await broker.end_offsets("chaos")
        written = sum(key_writes.values()) * COMPACTED_KEYS  # acknowledged, at least
        # compaction (a pass starts once half a partition is dead) removed overwritten records
        await _eventually(lambda: _holds(broker, "chaos.compacted", written - 1))
        kept = await _read_all(broker, "chaos.compacted")
    latest: dict[bytes, int] = {}
    for record in kept:  # the fold a table would make of what compaction left
        assert record.key is not None
        assert record.value is not None
        latest[record.key] = int(record.value)
    for writer, last in key_acked.items():
        for k in range(COMPACTED_KEYS):
            assert latest[f"{writer}:{k}".encode()] >= last, f"{writer}:{k} lost (seed {seed})"
    batches: dict[str, dict[int, int]] = defaultdict(dict)
    for record in records:
        assert record.value is not None
        pid, task, seq, i, n = record.value.decode().split(":")
        batch = batches[f"{pid}:{task}:{seq}"]
        assert int(i) not in batch, f"record {record.value!r} appears twice (seed {seed})"
        batch[int(i)] = int(n)
    partial = {
        name: len(got) for name, got in batches.items() if len(got) != next(iter(got.values()))
    }
    assert not partial, f"batches stored in part: {partial} (seed {seed})"
    lost = {name: n for name, n in acked.items() if len(batches.get(name, {})) != n}
    assert not lost, f"acknowledged batches lost: {lost} (seed {seed})"
    assert len(acked) > 20, f"too few acks to prove anything ({len(acked)}, seed {seed})"
    for p, end in ends.items():
        offsets = [r.offset for r in records if r.partition == p]
        assert offsets == list(range(end)), f"partition {p} offsets are not contiguous"
    with _db(tmp_path / "log.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


async def test_processes_create_one_fresh_file_at_once(tmp_path: Path) -> None:
    url = _url(tmp_path / "new.db")
    procs = [await _spawn("open", url, "shared") for _ in range(4)]
    try:
        lines = [await read_line(proc) for proc in procs]
    finally:
        for proc in procs:
            await stop(proc)
    assert all(line.startswith("ok ") for line in lines), lines
    async with brokers.connect(url) as broker:
        assert sum((await broker.end_offsets("shared")).values()) == 4


# ---------------------------------------------------------------- several processes


async def test_records_cross_processes_both_ways(tmp_path: Path) -> None:
    """A child echoes what we produce: each record reaches the other process and comes back
    (the latency is printed here; docs/brokers-sqlite.md has the figures)."""
    url = _url(tmp_path / "log.db")
    async with brokers.connect(url) as broker:
        await broker.create_topic(TopicSpec("ping"))
        await broker.create_topic(TopicSpec("pong"))
        child = await _spawn("echo", url, "ping", "pong")
        try:
            assert await read_line(child) == "ready"
            round_trips: list[float] = []
            async with broker.subscribe("pong", start="latest") as sub:
                await sub.getmany(timeout=0)
                for _ in range(20):
                    sent = time.time_ns()
                    await broker.produce("ping", str(sent).encode())
                    [echoed] = await consume(sub, 1, timeout=10)
                    round_trips.append((time.time_ns() - sent) / 1e6)
                    assert echoed.value == str(sent).encode()
            lags = [float((await read_line(child)).split()[1]) for _ in range(20)]
        finally:
            await stop(child)
    lags.sort()
    round_trips.sort()
    print(f"one way p50 {lags[10]:.1f} ms, max {lags[-1]:.1f} ms")
    print(f"round trip p50 {round_trips[10]:.1f} ms, max {round_trips[-1]:.1f} ms")


async def test_concurrent_producers_share_transactions(tmp_path: Path) -> None:
    """Group commit: produce calls waiting at once are committed together, each acknowledged
    only once its transaction is (the kill test above proves the second half)."""
    async with brokers.connect(_url(tmp_path / "log.db")) as broker:
        await broker.create_topic(TopicSpec("many", partitions=4))
        assert isinstance(broker, SqliteBroker)
        before = broker.transactions
        positions = await asyncio.gather(
            *(broker.produce("many", b"%d" % i, key=b"k%d" % i) for i in range(500))
        )
        used = broker.transactions - before
        assert len({(p.partition, p.offset) for p in positions}) == 500
        assert 1 <= used <= 50, f"500 concurrent produce calls took {used} transactions"


async def test_a_file_upgraded_by_another_process_is_not_written_in_the_old_format(
    tmp_path: Path,
) -> None:
    """A newer neuroplex elsewhere migrates the file while this process has it open: this
    process's next write is refused with a typed error instead of writing the old format."""
    path = tmp_path / "log.db"
    async with brokers.connect(_url(path)) as broker:
        await broker.create_topic(TopicSpec("t"))
        await broker.produce("t", b"before")
        with _db(path) as conn:
            conn.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
        with pytest.raises(LogVersionError, match="Upgrade neuroplex") as info:
            await broker.produce("t", b"after")
        assert info.value.found == FORMAT_VERSION + 1
        with _db(path) as conn:
            values = [v for (v,) in conn.execute("SELECT value FROM records ORDER BY off")]
        assert values == [b"before"]


# ---------------------------------------------------------------- bad files


async def _open(url: str, settings: SqliteSettings | None = None) -> None:
    async with brokers.connect(url, settings=settings) as broker:
        await broker.list_topics()


async def test_unwritable_paths_are_access_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "missing" / "log.db", tmp_path, tmp_path / "file" / "log.db"):
        with pytest.raises(LogFileAccessError, match="log file") as info:
            await _open(_url(path))
        assert info.value.path == str(path)
    with pytest.raises(LogFileAccessError, match="unable to open"):
        await _open("sqlite:////proc/neuroplex-log.db")  # not writable, even for root


async def test_files_that_are_not_logs_are_refused_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("not a database, just text\n" * 200)
    other = tmp_path / "other.db"
    with _db(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    for path in (text, other):
        before = path.read_bytes()
        with pytest.raises(NotALogError, match=r"not a SQLite|another application"):
            await _open(_url(path))
        assert path.read_bytes() == before


async def test_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    await _open(_url(path))
    with _db(path) as conn:
        conn.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    with pytest.raises(LogVersionError, match="Upgrade neuroplex") as info:
        await _open(_url(path))
    assert (info.value.found, info.value.supported) == (FORMAT_VERSION + 1, FORMAT_VERSION)


async def test_a_corrupted_file_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with brokers.connect(_url(path)) as broker:
        await broker.create_topic(TopicSpec("t"))
        await broker.produce_batch("t", [ProducerRecord(os.urandom(300)) for _ in range(3000)])
    _garble_middle(path)
    with pytest.raises(LogCorruptedError, match="Restore the file"):
        await _open(_url(path), SqliteSettings(integrity_check=True))
    with pytest.raises(LogCorruptedError):  # without the check: when the damage is read
        async with brokers.connect(_url(path)) as broker:
            await _read_all(broker, "t")
    # a file whose tables were removed behind our back
    fresh = tmp_path / "fresh.db"
    await _open(_url(fresh))
    with _db(fresh) as conn:
        conn.execute("DROP TABLE records")
    with pytest.raises(LogCorruptedError, match="missing"):
        await _open(_url(fresh))


def _garble_middle(path: Path) -> None:
    """Overwrite pages in the middle of a closed log (the records' B-tree)."""
    assert not Path(f"{path}-wal").exists()  # the last connection checkpointed and removed it
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xa5" * 4096 * 8)


def test_errors_are_one_family() -> None:
    for error in (LogFileAccessError, NotALogError, LogVersionError, LogCorruptedError):
        assert issubclass(error, LogFileError)
        assert issubclass(error, brokers.BrokerError)


async def test_urls(tmp_path: Path) -> None:
    for bad in ("sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:///x.db?mode=ro"):
        with pytest.raises(UnsupportedURLError):
            brokers.connect(bad)
    four = brokers.connect(f"sqlite:///{tmp_path}/a.db")  # absolute: sqlite:////tmp/...
    three = brokers.connect(f"sqlite://{tmp_path}/a.db")
    assert getattr(four, "path", None) == getattr(three, "path", None) == str(tmp_path / "a.db")


# ---------------------------------------------------------------- format versions


def test_migrations_form_a_chain() -> None:
    assert sorted(MIGRATIONS) == list(range(FORMAT_VERSION))
    assert FORMAT_VERSION == 2


async def test_a_version_1_file_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with _db(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        assert migrate(conn, str(path), target=1) == 0
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        # what neuroplex with format 1 wrote: a compacted table topic and a plain one
        conn.execute(
            "INSERT INTO topics (id, name, partitions, compacted, delete_retention_ms, config) "
            "VALUES (1, 'table', 1, 1, 86400000, '{}'), (2, 'plain', 1, 0, 86400000, '{}')"
        )
        rows: list[tuple[object, ...]] = [
            (1, 0, i, 1000 + i, b"k%d" % (i % 10), b"v%d" % i, None, 4) for i in range(3000)
        ]
        rows += [(2, 0, i, 1000 + i, None, b"p%d" % i, None, 2) for i in range(5)]
        conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute(
            "INSERT INTO partitions (tid, part, next_offset, count, bytes) "
            "VALUES (1, 0, 3000, 3000, 12000), (2, 0, 5, 5, 10)"
        )
        conn.execute("INSERT INTO groups VALUES ('g', 3)")
        conn.execute("INSERT INTO offsets VALUES ('g', 'plain', 0, 2)")
    async with brokers.connect(_url(path), settings=FAST) as broker:
        with _db(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone() == (FORMAT_VERSION,)
            latest = conn.execute("SELECT key, off FROM latest ORDER BY key").fetchall()
            assert latest == [(b"k%d" % k, 2990 + k) for k in range(10)]
            assert conn.execute("SELECT keys FROM partitions WHERE tid = 1").fetchone() == (10,)
        assert (await broker.describe_topic("table")).compacted
        async with broker.subscribe("plain", group="g") as sub:
            records = await consume(sub, 3)
            assert [r.value for r in records] == [b"p2", b"p3", b"p4"]
        pos = await broker.produce("plain", b"p5")
        assert pos.offset == 5
        # the backfilled bookkeeping drives compaction of the old records
        await _eventually(lambda: _holds(broker, "table", 10))
        table = await _read_all(broker, "table")
        assert {(r.key, r.value) for r in table} == {
            (b"k%d" % k, b"v%d" % (2990 + k)) for k in range(10)
        }


# ---------------------------------------------------------------- retention and compaction


async def test_retention_by_time_and_size(tmp_path: Path) -> None:
    url = _url(tmp_path / "log.db")
    # no background upkeep during this part: what is removed, the produce removed
    async with brokers.connect(url, settings=SqliteSettings(maintenance_interval=3600)) as broker:
        await broker.create_topic(TopicSpec("sized", retention_bytes=1000))
        await broker.produce_batch("sized", [ProducerRecord(b"x" * 100) for _ in range(30)])
        # applied within the producing transaction: at most 1000 bytes are left
        assert await broker.beginning_offsets("sized") == {0: 20}
        assert await broker.end_offsets("sized") == {0: 30}

        await broker.create_topic(TopicSpec("timed", retention_ms=300))
        await broker.produce_batch("timed", [ProducerRecord(b"old") for _ in range(10)])
        await asyncio.sleep(0.4)  # the records' age passes the retention
        await broker.produce("timed", b"new")
        assert await broker.beginning_offsets("timed") == {0: 10}
        await broker.produce_batch("timed", [ProducerRecord(b"old") for _ in range(10)])
    async with brokers.connect(url, settings=FAST) as broker:
        # and in the background, with no produce to trigger it
        await _eventually(lambda: _holds(broker, "timed", 0))
        assert [r.value for r in await _read_all(broker, "sized")] == [b"x" * 100] * 10


async def test_compaction_keeps_the_latest_per_key_and_drops_old_tombstones(
    tmp_path: Path,
) -> None:
    async with brokers.connect(_url(tmp_path / "log.db"), settings=FAST) as broker:
        await broker.create_topic(TopicSpec("kv", compacted=True, delete_retention_ms=1000))
        batch = [ProducerRecord(b"%d" % i, key=b"k%d" % (i % 10), partition=0) for i in range(3000)]
        await broker.produce_batch("kv", batch)
        await _eventually(lambda: _holds(broker, "kv", 10))
        held = await _read_all(broker, "kv")
        assert {(r.key, r.value) for r in held} == {
            (b"k%d" % k, b"%d" % (2990 + k)) for k in range(10)
        }
        assert [r.offset for r in held] == list(range(2990, 3000))

        deleted = [ProducerRecord(None, key=b"k%d" % k, partition=0) for k in range(5)]
        await broker.produce_batch("kv", deleted)
        held = await _read_all(broker, "kv")
        assert [(r.key, r.value) for r in held if r.value is None] == [
            (b"k%d" % k, None) for k in range(5)
        ]
        # after delete_retention_ms the tombstones go, and the old values with them; at no
        # moment does a reader see a deleted key's old value as its latest
        deleted_keys = {b"k%d" % k for k in range(5)}
        async with asyncio.timeout(20):
            while True:
                held = await _read_all(broker, "kv")
                latest = {r.key: r.value for r in held}
                assert all(latest.get(k) is None for k in deleted_keys)
                if len(held) == 5:
                    break
                await asyncio.sleep(0.05)
        expected = {(b"k%d" % k, b"%d" % (2990 + k)) for k in range(5, 10)}
        assert {(r.key, r.value) for r in held} == expected
        assert await broker.end_offsets("kv") == {0: 3005}


def test_compaction_runs_in_bounded_steps(tmp_path: Path) -> None:
    path = str(tmp_path / "log.db")
    settings = SqliteSettings()
    prepare_file(path, settings)
    conn = connect_file(path, settings)
    try:
        conn.execute("BEGIN IMMEDIATE")
        ops.create_topic(conn, ops.Txn(0), TopicSpec("kv", compacted=True))
        records = [ProducerRecord(b"v", key=b"k%d" % (i % 5), partition=0) for i in range(5000)]
        ops.append(conn, ops.Txn(1000), [ops.Append("kv", records)])
        conn.execute("COMMIT")
        steps = 0
        while True:
            before = conn.execute("SELECT count(*) FROM records").fetchone()[0]
            conn.execute("BEGIN IMMEDIATE")
            done = clean(conn, 1, 0, delete_retention_ms=86_400_000, now_ms=2000, budget=500)
            conn.execute("COMMIT")
            after = conn.execute("SELECT count(*) FROM records").fetchone()[0]
            assert before - after <= 500  # one step never does more than its budget
            if not done:
                break
            steps += 1
        assert steps >= 10
        assert conn.execute("SELECT count(*), min(off) FROM records").fetchone() == (5, 4995)
        assert conn.execute("SELECT count, keys FROM partitions").fetchone() == (5, 5)
    finally:
        conn.close()


async def test_deleted_topics_are_purged_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with brokers.connect(_url(path), settings=FAST) as broker:
        await broker.create_topic(TopicSpec("gone", partitions=2))
        await broker.produce_batch("gone", [ProducerRecord(b"x") for _ in range(5000)])
        await broker.delete_topic("gone")
        await broker.create_topic(TopicSpec("gone", partitions=2))
        assert await broker.end_offsets("gone") == {0: 0, 1: 0}  # a new topic, empty at once
        async with asyncio.timeout(20):
            while True:
                with _db(path) as conn:
                    left = conn.execute("SELECT count(*) FROM records").fetchone()[0]
                    dropped = conn.execute("SELECT count(*) FROM dropped").fetchone()[0]
                if left == 0 and dropped == 0:
                    break
                await asyncio.sleep(0.05)
