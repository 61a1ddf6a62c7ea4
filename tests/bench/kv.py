"""KV memory figures: eventual reads, set and compare-and-swap throughput and latency,
observer latency, and a restart over many keys; NATS KV through raw nats-py as the baseline
(put for set, get for reads, update on the last revision for compare-and-swap)."""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

import brokers
from agents import Change, Memory
from tests.bench._results import Row

READS = 200_000
WRITES = 2_000
CONCURRENCY = 50
RESTART_KEYS = int(os.environ.get("NEUROPLEX_BENCH_RESTART_KEYS", "1000000"))
RESTART_CHUNK = 5000  # records per produce_batch, each record one set op


CAS_KEYS = WRITES // 4 + WRITES  # the latency run's keys, then the throughput run's


def _cuts(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49], cuts[98]


async def _write_figures(
    name: str, backend: str, write: Callable[[int], Awaitable[object]]
) -> list[Row]:
    """p50/p99 of ``WRITES // 4`` writes one after the other (``write(0)``...), then the
    throughput of ``WRITES`` more from ``CONCURRENCY`` concurrent writers."""
    latencies = []
    for i in range(WRITES // 4):
        t = time.perf_counter()
        await write(i)
        latencies.append((time.perf_counter() - t) * 1000)
    p50, p99 = _cuts(latencies)
    counter = iter(range(WRITES // 4, 10**9))

    async def worker() -> None:
        for _ in range(WRITES // CONCURRENCY):
            await write(next(counter))

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return [
        Row.compared(name, backend, WRITES / (time.perf_counter() - t), "ops/s", None),
        Row.compared(f"{name}.p50", backend, p50, "ms", None),
        Row.compared(f"{name}.p99", backend, p99, "ms", None),
    ]


async def ours(url: str, backend: str) -> list[Row]:
    rows: list[Row] = []
    async with (
        brokers.connect(url) as log,
        Memory(log, namespace=uuid.uuid4().hex[:8], janitor=False) as mem,
    ):
        await mem.bulk_set({f"k{i}": i for i in range(1000)})
        started = time.perf_counter()
        for i in range(READS):
            await mem.get(f"k{i % 1000}", consistency="eventual")
        rows.append(
            Row.compared(
                "kv.get.eventual",
                backend,
                READS / (time.perf_counter() - started),
                "ops/s",
                None,
                target=">= 1,000,000 ops/s",
            )
        )
        started = time.perf_counter()
        for i in range(READS):
            mem.get_nowait(f"k{i % 1000}")
        rows.append(
            Row.compared(
                "kv.get_nowait", backend, READS / (time.perf_counter() - started), "ops/s", None
            )
        )
        # every compare-and-swap succeeds: its own key, from the version it was created at
        await mem.bulk_set({f"c{i}": 0 for i in range(CAS_KEYS)})
        versions = [(await mem.get_entry(f"c{i}")) for i in range(CAS_KEYS)]

        async def set_one(i: int) -> object:
            return await mem.set(f"s{i % 100}", i)

        async def cas_one(i: int) -> object:
            entry = versions[i]
            assert entry is not None
            result = await mem.compare_and_swap(f"c{i}", i, expected_version=entry.version)
            assert result.applied
            return result

        writers: list[tuple[str, Callable[[int], Awaitable[object]]]] = [
            ("kv.set", set_one),
            ("kv.cas", cas_one),
        ]
        for name, write in writers:
            rows += await _write_figures(name, backend, write)

        arrived = asyncio.Event()
        seen_at: list[float] = []

        def heard(change: Change) -> None:
            if change.op != "current":
                seen_at.append(time.perf_counter())
                arrived.set()

        mem.observe("watched").subscribe(heard)
        latencies = []
        for i in range(300):
            arrived.clear()
            t = time.perf_counter()
            await mem.set("watched", i, wait=False)
            await arrived.wait()
            latencies.append((seen_at[-1] - t) * 1000)
        p50, p99 = _cuts(latencies)
        rows.append(Row.compared("kv.observe.latency.p50", backend, p50, "ms", None))
        rows.append(Row.compared("kv.observe.latency.p99", backend, p99, "ms", None))
    return rows


async def restart(url: str, backend: str, keys: int) -> list[Row]:
    """A Memory over ``keys`` keys, each written by its own record (one set op, as a service
    appending to the log would): seconds to fold the whole log on a first open, to write the
    snapshot on close, and to open again from the snapshot (the restart)."""
    namespace = uuid.uuid4().hex[:8]
    topic = f"kv.{namespace}"
    with tempfile.TemporaryDirectory() as snapshots:
        async with brokers.connect(url) as log:
            await log.create_topic(brokers.TopicSpec(topic, partitions=8))
            t = time.perf_counter()
            for start in range(0, keys, RESTART_CHUNK):
                await log.produce_batch(
                    topic,
                    [
                        brokers.ProducerRecord(
                            brokers.json.dumps({"op": "set", "key": f"key-{i}", "value": i}),
                            f"key-{i}".encode(),
                        )
                        for i in range(start, min(keys, start + RESTART_CHUNK))
                    ],
                )
            produced = time.perf_counter() - t
            t = time.perf_counter()
            mem = Memory(log, namespace=namespace, snapshot_dir=snapshots, janitor=False)
            async with mem:
                folded = time.perf_counter() - t
                assert mem.records_read == keys
                t = time.perf_counter()
            saved = time.perf_counter() - t
            t = time.perf_counter()
            async with Memory(
                log, namespace=namespace, snapshot_dir=snapshots, janitor=False
            ) as mem:
                elapsed = time.perf_counter() - t
                assert mem.loaded_from_snapshot == keys
                assert mem.records_read == 0, "a restart from the snapshot reads no record"
                assert await mem.get(f"key-{keys - 1}") == keys - 1
    thousands = keys // 1000
    return [
        Row.compared(f"kv.restart.{thousands}k.produce", backend, produced, "s", None),
        Row.compared(f"kv.restart.{thousands}k.fold", backend, folded, "s", None),
        Row.compared(f"kv.restart.{thousands}k.snapshot", backend, saved, "s", None),
        Row.compared(
            f"kv.restart.{thousands}k", backend, elapsed, "s", None, target="ready in seconds"
        ),
    ]


async def raw_nats_kv(url: str) -> dict[str, float]:
    """The same figures through raw nats-py's KV on the same server, same concurrency: put
    (``kv.set``), get (``kv.get.eventual``), and update on the last revision (``kv.cas``)."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        bucket = f"bench{uuid.uuid4().hex[:6]}"
        kv = await js.create_key_value(bucket=bucket)
        figures: dict[str, float] = {}

        async def put_one(i: int) -> object:
            return await kv.put(f"s{i % 100}", str(i).encode())

        revisions = [await kv.put(f"c{i}", b"0") for i in range(CAS_KEYS)]

        async def update_one(i: int) -> object:
            return await kv.update(f"c{i}", str(i).encode(), last=revisions[i])

        for name, write in (("kv.set", put_one), ("kv.cas", update_one)):
            for row in await _write_figures(name, "nats", write):
                figures[row.name] = row.value
        t = time.perf_counter()
        for i in range(2000):
            await kv.get(f"s{i % 100}")
        figures["kv.get.eventual"] = 2000 / (time.perf_counter() - t)
        await js.delete_key_value(bucket)
    finally:
        await nc.close()
    return figures


async def bench(backend: str, url: str) -> list[Row]:
    rows = await ours(url, backend)
    if backend == "nats":
        baseline = await raw_nats_kv(url)
        for row in rows:
            if row.name in baseline:
                base = baseline[row.name]
                row.baseline, row.ratio = round(base, 3), round(row.value / base, 3)
    rows += await restart(url, backend, RESTART_KEYS)
    return rows
