"""``kafka://host:port[,host:port]``: the log on a Kafka-protocol broker, through aiokafka.

Works with Apache Kafka, Redpanda and Tansu (the local broker of ``brokers.testing``), whose
differences from Kafka shaped several choices here (see the team's BROKERS.md):

- **Topics are never auto-created.** Topics are created with :meth:`create_topic` only, and
  every aiokafka client of the backend asks for metadata with ``allow_auto_topic_creation``
  off (see :func:`brokers._kafka_support.forbid_auto_create`).
- **Configs are written out at creation.** ``cleanup.policy``, ``retention.ms``,
  ``retention.bytes`` and ``delete.retention.ms`` are always set explicitly, because Tansu's
  DescribeConfigs returns only explicit configs and :meth:`describe_topic` reads them back.
  Topics are created with ``message.timestamp.type=LogAppendTime`` so a record's timestamp is
  the log's append time; a broker that ignores it (Tansu does) keeps the producer's timestamp,
  which is then also what :class:`~brokers.Position` reports.
- **No idempotent producer** (Tansu cannot issue producer ids); ``acks=all``.
- **Batches are built, not lingered.** A produce call's records for a partition (16 or more)
  go out as record batches built here, one future per batch; single records use aiokafka's
  ``send`` and its ``linger_ms``, so concurrent small writes still share batches.

End offsets
-----------
Strong reads wait for a view to reach the log end, so :meth:`end_offsets` must never
under-report. ListOffsets(latest) is exact on Kafka, but Tansu answers it with the base offset
of the last record batch plus one (180,008 for a partition of 200,000 records written in
batches), while the high watermark in its fetch responses is exact. So the end is taken in two
requests per partition leader:

1. ListOffsets(latest) gives ``L`` — exact on Kafka, a lower bound on Tansu, where ``L == 0``
   only for an empty partition;
2. for partitions with ``L > 0``, a Fetch at offset ``L - 1`` with ``max_bytes=1`` and
   ``min_bytes=0`` returns the high watermark at once (the offset holds data, so neither broker
   waits; at most one record batch comes back, and the request's wait is capped at 100 ms).

The end is ``max(L, high watermark)``. Beginning offsets come from ListOffsets(earliest),
which both brokers answer exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    OffsetOutOfRangeError,
    RecordListTooLargeError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from aiokafka.errors import RecordTooLargeError as KafkaRecordTooLargeError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.offset import OffsetRequest

from brokers._base import BaseBroker, SubscribeOptions, record_size
from brokers._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    RecordTooLargeError,
    TopicConflictError,
    UnknownTopicError,
)
from brokers._kafka_subscription import KafkaSubscription
from brokers._kafka_support import (
    TRANSLATED,
    KafkaTarget,
    error_for_code,
    forbid_auto_create,
    log,
    probe,
    translate,
    translating,
)
from brokers._settings import BrokerSettings, KafkaSettings
from brokers._types import Position, ProducerRecord, TopicSpec

__all__ = ("KafkaBroker",)

_LATEST = -1
_EARLIEST = -2
_UNKNOWN_TOPIC = UnknownTopicOrPartitionError.errno
_NO_LEADER = LeaderNotAvailableError.errno
_OFFSET_OUT_OF_RANGE = OffsetOutOfRangeError.errno
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, KafkaRecordTooLargeError)
# Records of one produce call for one partition from which they are sent as built batches.
_BUILD_MIN = 16
_NO_POSITION = Position("", -1, -1, -1)
# How long a high-watermark fetch may wait at most (it normally returns at once).
_HIGH_WATERMARK_WAIT_MS = 100
_DEFAULT_DELETE_RETENTION_MS = 86_400_000
_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source of a config set on the topic
_TIMESTAMP_TYPE = ("message.timestamp.type", "LogAppendTime")


def _optional_int(value: str | None) -> int | None:
    if value is None:
        return None
    number = int(value)
    return None if number < 0 else number


class KafkaBroker(BaseBroker):
    """The log on a Kafka-protocol broker. Obtain it with ``brokers.connect("kafka://...")``."""

    _settings: KafkaSettings

    def __init__(self, url: str, settings: KafkaSettings) -> None:
        if not isinstance(settings, KafkaSettings):
            raise ConfigurationError(
                f"{type(settings).__name__} given for kafka:// — use KafkaSettings"
            )
        target = KafkaTarget(url, settings)
        super().__init__(target.url, settings)
        self._target = target
        self._admin: Any = None
        self._client: Any = None  # the admin's connection pool, for the lower-level requests
        self._producer: Any = None
        self._leaders: dict[str, dict[int, int]] = {}  # topic -> partition -> leader node

    @classmethod
    def from_url(cls, url: str, settings: BrokerSettings) -> KafkaBroker:
        """``kafka://host:port[,host:port...]`` (credentials may also come in the URL)."""
        if not isinstance(settings, KafkaSettings):
            raise ConfigurationError(
                f"{type(settings).__name__} given for kafka:// — use KafkaSettings"
            )
        return cls(url, settings)

    @property
    def settings(self) -> KafkaSettings:
        return self._settings

    @property
    def target(self) -> KafkaTarget:
        return self._target

    # ------------------------------------------------------------ lifecycle
    async def _open(self) -> None:
        await probe(self._target)
        options = self._target.client_options()
        settings = self._settings
        with translating(self.url):
            admin = AIOKafkaAdminClient(**options)
            self._admin = admin
            self._client = admin._client
            forbid_auto_create(self._client)
            await admin.start()
            producer = AIOKafkaProducer(
                **options,
                acks="all",
                enable_idempotence=False,
                linger_ms=settings.linger_ms,
                max_request_size=max(1_048_576, settings.max_record_bytes + 16_384),
            )
            self._producer = producer
            forbid_auto_create(producer.client)
            await producer.start()

    async def _close(self) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self._producer is not None:  # stop() sends what is still buffered
            steps.append(("producer", self._producer.stop))
        if self._admin is not None:
            steps.append(("admin client", self._admin.close))
        self._producer = self._admin = self._client = None
        for name, stop in steps:
            try:
                async with asyncio.timeout(self._settings.request_timeout):
                    await stop()
            except TRANSLATED as exc:
                log.warning("closing the Kafka %s of %s failed: %r", name, self.url, exc)

    # ------------------------------------------------------------ metadata
    async def _send(
        self, request: Any, node: int | None = None, *, topic: str | None = None
    ) -> Any:
        client = self._client
        if node is None:
            node = client.get_random_node()
            if node is None:
                raise BrokerUnavailableError(self.url, "no broker in the cluster metadata")
        with translating(self.url, topic=topic):
            return await client.send(node, request)

    async def _metadata(self, topics: list[str] | None) -> dict[str, Any]:
        response = await self._send(MetadataRequest(topics, allow_auto_topic_creation=False))
        return {t["topic"]: t for t in response.to_object()["topics"]}

    async def _partition_leaders(self, name: str, *, refresh: bool = False) -> dict[int, int]:
        """Partition -> leader node of a topic (cached until an error says it moved)."""
        leaders = None if refresh else self._leaders.get(name)
        if leaders is not None:
            return leaders
        deadline = time.monotonic() + self._settings.request_timeout
        while True:
            info = (await self._metadata([name])).get(name)
            code = info["error_code"] if info is not None else _UNKNOWN_TOPIC
            if code == _UNKNOWN_TOPIC:
                self._leaders.pop(name, None)
                raise UnknownTopicError(name)
            assert info is not None
            partitions = info["partitions"]
            leaders = {p["partition"]: p["leader"] for p in partitions}
            if code == 0 and partitions and all(node >= 0 for node in leaders.values()):
                self._leaders[name] = leaders
                return leaders
            # LEADER_NOT_AVAILABLE and the like, right after creation: ask again shortly
            if time.monotonic() > deadline:
                raise translate(error_for_code(code or _NO_LEADER), self.url, topic=name)
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------ topics
    async def _create_topic(self, spec: TopicSpec) -> TopicSpec:
        configs = {
            _TIMESTAMP_TYPE[0]: _TIMESTAMP_TYPE[1],
            **spec.config,
            "cleanup.policy": "compact" if spec.compacted else "delete",
            "retention.ms": str(spec.retention_ms if spec.retention_ms is not None else -1),
            "retention.bytes": str(
                spec.retention_bytes if spec.retention_bytes is not None else -1
            ),
            "delete.retention.ms": str(spec.delete_retention_ms),
        }
        new = NewTopic(
            spec.name,
            spec.partitions,
            self._settings.replication_factor,
            topic_configs=configs,
        )
        with translating(self.url, topic=spec.name):
            response = await self._admin.create_topics(
                [new], timeout_ms=int(self._settings.request_timeout * 1000)
            )
        for entry in response.topic_errors:
            code, message = entry[1], (entry[2] if len(entry) > 2 else None)
            if code == TopicAlreadyExistsError.errno:
                return self._same_or_conflict(spec, await self._describe_topic(spec.name))
            if code:
                raise translate(error_for_code(code, message), self.url, topic=spec.name)
        await self._partition_leaders(spec.name, refresh=True)  # wait until it is usable
        return spec

    @staticmethod
    def _same_or_conflict(wanted: TopicSpec, actual: TopicSpec) -> TopicSpec:
        if actual.partitions != wanted.partitions:
            raise TopicConflictError(
                wanted.name, f"it has {actual.partitions} partitions, not {wanted.partitions}"
            )
        if actual.compacted != wanted.compacted:
            raise TopicConflictError(
                wanted.name, f"compacted={actual.compacted}, not {wanted.compacted}"
            )
        return actual

    async def _describe_topic(self, name: str) -> TopicSpec:
        leaders = await self._partition_leaders(name, refresh=True)
        resource = ConfigResource(ConfigResourceType.TOPIC, name)
        with translating(self.url, topic=name):
            responses = await self._admin.describe_configs([resource])
        values: dict[str, str] = {}
        explicit: dict[str, str] = {}
        for response in responses:
            for error_code, error_message, _type, _name, entries in response.resources:
                if error_code:
                    raise translate(error_for_code(error_code, error_message), self.url, topic=name)
                for entry in entries:
                    config, value = entry[0], entry[1]
                    if value is None:
                        continue
                    values[config] = value
                    set_on_topic = (
                        entry[3] == _DYNAMIC_TOPIC_CONFIG
                        if response.API_VERSION >= 1
                        else not entry[3]
                    )
                    if set_on_topic:
                        explicit[config] = value
        for mapped in ("cleanup.policy", "retention.ms", "retention.bytes", "delete.retention.ms"):
            explicit.pop(mapped, None)
        if explicit.get(_TIMESTAMP_TYPE[0]) == _TIMESTAMP_TYPE[1]:
            del explicit[_TIMESTAMP_TYPE[0]]
        delete_retention = _optional_int(values.get("delete.retention.ms"))
        return TopicSpec(
            name,
            partitions=len(leaders),
            compacted="compact" in values.get("cleanup.policy", "delete").split(","),
            retention_ms=_optional_int(values.get("retention.ms")),
            retention_bytes=_optional_int(values.get("retention.bytes")),
            delete_retention_ms=(
                delete_retention if delete_retention is not None else _DEFAULT_DELETE_RETENTION_MS
            ),
            config=explicit,
        )

    async def _list_topics(self) -> list[str]:
        topics = await self._metadata(None)
        return [
            name
            for name, info in topics.items()
            if info["error_code"] == 0 and not info.get("is_internal") and not name.startswith("__")
        ]

    async def _delete_topic(self, name: str) -> None:
        with translating(self.url, topic=name):
            response = await self._admin.delete_topics(
                [name], timeout_ms=int(self._settings.request_timeout * 1000)
            )
        self._leaders.pop(name, None)
        for entry in response.topic_error_codes:
            code = entry[1]
            if code == _UNKNOWN_TOPIC:
                raise UnknownTopicError(name)
            if code:
                raise translate(error_for_code(code), self.url, topic=name)
        # Deletion is asynchronous on Kafka: return once the metadata no longer shows the topic.
        deadline = time.monotonic() + self._settings.request_timeout
        while time.monotonic() < deadline:
            info = (await self._metadata([name])).get(name)
            if info is None or info["error_code"] == _UNKNOWN_TOPIC:
                return
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------ produce
    async def _append(self, spec: TopicSpec, records: list[ProducerRecord]) -> list[Position]:
        """Hand every record to the producer first, then wait for all acknowledgements.

        A partition that gets at least :data:`_BUILD_MIN` records of the call receives them as
        whole record batches built here (``create_batch``/``send_batch``): one future per batch
        instead of one per record, which makes large batches several times faster. Fewer
        records go through ``send``, where they share the producer's lingering batches with
        concurrent callers.
        """
        topic = spec.name
        now = time.time_ns() // 1_000_000
        by_partition: dict[int, list[int]] = defaultdict(list)
        for index, rec in enumerate(records):
            assert rec.partition is not None  # resolved by BaseBroker._prepare
            by_partition[rec.partition].append(index)
        sent: list[tuple[asyncio.Future[Any], int, list[int]]] = []  # (future, partition, indexes)
        failure: BaseException | None = None
        try:
            for partition, indexes in by_partition.items():
                if len(indexes) >= _BUILD_MIN:
                    await self._send_built(topic, partition, records, indexes, now, sent)
                    continue
                for index in indexes:
                    rec = records[index]
                    if rec.value is None and rec.key is None:  # send() refuses these
                        await self._send_built(topic, partition, records, [index], now, sent)
                        continue
                    future = await self._producer.send(
                        topic,
                        rec.value,
                        key=rec.key,
                        partition=partition,
                        timestamp_ms=now,
                        headers=list(rec.headers) if rec.headers else None,
                    )
                    sent.append((future, partition, [index]))
        except TRANSLATED as exc:
            failure = exc  # what was handed over already is still awaited below
        results = await asyncio.gather(*(future for future, _, _ in sent), return_exceptions=True)
        positions: list[Position] = [_NO_POSITION] * len(records)
        for (_, partition, indexes), meta in zip(sent, results, strict=True):
            if isinstance(meta, BaseException):
                failure = failure or meta
                continue
            # the broker's append time on LogAppendTime topics, else the time we stamped
            timestamp = meta.timestamp if meta.timestamp_type == 1 else now
            base = meta.offset  # a batch's first offset; its records follow one by one
            for step, index in enumerate(indexes):
                positions[index] = Position(topic, partition, base + step, timestamp)
        if failure is not None:
            if isinstance(failure, _TOO_LARGE):
                raise RecordTooLargeError(
                    topic, max(record_size(r) for r in records), await self._size_limit(topic)
                ) from failure
            if isinstance(failure, UnknownTopicOrPartitionError):
                self._specs.pop(topic, None)
            raise translate(failure, self.url, topic=topic) from failure
        return positions

    async def _send_built(
        self,
        topic: str,
        partition: int,
        records: list[ProducerRecord],
        indexes: list[int],
        timestamp: int,
        sent: list[tuple[asyncio.Future[Any], int, list[int]]],
    ) -> None:
        """Send ``records[i] for i in indexes`` to one partition as closed record batches.

        A closed batch is sent without lingering; the producer keeps batches of a partition
        in order.
        """
        producer = self._producer
        batch = producer.create_batch()
        members: list[int] = []
        for index in indexes:
            rec = records[index]
            headers = list(rec.headers) if rec.headers else []
            appended = batch.append(
                key=rec.key, value=rec.value, timestamp=timestamp, headers=headers
            )
            if appended is not None:
                members.append(index)
                continue
            batch.close()  # full: send it and start the next one
            sent.append(
                (await producer.send_batch(batch, topic, partition=partition), partition, members)
            )
            batch = producer.create_batch()
            members = [index]
            appended = batch.append(
                key=rec.key, value=rec.value, timestamp=timestamp, headers=headers
            )
            if appended is None:
                raise AssertionError("an empty record batch refused a record")
        batch.close()
        sent.append(
            (await producer.send_batch(batch, topic, partition=partition), partition, members)
        )

    async def _size_limit(self, topic: str) -> int:
        """The broker's record size limit for ``topic``, as far as it tells (for the error)."""
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
        with contextlib.suppress(*TRANSLATED, LookupError, TypeError, ValueError):
            responses = await self._admin.describe_configs([resource])
            for response in responses:
                for *_, entries in response.resources:
                    for entry in entries:
                        if entry[0] == "max.message.bytes" and entry[1]:
                            return int(entry[1])
        return self._settings.max_record_bytes

    # ------------------------------------------------------------ offsets
    async def end_offsets(self, topic: str) -> dict[int, int]:
        self._check_open()
        for attempt in range(2):
            leaders = await self._partition_leaders(topic, refresh=attempt > 0)
            latest = await self._list_offsets(topic, leaders, _LATEST)
            if latest is None:
                continue  # a leader moved: refresh the metadata and ask again
            ask = {p: end - 1 for p, end in latest.items() if end > 0}
            high = await self._high_watermarks(topic, leaders, ask) if ask else {}
            if high is None:
                continue  # a leader moved
            return {p: max(end, high.get(p, -1)) for p, end in sorted(latest.items())}
        raise BrokerUnavailableError(self.url, f"the leaders of topic {topic!r} keep moving")

    async def beginning_offsets(self, topic: str) -> dict[int, int]:
        self._check_open()
        for attempt in range(2):
            leaders = await self._partition_leaders(topic, refresh=attempt > 0)
            earliest = await self._list_offsets(topic, leaders, _EARLIEST)
            if earliest is not None:
                return dict(sorted(earliest.items()))
        raise BrokerUnavailableError(self.url, f"the leaders of topic {topic!r} keep moving")

    @staticmethod
    async def _gather(requests: list[Any]) -> list[Any]:
        """Await every request (one per leader), then raise the first error if any failed."""
        results = await asyncio.gather(*requests, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    @staticmethod
    def _by_leader(leaders: dict[int, int]) -> dict[int, list[int]]:
        nodes: dict[int, list[int]] = defaultdict(list)
        for partition, node in sorted(leaders.items()):
            nodes[node].append(partition)
        return nodes

    async def _list_offsets(
        self, topic: str, leaders: dict[int, int], timestamp: int
    ) -> dict[int, int] | None:
        """ListOffsets for every partition; ``None`` when a partition's leader moved."""
        requests = [
            self._send(
                OffsetRequest(-1, 0, [(topic, [(p, timestamp) for p in partitions])]),
                node,
                topic=topic,
            )
            for node, partitions in self._by_leader(leaders).items()
        ]
        offsets: dict[int, int] = {}
        for response in await self._gather(requests):
            for _topic, partitions in response.topics:
                for partition, error_code, *info in partitions:
                    if error_code == _UNKNOWN_TOPIC:
                        self._leaders.pop(topic, None)
                        await self._partition_leaders(topic, refresh=True)  # raises if gone
                        return None
                    if error_code == _OFFSET_OUT_OF_RANGE:
                        continue  # retention removed every record: ListOffsets' end stands
                    if error_code:
                        error = error_for_code(error_code)
                        if getattr(error, "retriable", False):
                            self._leaders.pop(topic, None)
                            return None
                        raise translate(error, self.url, topic=topic)
                    # v0 answers a list of offsets, v1+ (timestamp, offset)
                    offsets[partition] = info[0][0] if response.API_VERSION == 0 else info[-1]
        return offsets

    async def _high_watermarks(
        self, topic: str, leaders: dict[int, int], offsets: dict[int, int]
    ) -> dict[int, int] | None:
        """The high watermark of each partition in ``offsets``, by a fetch at that offset.

        ``None`` when a partition's leader moved (ask again). Any other error is raised: an
        end taken from ListOffsets alone may be too low on some brokers (Tansu), and a strong
        read built on a low end would not be linearizable.
        """
        requests = []
        for node, partitions in self._by_leader(leaders).items():
            wanted = [(p, offsets[p], 1) for p in partitions if p in offsets]
            if wanted:
                request = FetchRequest(_HIGH_WATERMARK_WAIT_MS, 0, 1, 0, [(topic, wanted)])
                requests.append(self._send(request, node, topic=topic))
        high: dict[int, int] = {}
        for response in await self._gather(requests):
            for _topic, partitions in response.topics:
                for partition_data in partitions:
                    partition, error_code, watermark = partition_data[:3]
                    if error_code == _OFFSET_OUT_OF_RANGE:
                        continue  # retention removed every record: ListOffsets' end stands
                    if error_code:
                        error = error_for_code(error_code)
                        if getattr(error, "retriable", False):
                            self._leaders.pop(topic, None)
                            return None
                        raise translate(error, self.url, topic=topic)
                    if watermark >= 0:
                        high[partition] = watermark
        return high

    # ------------------------------------------------------------ subscribe
    def _subscription(self, options: SubscribeOptions) -> KafkaSubscription:
        return KafkaSubscription(self, options)

    def _consumer_options(self) -> dict[str, Any]:
        """Options for the subscriptions' consumers (connection and security)."""
        return self._target.client_options()
