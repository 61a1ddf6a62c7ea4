"""``nats://host:port[,host:port]``: the log on NATS JetStream, through nats-py.

Also ``tls://host:port`` (TLS, the system CAs unless :class:`~brokers.TLSSettings` say
otherwise), ``nats://user:password@host`` and ``nats://token@host``; credentials may instead come
from :class:`~brokers.NatsSettings` (user/password, token, nkey seed, creds file).

Mapping
-------
- A topic is one JetStream stream, ``<prefix>_<topic>`` (``.`` in the topic becomes ``=``), with
  one subject per partition, ``<prefix>.<topic>.<partition>``. The topic's specification is
  kept in the stream's metadata (``neuroplex.*`` keys), so :meth:`describe_topic` returns it.
- Retention: ``retention_ms`` is the stream's ``max_age``; ``retention_bytes`` is a per-partition
  limit in Kafka, and JetStream limits whole streams, so the stream's ``max_bytes`` is
  ``retention_bytes * partitions`` (a busy partition may keep less, a quiet one more).
- A compacted topic has one subject per key, ``<prefix>.<topic>.<partition>.<key token>`` (see
  :class:`~brokers._nats_support.Names`) and ``max_msgs_per_subject=1``: JetStream drops the
  previous record of a key the moment a new one is stored, so a reader never sees a key's
  history, only its latest record. A tombstone (value ``None``) is stored like any record and
  carries a per-message TTL (``Nats-TTL``) of ``delete_retention_ms``, rounded up to whole
  seconds: it replaces the key's last value at once and disappears itself after that time, so
  readers that were behind still learn of the delete (needs nats-server 2.11 or later).
- A record's offset is its stream sequence: strictly increasing within a partition but not
  contiguous (the stream's sequence is shared by all partitions). Its timestamp is the server's
  store time. Key, tombstone mark and headers ride in NATS headers
  (:mod:`brokers._nats_codec`), so any NATS client can publish and read records.
- A produced record's :class:`~brokers.Position` comes from JetStream's acknowledgement; that
  carries no time, so ``Position.timestamp`` is this client's clock when the acknowledgement
  arrived (the record's own timestamp, read back, is the server's).
- Consumer groups are built here on a KV bucket, ``<prefix>_groups`` (see
  :mod:`brokers._nats_groups`).

Connecting is bounded by ``connect_timeout``: refused credentials fail at once
(:class:`~brokers.AuthorizationError`), an unreachable server with the last error seen
(:class:`~brokers.BrokerUnavailableError`). Once connected, nats-py reconnects by itself, forever,
once a second; meanwhile requests fail after ``request_timeout`` and publishes waiting for an
acknowledgement fail at once (the records may or may not be stored). Subscriptions restart
their consumers after a reconnect, from the record after the last one received.

End offsets are read from the stream leader (``STREAM.MSG.GET`` with ``last_by_subj``, which
accepts the wildcard of a compacted partition), never from a replica, so a strong read never
waits for less than what was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from brokers import json
from brokers._base import BaseBroker, SubscribeOptions
from brokers._errors import (
    AuthorizationError,
    BrokerError,
    BrokerUnavailableError,
    ClosedError,
    NeuroplexError,
    RecordTooLargeError,
    TopicConflictError,
    UnknownTopicError,
)
from brokers._nats_client import Client, Publisher
from brokers._nats_codec import encode_headers
from brokers._nats_subscription import NatsSubscription
from brokers._nats_support import (
    MESSAGE_TOO_LARGE,
    NO_MESSAGE_FOUND,
    STREAM_NAME_IN_USE,
    STREAM_NOT_FOUND,
    SUBJECTS_OVERLAP,
    TRANSLATED,
    ApiError,
    Names,
    NatsTarget,
    is_auth_failure,
    log,
    translate,
    translating,
)
from brokers._settings import NatsSettings
from brokers._types import Position, ProducerRecord, TopicSpec

__all__ = ("NatsBroker",)

_META = "neuroplex."
_RECONNECT_WAIT = 1  # seconds between reconnect attempts


class _Refused(Exception):
    """Raised from the error callback to stop nats-py retrying refused credentials."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(str(cause))


class NatsBroker(BaseBroker):
    """The log on NATS JetStream. Obtain it with ``brokers.connect("nats://host:4222")``."""

    _settings: NatsSettings

    def __init__(self, url: str, settings: NatsSettings, *, target: NatsTarget) -> None:
        super().__init__(target.url, settings)
        self._target = target
        self.names = Names(settings.prefix)
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._publisher: Publisher | None = None
        self._kv: KeyValue | None = None
        self._kv_lock = asyncio.Lock()
        self._connecting = False
        self._last_error: BaseException | None = None
        self._reported = ""  # the last connection error logged as a warning
        self._subjects: dict[str, list[bytes]] = {}

    @classmethod
    def from_url(cls, url: str, settings: NatsSettings) -> NatsBroker:
        """``nats://[user:password@]host:port[,host:port]`` or ``tls://...``."""
        return cls(url, settings, target=NatsTarget(url, settings))

    @property
    def settings(self) -> NatsSettings:
        return self._settings

    @property
    def client(self) -> Client:
        if self._client is None:
            self._check_open()
            raise BrokerUnavailableError(self.url, "not connected")
        return self._client

    # ------------------------------------------------------------ connection
    async def _open(self) -> None:
        settings = self._settings
        loop = asyncio.get_running_loop()
        # Answer a little before BaseBroker.open's own deadline, to say why it failed.
        budget = settings.connect_timeout * 0.95
        client = Client()
        self._client = client
        self._connecting = True
        try:
            async with asyncio.timeout(budget):
                await client.connect(
                    **self._target.connect_options(),
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,  # bounded by the timeout here; forever once up
                    reconnect_time_wait=_RECONNECT_WAIT,
                )
                self._connecting = False
                await self._check_jetstream()
        except _Refused as exc:
            cause = exc.cause
            if isinstance(cause, ssl.SSLError):
                raise AuthorizationError(self.url, f"TLS handshake failed: {cause}") from cause
            raise AuthorizationError(self.url, str(cause).removeprefix("nats: ")) from cause
        except TimeoutError as exc:
            last = self._last_error
            reason = "no answer" if last is None else _reason(last)
            raise BrokerUnavailableError(self.url, reason, timeout=settings.connect_timeout) from (
                last or exc
            )
        except TRANSLATED as exc:
            raise translate(exc, self.url) from exc
        finally:
            self._connecting = False
        self._js = client.jetstream(timeout=settings.request_timeout)
        publisher = Publisher(client, self.url)
        await publisher.start()
        self._publisher = publisher
        log.debug("nats: connected to %s (loop %s)", self.url, id(loop))

    async def _check_jetstream(self) -> None:
        try:
            await self.api("$JS.API.INFO")
        except BrokerUnavailableError as exc:
            raise BrokerError(
                f"broker {self.url} has no JetStream: start nats-server with -js, or enable "
                "JetStream for this account"
            ) from exc

    async def _close(self) -> None:
        publisher, self._publisher = self._publisher, None
        client, self._client = self._client, None
        self._js = None
        self._kv = None
        if publisher is not None:
            with contextlib.suppress(*TRANSLATED):
                await publisher.stop()
        if client is not None:
            _fail_pending_requests(client, ClosedError(f"broker {self.url}"))
        if client is not None and not client.is_closed:
            # A transport that never connected (a failed TLS handshake, say) may never report
            # itself closed: do not wait long for it.
            bound = min(5.0, self._settings.request_timeout) if client.is_connected else 0.5
            try:
                async with asyncio.timeout(bound):
                    await client.close()
            except TRANSLATED as exc:
                log.debug("nats: close of %s: %s", self.url, _reason(exc))

    async def _on_error(self, exc: Exception) -> None:
        if self._connecting:
            if is_auth_failure(exc) or isinstance(exc, ssl.SSLCertVerificationError):
                raise _Refused(exc)
            self._last_error = exc
            log.debug("nats: connecting to %s: %s", self.url, _reason(exc))
            return
        reason = _reason(exc)
        client = self._client
        if client is not None and client.is_reconnecting and reason == self._reported:
            log.debug("nats: %s: %s", self.url, reason)  # said once per outage is enough
            return
        self._reported = reason
        log.warning("nats: %s: %s", self.url, reason)

    async def _on_disconnected(self) -> None:
        if self._connecting or self._client is None or self._client.is_closed:
            return
        log.warning("nats: disconnected from %s, reconnecting", self.url)
        if self._publisher is not None:
            # Their acknowledgements would never come: fail now rather than at the timeout.
            self._publisher.fail_waiting(
                BrokerUnavailableError(
                    self.url,
                    "the connection was lost before the broker acknowledged the records "
                    "(they may or may not be stored; producing them again may duplicate some)",
                )
            )

    async def _on_reconnected(self) -> None:
        self._reported = ""
        log.warning("nats: reconnected to %s", self.url)
        for sub in list(self._subscriptions):
            if isinstance(sub, NatsSubscription):
                sub.on_reconnected()

    async def api(
        self, subject: str, payload: dict[str, Any] | None = None, *, topic: str | None = None
    ) -> dict[str, Any]:
        """A JetStream API request; raises :class:`ApiError` for an error answer."""
        data = b"" if payload is None else json.dumps(payload)
        with translating(self.url, topic=topic):
            msg = await self.client.request(subject, data, timeout=self._settings.request_timeout)
            answer: dict[str, Any] = json.loads(msg.data)
        error = answer.get("error")
        if error is not None:
            raise ApiError(
                error.get("code", 0), error.get("err_code", 0), error.get("description", "")
            )
        return answer

    async def group_kv(self) -> KeyValue:
        """The KV bucket of consumer groups (created on first use)."""
        async with self._kv_lock:
            if self._kv is not None:
                return self._kv
            js = self._js
            if js is None:
                self._check_open()
                raise BrokerUnavailableError(self.url, "not connected")
            bucket = self.names.bucket
            with translating(self.url):
                try:
                    kv = await js.key_value(bucket)
                except nats.js.errors.BucketNotFoundError:
                    kv = await js.create_key_value(
                        bucket=bucket,
                        history=1,
                        storage=self._settings.storage,
                        replicas=self._settings.replicas,
                        direct=False,  # reads from the leader: read-after-write (ADR-8)
                        description="neuroplex consumer groups: membership and positions",
                    )
            self._kv = kv
            return kv

    # ------------------------------------------------------------ topics
    def _stream_config(self, spec: TopicSpec) -> dict[str, Any]:
        names, settings = self.names, self._settings
        meta = {
            f"{_META}topic": spec.name,
            f"{_META}partitions": str(spec.partitions),
            f"{_META}compacted": "true" if spec.compacted else "false",
            f"{_META}retention_ms": "" if spec.retention_ms is None else str(spec.retention_ms),
            f"{_META}retention_bytes": (
                "" if spec.retention_bytes is None else str(spec.retention_bytes)
            ),
            f"{_META}delete_retention_ms": str(spec.delete_retention_ms),
            f"{_META}config": json.dumps(dict(spec.config)).decode(),
        }
        return {
            "name": names.stream(spec.name),
            "description": f"neuroplex topic {spec.name}",
            "subjects": [names.subjects(spec.name, compacted=spec.compacted)],
            "retention": "limits",
            "discard": "old",
            "storage": settings.storage,
            "num_replicas": settings.replicas,
            "max_consumers": -1,
            "max_msgs": -1,
            "max_msg_size": -1,
            "max_msgs_per_subject": 1 if spec.compacted else -1,
            "max_age": 0 if spec.retention_ms is None else spec.retention_ms * 1_000_000,
            "max_bytes": (
                -1 if spec.retention_bytes is None else spec.retention_bytes * spec.partitions
            ),
            "allow_direct": True,
            "allow_msg_ttl": spec.compacted,
            "metadata": meta,
        }

    async def _create_topic(self, spec: TopicSpec) -> TopicSpec:
        stream = self.names.stream(spec.name)
        try:
            await self.api(f"$JS.API.STREAM.CREATE.{stream}", self._stream_config(spec))
        except ApiError as exc:
            if exc.err_code == SUBJECTS_OVERLAP:
                raise TopicConflictError(
                    spec.name, f"another stream already captures its subjects ({exc.description})"
                ) from exc
            if exc.err_code != STREAM_NAME_IN_USE:
                raise translate(exc, self.url, topic=spec.name) from exc
            old = await self._describe_topic(spec.name)
            if old.partitions != spec.partitions:
                raise TopicConflictError(
                    spec.name, f"it has {old.partitions} partitions, not {spec.partitions}"
                ) from None
            if old.compacted != spec.compacted:
                raise TopicConflictError(
                    spec.name, f"compacted={old.compacted}, not {spec.compacted}"
                ) from None
            return old
        return spec

    async def _describe_topic(self, name: str) -> TopicSpec:
        stream = self.names.stream(name)
        try:
            info = await self.api(f"$JS.API.STREAM.INFO.{stream}", topic=name)
        except ApiError as exc:
            raise translate(exc, self.url, topic=name) from exc
        meta: dict[str, str] = info.get("config", {}).get("metadata") or {}
        try:
            partitions = int(meta[f"{_META}partitions"])
            retention_ms = meta.get(f"{_META}retention_ms") or None
            retention_bytes = meta.get(f"{_META}retention_bytes") or None
            return TopicSpec(
                name,
                partitions=partitions,
                compacted=meta.get(f"{_META}compacted") == "true",
                retention_ms=int(retention_ms) if retention_ms else None,
                retention_bytes=int(retention_bytes) if retention_bytes else None,
                delete_retention_ms=int(meta.get(f"{_META}delete_retention_ms") or 86_400_000),
                config=json.loads(meta.get(f"{_META}config") or "{}"),
            )
        except (KeyError, ValueError, NeuroplexError) as exc:
            raise TopicConflictError(
                name, f"stream {stream} exists but was not created by neuroplex"
            ) from exc

    async def _list_topics(self) -> list[str]:
        topics: list[str] = []
        offset = 0
        while True:
            answer = await self.api(
                "$JS.API.STREAM.NAMES", {"subject": self.names.all_subjects(), "offset": offset}
            )
            streams: list[str] = answer.get("streams") or []
            for stream in streams:
                topic = self.names.topic_of_stream(stream)
                if topic is not None:
                    topics.append(topic)
            offset += len(streams)
            if not streams or offset >= answer.get("total", 0):
                return topics

    async def _delete_topic(self, name: str) -> None:
        try:
            await self.api(f"$JS.API.STREAM.DELETE.{self.names.stream(name)}", topic=name)
        except ApiError as exc:
            raise translate(exc, self.url, topic=name) from exc
        self._subjects.pop(name, None)
        # Committed positions of the deleted topic must not apply to a new one of that name.
        with contextlib.suppress(ApiError):
            await self.api(
                f"$JS.API.STREAM.PURGE.KV_{self.names.bucket}",
                {"filter": self.names.offsets_filter(name)},
            )

    # ------------------------------------------------------------ produce
    async def _append(self, spec: TopicSpec, records: list[ProducerRecord]) -> list[Position]:
        publisher = self._publisher
        client = self.client
        if publisher is None:
            raise BrokerUnavailableError(self.url, "not connected")
        name = spec.name
        subjects = self._subjects.get(name)
        if subjects is None:
            subjects = [
                self.names.partition_subject(name, p).encode() for p in range(spec.partitions)
            ]
            self._subjects[name] = subjects
        compacted = spec.compacted
        ttl = b"Nats-TTL: %d\r\n" % max(1, math.ceil(spec.delete_retention_ms / 1000))
        limit = client.max_payload
        key_token = self.names.key_token
        messages: list[tuple[bytes, bytes | None, bytes]] = []
        partitions: list[int] = []
        for rec in records:
            p = rec.partition
            assert p is not None  # resolved by BaseBroker._prepare
            partitions.append(p)
            tombstone = rec.value is None
            header = encode_headers(
                rec.key, tombstone, rec.headers, ttl if tombstone and compacted else b""
            )
            payload = rec.value or b""
            size = len(payload) + (len(header) if header is not None else 0)
            if size > limit:
                raise RecordTooLargeError(name, size, limit)
            subject = subjects[p]
            if compacted:
                subject += b"." + key_token(rec.key or b"").encode()
            messages.append((subject, header, payload))
        try:
            seqs, now = await publisher.publish(messages, self._settings.request_timeout)
        except ApiError as exc:
            if exc.code == 503 or exc.err_code == STREAM_NOT_FOUND:
                self._specs.pop(name, None)
                self._subjects.pop(name, None)
                raise UnknownTopicError(name) from exc
            if exc.err_code == MESSAGE_TOO_LARGE and exc.index is not None:
                subject, header, payload = messages[exc.index]
                raise RecordTooLargeError(name, len(payload) + len(header or b""), limit) from exc
            raise translate(exc, self.url, topic=name) from exc
        except TRANSLATED as exc:
            raise translate(exc, self.url, topic=name) from exc
        return [Position(name, p, seq, now) for p, seq in zip(partitions, seqs, strict=True)]

    # ------------------------------------------------------------ offsets
    async def _edge(self, topic: str, partition: int, compacted: bool, *, last: bool) -> int | None:
        """The sequence of the partition's last (or first) record, ``None`` if it is empty."""
        subject = self.names.partition_filter(topic, partition, compacted=compacted)
        request = {"last_by_subj": subject} if last else {"seq": 0, "next_by_subj": subject}
        try:
            answer = await self.api(
                f"$JS.API.STREAM.MSG.GET.{self.names.stream(topic)}", request, topic=topic
            )
        except ApiError as exc:
            if exc.err_code == NO_MESSAGE_FOUND:
                return None
            raise translate(exc, self.url, topic=topic) from exc
        seq: int = answer["message"]["seq"]
        return seq

    async def end_offsets(self, topic: str) -> dict[int, int]:
        self._check_open()
        spec = await self._spec(topic)
        found = await asyncio.gather(
            *(self._edge(topic, p, spec.compacted, last=True) for p in range(spec.partitions))
        )
        return {p: 0 if seq is None else seq + 1 for p, seq in enumerate(found)}

    async def beginning_offsets(self, topic: str) -> dict[int, int]:
        self._check_open()
        spec = await self._spec(topic)
        found = await asyncio.gather(
            *(self._edge(topic, p, spec.compacted, last=False) for p in range(spec.partitions))
        )
        return {p: 0 if seq is None else seq for p, seq in enumerate(found)}

    async def last_sequence(self, topic: str) -> int:
        """The stream's last sequence (0 when it never held a record)."""
        try:
            info = await self.api(f"$JS.API.STREAM.INFO.{self.names.stream(topic)}", topic=topic)
        except ApiError as exc:
            raise translate(exc, self.url, topic=topic) from exc
        last: int = info["state"]["last_seq"]
        return last

    # ------------------------------------------------------------ subscribe
    def _subscription(self, options: SubscribeOptions) -> NatsSubscription:
        return NatsSubscription(self, options)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip().removeprefix("nats: ")
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in text:
        return f"connection refused ({text})"
    return text or type(exc).__name__


def _fail_pending_requests(client: Any, error: BaseException) -> None:
    """Fail the requests still waiting for an answer: nats-py's ``close`` leaves them to their
    own timeout (``request_timeout``, 30 s by default), and no answer can come any more."""
    pending = getattr(client, "_resp_map", None)
    if not isinstance(pending, dict):
        log.info("nats-py keeps its pending requests differently: they end at their timeout")
        return
    for future in list(pending.values()):
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(error)
