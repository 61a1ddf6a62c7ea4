"""agents.Memory on every backend: versions, CAS, TTL, consistency levels, observers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

import brokers
from agents import CausalContext, Change, Consistency, Memory, RecordRejectedError
from brokers import ConfigurationError
from operators import BufferOverflowError, ChangeBuffer
from tests.brokers.conftest import unique

ROOT = Path(__file__).resolve().parents[2]


def memory(log: brokers.Broker, namespace: str, **kw: object) -> Memory:
    return Memory(log, namespace=namespace, partitions=2, **kw)  # type: ignore[arg-type]


async def test_set_get_delete_and_versions_are_log_positions(broker: brokers.Broker) -> None:
    async with memory(broker, unique("kv")) as mem:
        written = await mem.set("user:1", {"name": "Ann"})
        assert written.applied
        assert written.version == written.position.offset
        entry = await mem.get_entry("user:1")
        assert entry is not None
        assert (entry.value, entry.version) == ({"name": "Ann"}, written.position.offset)
        assert await mem.exists("user:1")
        await mem.multi_set({"user:2": 2, "user:3": 3})
        assert await mem.multi_get(["user:1", "user:2", "nobody"]) == {
            "user:1": {"name": "Ann"},
            "user:2": 2,
        }
        assert await mem.scan("user:*", limit=2, offset=1) == ["user:2", "user:3"]
        gone = await mem.delete("user:1")
        assert gone.applied
        assert await mem.get("user:1", "absent") == "absent"
        assert not (await mem.delete("user:1")).applied
        await mem.multi_delete(["user:2", "user:3"])
        assert await mem.scan("user:*") == []


async def test_compare_and_swap_and_increments(broker: brokers.Broker) -> None:
    async with memory(broker, unique("kv")) as mem:
        first = await mem.compare_and_swap("lock", "a", expected_version=None)  # must be absent
        assert first.applied
        again = await mem.compare_and_swap("lock", "b", expected_version=None)
        assert not again.applied
        assert again.version == first.version
        assert again.value == "a"
        moved = await mem.compare_and_swap("lock", "c", expected_version=first.version)
        assert moved.applied
        stale = await mem.compare_and_swap("lock", "d", expected_version=first.version)
        assert not stale.applied
        assert stale.version == moved.version
        by_value = await mem.compare_and_swap("lock", "e", expected_value="c")
        assert by_value.applied
        await mem.set("n", {"count": 1})
        for lookalike in ({"count": True}, {"count": 1.0}, True, 1):  # == in Python, not JSON
            assert not (await mem.compare_and_swap("n", 2, expected_value=lookalike)).applied
        assert (await mem.compare_and_swap("n", 2, expected_value={"count": 1})).applied
        assert (await mem.increment("hits", 5)).value == 5
        assert (await mem.decrement("hits", 2)).value == 3
        await mem.set("name", "Ann")
        refused = await mem.increment("name")
        assert not refused.applied
        assert refused.reason == "not a number"


@pytest.mark.backends("sqlite", "kafka", "nats")  # memory:// is one process: no race of processes
async def test_racing_processes_exactly_one_wins_per_version(broker_url: str) -> None:
    namespace = unique("race")
    async with Memory(broker_url, namespace=namespace, partitions=2, janitor=False) as mem:
        version = (await mem.set("leader", "nobody")).version
        assert version is not None
        racers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.agents._cas_child",
                broker_url,
                namespace,
                f"racer-{i}",
                str(version),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            for i in range(3)
        ]
        outputs = [(await r.communicate())[0].decode().strip() for r in racers]
        assert sorted(o.split()[0] for o in outputs) == ["lost", "lost", "won"], outputs
        winner = await mem.get_entry("leader", consistency="strong")
        assert winner is not None
        assert all(o == f"lost {winner.version}" for o in outputs if o != "won")


async def test_ttl_runs_on_event_time_and_expiry_is_a_change(broker: brokers.Broker) -> None:
    async with memory(broker, unique("kv")) as mem:
        changes: list[Change] = []
        mem.observe("session").subscribe(changes.append)
        await mem.set("session", "token", ttl=0.3)
        await mem.set("keep", 1)
        async with asyncio.timeout(30):
            while await mem.get("session") is not None:  # noqa: ASYNC110 - the janitor's tick
                await asyncio.sleep(0.05)
        assert await mem.get("keep") == 1
        async with asyncio.timeout(10):
            while changes[-1].op != "expire":  # noqa: ASYNC110 - fed by the fold
                await asyncio.sleep(0.05)
        assert [c.op for c in changes] == ["current", "set", "expire"]
        assert changes[-1].old == "token"


async def hold_back(view: Memory, writer: Memory) -> ChangeBuffer[Change]:
    """Stop ``view``'s fold: a 'block' subscriber whose buffer is full makes it wait."""
    held = view.subscribe("*", buffer=1, overflow="block")
    await writer.set("filler", 0)
    async with asyncio.timeout(30):
        while not held.full:  # noqa: ASYNC110 - the view folds the filler
            await asyncio.sleep(0.01)
    return held


async def drain(held: ChangeBuffer[Change]) -> None:
    """Let a held view go on: read its changes until the subscription is closed."""
    async for _ in held:
        pass


# For each level, a read that the next weaker level would answer wrongly, made deterministic on
# every backend by holding the reader's view back: under the weaker level the stale answer is
# checked, then the view is let go and the level under test must wait for the right one.


async def test_strong_sees_a_write_no_context_told_it_of(broker: brokers.Broker) -> None:
    namespace = unique("kv")
    async with memory(broker, namespace) as reader, memory(broker, namespace) as other:
        held = await hold_back(reader, other)
        await other.set("k", 42)  # another service's write: no context carries it
        session = CausalContext()
        assert await reader.get("k", consistency="causal", context=session) is None, (
            "causal: the session wrote and read nothing of k, so the stale view answers"
        )
        release = asyncio.create_task(drain(held))  # lets the view go on, a little later
        assert await reader.get("k", consistency="strong") == 42
        held.close()
        await release


async def test_causal_sees_the_sessions_writes_made_elsewhere(broker: brokers.Broker) -> None:
    namespace = unique("kv")
    async with memory(broker, namespace) as writer, memory(broker, namespace) as reader:
        held = await hold_back(reader, writer)
        session = CausalContext()
        await writer.set("cart", ["apple"], context=session)
        handed = CausalContext.from_dict(session.to_dict())  # e.g. in an HTTP header
        assert await reader.get("cart", consistency="monotonic", context=handed) is None, (
            "monotonic: the session read nothing yet, so nothing is waited for"
        )
        release = asyncio.create_task(drain(held))
        assert await reader.get("cart", consistency="causal", context=handed) == ["apple"]
        held.close()
        await release
        with pytest.raises(ConfigurationError, match="context"):
            await reader.get("cart", consistency="causal")


@pytest.mark.parametrize("level", ["monotonic", "causal"])  # causal gives monotonic reads too
async def test_monotonic_never_goes_back_across_readers(
    broker: brokers.Broker, level: Consistency
) -> None:
    namespace = unique("kv")
    async with memory(broker, namespace) as a, memory(broker, namespace) as b:
        await a.set("v", 1)
        assert await b.get("v", consistency="strong") == 1
        held = await hold_back(b, a)
        await a.set("v", 2)  # no context: not the session's write
        session = CausalContext()
        assert await a.get("v", consistency="strong", context=session) == 2  # the session saw 2
        assert session.writes == {}
        assert await b.get("v", consistency="eventual", context=session) == 1, (
            "eventual: b is behind, and the session would go back in time"
        )
        release = asyncio.create_task(drain(held))
        assert await b.get("v", consistency=level, context=session) == 2
        held.close()
        await release


async def test_scan_and_export_honour_the_levels_like_get(broker: brokers.Broker) -> None:
    namespace = unique("kv")
    async with memory(broker, namespace) as writer, memory(broker, namespace) as reader:
        for bad in ("linearish", "causal"):  # unknown; causal without a context
            with pytest.raises(ConfigurationError):
                await reader.scan("user:*", consistency=bad)  # type: ignore[arg-type]
            with pytest.raises(ConfigurationError):
                await anext(reader.export("user:*", consistency=bad))  # type: ignore[arg-type]
        held = await hold_back(reader, writer)
        session = CausalContext()
        await writer.set("user:9", "ann", context=session)
        await writer.set("user:1", "bob", context=session)
        assert await reader.scan("user:*", consistency="monotonic", context=session) == []
        release = asyncio.create_task(drain(held))
        assert await reader.scan("user:*", consistency="causal", context=session) == [
            "user:1",
            "user:9",
        ]
        exported = [
            k async for k, _, _ in reader.export("user:*", consistency="causal", context=session)
        ]
        assert exported == ["user:1", "user:9"]
        held.close()
        await release


def test_a_causal_context_travels_as_plain_data() -> None:
    session = CausalContext()
    session.note_write(0, 7)
    session.note_read(1, 3)
    session.note_read(0, 9)
    other = CausalContext.from_dict(session.to_dict())
    assert (other.writes, other.reads) == ({0: 7}, {1: 3, 0: 9})
    assert other.causal() == {0: 9, 1: 3}
    other.merge(CausalContext({1: 5}))
    assert other.causal() == {0: 9, 1: 5}
    with pytest.raises(ConfigurationError, match="invalid causal context"):
        CausalContext.from_dict({"writes": {"zero": 1}})


async def test_subscribe_is_bounded_with_a_named_overflow_policy(broker: brokers.Broker) -> None:
    async with memory(broker, unique("kv")) as mem:
        lossy = mem.subscribe("k*", buffer=3, overflow="drop_oldest")
        strict = mem.subscribe("k*", buffer=3, overflow="error")
        for i in range(5):
            await mem.set(f"k{i}", i)
        got = [(await anext(lossy)).new for _ in range(3)]
        assert got == [2, 3, 4]
        assert lossy.dropped == 2
        with pytest.raises(BufferOverflowError, match="3 changes behind"):
            async for _ in strict:
                pass
        lossy.close()
        strict.close()


async def test_bad_input_is_refused_at_the_edge(broker: brokers.Broker) -> None:
    namespace = unique("kv")
    async with memory(broker, namespace) as mem:
        with pytest.raises(ConfigurationError, match="invalid key"):
            await mem.set("", 1)
        with pytest.raises(ConfigurationError, match="not JSON-serializable"):
            await mem.set("k", object())
        with pytest.raises(ConfigurationError, match="exactly one"):
            await mem.compare_and_swap("k", 1)
        with pytest.raises(ConfigurationError, match="consistency"):
            await mem.get("k", consistency="linearish")  # type: ignore[arg-type]
        # a record that is not an op (another service's bug) is skipped, never folded
        await broker.produce(f"kv.{namespace}", b"garbage", key=b"k")
        await mem.set("k", "fine")
        assert await mem.get("k", consistency="strong") == "fine"
        assert mem.rejected_records == 1


async def test_an_op_on_another_partition_than_its_key_is_rejected(broker: brokers.Broker) -> None:
    """A producer with another partitioner (librdkafka's CRC32, say) put the op elsewhere."""
    namespace = unique("kv")
    async with memory(broker, namespace) as mem:
        home = mem.partition_of("k")
        elsewhere = (home + 1) % 8
        op = b'{"op": "set", "key": "k", "value": "misplaced"}'
        await broker.produce(f"kv.{namespace}", op, key=b"k", partition=elsewhere)
        batch = b'{"op": "batch", "ops": [{"op": "set", "key": "k", "value": "in a batch"}]}'
        await broker.produce(f"kv.{namespace}", batch, partition=elsewhere)
        await mem.set("k", "placed")
        assert await mem.get("k", consistency="strong") == "placed"
        assert mem.rejected_records == 2
        # the same op on the key's own partition is folded
        await broker.produce(f"kv.{namespace}", op, key=b"k", partition=home)
        assert await mem.get("k", consistency="strong") == "misplaced"
        history = [c.new async for c in _history(mem, "k", 2)]
        assert history == ["placed", "misplaced"]


async def _history(mem: Memory, key: str, n: int) -> AsyncIterator[Change]:
    seen = 0
    async for change in mem.stream_changes():
        if change.key == key:
            yield change
            seen += 1
            if seen == n:
                return


async def test_none_is_a_value_like_any_other(broker: brokers.Broker) -> None:
    async with memory(broker, unique("kv")) as mem, asyncio.timeout(30):  # a refused op: hangs
        heard: list[object] = []
        mem.on("door", lambda c: heard.append(c.new))
        assert (await mem.set("k", None)).applied
        entry = await mem.get_entry("k")
        assert entry is not None, "a key set to None exists"
        assert entry.value is None
        assert await mem.exists("k")
        assert (await mem.emit("door", None)).applied
        assert heard == [None]
        assert (await mem.compare_and_swap("k", 1, expected_value=None)).applied
        assert (
            await mem.compare_and_swap("k", None, expected_version=entry.version)
        ).applied is False
        assert (await mem.compare_and_swap("k", None, expected_value=1)).applied
        nested = {"a": None, "b": [None, {"c": None}], "t": True, "f": 1.5}
        result = await mem.execute_batch(mem.create_batch().set("x", None).set("y", nested))
        assert result.applied == 2
        assert await mem.multi_get(["k", "x", "y"]) == {"k": None, "x": None, "y": nested}
        with pytest.raises(ConfigurationError, match="NaN or infinity"):
            await mem.set("k", {"a": [float("nan")]})


class Altering:
    """A layer between a Memory and its log that alters every record it appends (a proxy with a
    bug): the fold refuses them."""

    def __init__(self, log: brokers.Broker) -> None:
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    @staticmethod
    def _alter(value: bytes | None) -> bytes:
        return (value or b"{}").replace(b'{"op"', b'{"v":2,"op"')

    async def produce(self, topic: str, value: bytes | None, **kw: Any) -> brokers.Position:
        return await self._log.produce(topic, self._alter(value), **kw)

    async def produce_batch(
        self, topic: str, records: Sequence[brokers.ProducerRecord]
    ) -> list[brokers.Position]:
        altered = [
            brokers.ProducerRecord(self._alter(r.value), r.key, r.partition, r.headers)
            for r in records
        ]
        return await self._log.produce_batch(topic, altered)


async def test_a_writer_whose_record_is_refused_is_told(broker: brokers.Broker) -> None:
    namespace = unique("kv")
    bad_log = cast("brokers.Broker", Altering(broker))
    async with memory(bad_log, namespace, janitor=False) as mem:
        async with asyncio.timeout(30):
            with pytest.raises(RecordRejectedError, match="refused by the KV fold") as refused:
                await mem.set("k", 1)
            assert refused.value.topic == f"kv.{namespace}"
            with pytest.raises(RecordRejectedError):
                await mem.multi_set({"a": 1, "b": 2, "c": 3})
        assert mem.rejected_records >= 2
        assert await mem.get("k", consistency="strong") is None, "never folded"


async def test_batches_bulk_export_and_import(broker: brokers.Broker) -> None:
    async with memory(broker, unique("kv")) as mem:
        batch = mem.create_batch().set("a", 1).increment("n", 5).set("b", 2).delete("missing")
        assert len(batch) == 4
        result = await mem.execute_batch(batch)
        assert (result.applied, result.rejected) == (3, 1)
        assert result.errors[0].startswith("missing: absent ("), result.errors
        assert result.duration >= 0
        seen: list[int] = []
        assert (
            await mem.bulk_set({f"item:{i}": i for i in range(25)}, chunk=10, progress=seen.append)
            == 25
        )
        assert seen == [10, 20, 25]
        await mem.set("item:ttl", "soon", ttl=3600)
        original = await mem.get_entry("item:ttl")
        assert original is not None
        deadline = original.expires_at
        assert deadline is not None
        exported = [item async for item in mem.export("item:*")]
        assert len(exported) == 26
        assert ("item:7", 7, None) in exported
        assert ("item:ttl", "soon", deadline) in exported, "the deadline travels"
        async with memory(broker, unique("kv")) as copy:
            assert await copy.import_keys(exported) == 26
            assert await copy.get("item:7", consistency="strong") == 7
            imported = await copy.get_entry("item:ttl")
            assert imported is not None
            assert imported.expires_at == deadline, "the same deadline, in event time"
        async with memory(broker, unique("kv")) as streamed:
            assert await streamed.import_keys(mem.export("item:*"), chunk=10) == 26
        assert await mem.bulk_delete([k for k, _, _ in exported]) == 26
        assert await mem.scan("item:*") == []


async def test_a_batchs_ops_share_one_log_position(broker: brokers.Broker) -> None:
    namespace = unique("kv")
    async with memory(broker, namespace) as mem, memory(broker, namespace) as reader:
        keys = [f"k{i}" for i in range(40)]
        *first, counter = [k for k in keys if mem.partition_of(k) == 0][:4]
        second = [k for k in keys if mem.partition_of(k) == 1][:2]
        changes: list[Change] = []
        mem.listen(None, changes.append)
        batch = mem.create_batch()
        for key in first + second:
            batch.set(key, key)
        session = CausalContext()
        result = await mem.execute_batch(batch.increment(counter), context=session)
        assert result.applied == 6
        at = [r.position for r in result.results]
        assert len(set(at[:3] + at[5:])) == 1, "the ops of one partition: one record"
        assert len(set(at[3:5])) == 1
        assert at[0] != at[3]
        assert all(r.version == r.position.offset for r in result.results)
        assert {c.version for c in changes if c.partition == 0} == {at[0].offset}
        assert session.writes == {0: at[0].offset, 1: at[3].offset}
        multi = await mem.multi_set({"x": 1, "y": 2}, context=session)
        assert await reader.get("x", consistency="causal", context=session) == 1
        assert all(r.position.offset <= session.causal()[r.position.partition] for r in multi)


async def test_stream_changes_replays_history_with_exact_old_values(broker: brokers.Broker) -> None:
    async with memory(broker, unique("kv")) as mem:
        first = await mem.set("k", 1)
        await mem.increment("k", 2)
        await mem.set("k", 10)
        replay = mem.stream_changes(since={first.position.partition: first.position.offset + 1})
        got = [await anext(replay) for _ in range(2)]
        await replay.aclose()
    assert [(c.op, c.old, c.new) for c in got] == [("increment", 1, 3), ("set", 3, 10)]


async def test_events_api(broker: brokers.Broker) -> None:
    async with memory(broker, unique("kv")) as mem:
        heard: list[str] = []
        handle = mem.on("door", lambda c: heard.append(f"door {c.new}"))
        mem.on_pattern("alarm:*", lambda c: heard.append(f"{c.key} {c.new}"))
        await mem.emit("door", "open")
        await mem.emit("alarm:1", "ring")
        mem.off(handle)
        await mem.emit("door", "closed")
        assert heard == ["door open", "alarm:1 ring"]


async def test_a_snapshot_makes_a_restart_fold_only_the_tail(
    broker: brokers.Broker, tmp_path: Path
) -> None:
    namespace = unique("kv")
    async with memory(broker, namespace, snapshot_dir=tmp_path) as mem:
        await mem.bulk_set({f"k{i}": i for i in range(2000)})
        await mem.set("ttl", "soon", ttl=3600)
        before = mem.records_read
    async with memory(broker, namespace, janitor=False) as writer:
        assert writer.records_read == before, "without a snapshot: the whole log"
        await writer.set("k1", "changed after the snapshot")
        await writer.delete("k2")
    async with memory(broker, namespace, snapshot_dir=tmp_path) as again:
        assert again.loaded_from_snapshot == 2001
        assert again.records_read == 2, "from the snapshot's positions on: only the tail"
        assert await again.get("k2") is None
        assert await again.get("k7") == 7
        assert await again.get("k1") == "changed after the snapshot"  # the tail, folded
        assert await again.get("ttl") == "soon"
        assert len(await again.scan("k*")) == 1999


async def test_the_namespace_topic_is_an_ops_log_with_the_retention_given(
    broker: brokers.Broker,
) -> None:
    namespace = unique("kv")
    month = 30 * 86_400_000
    await broker.create_topic(
        brokers.TopicSpec(f"kv.{namespace}", partitions=2, retention_ms=month)
    )
    async with memory(broker, namespace) as mem:
        await mem.set("k", 1)
    spec = await broker.describe_topic(f"kv.{namespace}")
    assert (spec.compacted, spec.retention_ms) == (False, month)
    compacted = unique("kv")
    await broker.create_topic(brokers.TopicSpec(f"kv.{compacted}", partitions=2, compacted=True))
    with pytest.raises(brokers.TopicConflictError):
        async with memory(broker, compacted):
            pass


async def test_a_memory_over_an_app_and_a_blocking_subscriber(broker: brokers.Broker) -> None:
    from streams import App

    app = App(unique("kvapp"), broker=broker)
    async with app, memory(app, unique("kv")) as mem:  # type: ignore[arg-type]
        slow = mem.subscribe("*", buffer=2, overflow="block")
        writes = asyncio.gather(*(mem.set(f"k{i}", i) for i in range(6)))
        got: list[int] = []
        async with asyncio.timeout(30):
            while len(got) < 6:
                got.append((await anext(slow)).new)
        await writes
        assert sorted(got) == list(range(6)), "block loses nothing: the fold waited"
        assert slow.dropped == 0
        slow.close()
