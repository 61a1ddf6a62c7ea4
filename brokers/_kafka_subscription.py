"""Subscriptions of the Kafka backend: one aiokafka consumer each.

Without a group the chosen partitions are assigned and each is sought to its start: the
beginning, the log end, or an explicit offset. Starts are always explicit seeks computed by
the broker (aiokafka's own "latest" reset uses ListOffsets, which under-reports the end on
Tansu; see :mod:`brokers._kafka`).

With a group, aiokafka runs Kafka's classic group protocol. Its rebalances are *eager*: a member
gives up every partition before the group deals them out again. So ``on_revoked`` is awaited
with all the partitions the member held, while it still owns them and can commit them, and
``on_assigned`` with the whole new assignment — a partition kept across a rebalance appears in
both. Partitions without a committed position start from ``start``: ``"earliest"`` through
``auto_offset_reset``, ``"latest"`` and explicit offsets by a seek in the assignment callback.
The callbacks run in aiokafka's rebalance (the rebalance waits for them); an exception they
raise is re-raised by the next :meth:`getmany`.

Memory: aiokafka keeps at most one fetched response per partition that has not been drained,
and requests a partition again only once the caller has taken its records. The fetch sizes
are derived from ``max_buffer`` (about :data:`_BYTES_PER_RECORD` bytes a record, never less
than one maximal record), which bounds what is held in bytes; the number of records in a
response is not known before they are decoded, so :attr:`buffered` is 0.

Tansu does not answer a waiting fetch when records arrive, it waits the fetch's full
``max_wait``; :data:`_FETCH_MAX_WAIT_MS` is therefore short, to keep latency low there (Kafka
answers as soon as records arrive, and only idle polls get more frequent).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from brokers._base import BaseSubscription, SubscribeOptions
from brokers._errors import ConfigurationError, StaleMemberError
from brokers._kafka_support import (
    TRANSLATED,
    forbid_auto_create,
    headers_of,
    leave_from_generation_zero,
    log,
    make_record,
    record_from_kafka,
    translating,
)
from brokers._types import Record, TopicPartition

if TYPE_CHECKING:
    from brokers._kafka import KafkaBroker

__all__ = ("KafkaSubscription",)

_FETCH_MAX_WAIT_MS = 100
_BYTES_PER_RECORD = 256
_FOREVER = 3600.0  # one wait of an unbounded getmany; it simply waits again
_GROUP_ERRORS_EVERY = 0.5  # while joining, how often to look for a failed membership


def _kafka_tp(tp: TopicPartition) -> Any:
    return KafkaTopicPartition(tp.topic, tp.partition)


def _raise_group_errors(consumer: Any) -> None:
    """Raise what made aiokafka's group membership fail (its ``getmany`` does the same)."""
    check = getattr(getattr(consumer, "_coordinator", None), "check_errors", None)
    if check is not None:
        check()


class _RecordBuffer(collections.OrderedDict[Any, Any]):
    """aiokafka's per-partition fetch results, made to decode straight into :class:`Record`.

    aiokafka's ``Fetcher`` keeps its undrained results in an ``OrderedDict`` (``_records``) and
    decodes each record with ``PartitionRecords._consumer_record`` when it is taken. Replacing
    that method on each stored result (an instance attribute: nothing global changes) makes
    ``getmany`` return our records without a ``ConsumerRecord`` in between. If a future aiokafka
    stores results differently, :meth:`KafkaSubscription._chunks` converts instead.
    """

    def __setitem__(self, tp: Any, result: Any) -> None:
        records = getattr(result, "_partition_records", None)
        if records is not None:
            records._consumer_record = record_from_kafka
        super().__setitem__(tp, result)


def _converted(chunk: list[Any]) -> list[Record]:
    return [
        make_record(
            r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, headers_of(r.headers)
        )
        for r in chunk
    ]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, subscription: KafkaSubscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._subscription._revoked()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._subscription._assigned(assigned)


class KafkaSubscription(BaseSubscription):
    _broker: KafkaBroker

    def __init__(self, broker: KafkaBroker, options: SubscribeOptions) -> None:
        super().__init__(broker, options)
        self._consumer: Any = None
        # resolved to wake a waiting getmany: on close, a callback error, a settled rebalance
        self._wake: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None  # raised by the next getmany
        # From aiokafka's revocation until our assignment callbacks are done nothing is read,
        # so no record of a gained partition comes before on_assigned has finished.
        self._rebalancing = options.group is not None
        self._epoch = 0  # rebalances begun: a read begun in an older epoch is dropped
        self._getter: asyncio.Future[Any] | None = None  # aiokafka's waiting getmany, if any
        self._stash: list[list[Record]] = []  # taken from aiokafka by a cancelled getmany

    # ------------------------------------------------------------ lifecycle
    async def _start(self) -> None:
        options = self._options
        broker = self._broker
        settings = broker.settings
        self._wake = asyncio.get_running_loop().create_future()
        fetch_bytes = max(
            options.max_buffer * _BYTES_PER_RECORD, settings.max_record_bytes + 65_536
        )
        partition_bytes = max(min(fetch_bytes, 1_048_576), settings.max_record_bytes + 65_536)
        kwargs: dict[str, Any] = {
            **broker._consumer_options(),
            "group_id": options.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "latest" if options.start == "latest" else "earliest",
            "fetch_max_wait_ms": _FETCH_MAX_WAIT_MS,
            "fetch_max_bytes": fetch_bytes,
            "max_partition_fetch_bytes": partition_bytes,
        }
        if options.group is not None:
            session_ms = int(options.session_timeout * 1000)
            kwargs["session_timeout_ms"] = session_ms
            kwargs["heartbeat_interval_ms"] = max(
                1, min(int(settings.heartbeat_interval * 1000), session_ms // 3)
            )
            # co-partitioned, like our own groups: with equal partition counts the range
            # assignor gives partition p of every topic to the same member (what tables and
            # joins over several topics need); aiokafka's default, round-robin, does not
            kwargs["partition_assignment_strategy"] = (RangePartitionAssignor,)
        with translating(broker.url, group=options.group):
            consumer = AIOKafkaConsumer(**kwargs)
            self._consumer = consumer
            forbid_auto_create(consumer._client)
            await consumer.start()
            self._hook_records(consumer)
            leave_from_generation_zero(consumer)
            if options.group is None:
                await self._assign_chosen()
            else:
                consumer.subscribe(list(options.topics), listener=_Listener(self))

    @staticmethod
    def _hook_records(consumer: Any) -> None:
        fetcher = getattr(consumer, "_fetcher", None)
        records = getattr(fetcher, "_records", None)
        if fetcher is not None and type(records) is collections.OrderedDict:
            fetcher._records = _RecordBuffer(records)
        else:
            log.info("aiokafka's fetcher has changed: records are converted after decoding")

    async def _close(self) -> None:
        self._signal()
        consumer, self._consumer = self._consumer, None
        self._stash = []
        if consumer is None:
            return
        try:
            async with asyncio.timeout(self._broker.settings.request_timeout):
                await consumer.stop()
        except TRANSLATED as exc:
            log.warning("closing the Kafka consumer of %r failed: %r", self, exc)

    # ------------------------------------------------------------ assignment
    async def _assign_chosen(self) -> None:
        """Without a group: assign the partitions asked for and seek each to its start."""
        options = self._options
        tps = await self._chosen_partitions()
        consumer = self._consumer
        consumer.assign([_kafka_tp(tp) for tp in sorted(tps)])
        starts = await self._start_offsets({tp: options.start_for(tp) for tp in tps})
        for tp, offset in starts.items():
            consumer.seek(_kafka_tp(tp), offset)
        await self._set_assignment(tps)

    async def _start_offsets(
        self, starts: Mapping[TopicPartition, Literal["earliest", "latest"] | int]
    ) -> dict[TopicPartition, int]:
        """Resolve ``"earliest"``/``"latest"`` to offsets, asking the broker once per topic."""
        broker = self._broker
        beginnings: dict[str, dict[int, int]] = {}
        ends: dict[str, dict[int, int]] = {}
        offsets: dict[TopicPartition, int] = {}
        for tp, start in starts.items():
            if start == "earliest":
                if tp.topic not in beginnings:
                    beginnings[tp.topic] = await broker.beginning_offsets(tp.topic)
                offsets[tp] = beginnings[tp.topic][tp.partition]
            elif start == "latest":
                if tp.topic not in ends:
                    ends[tp.topic] = await broker.end_offsets(tp.topic)
                offsets[tp] = ends[tp.topic][tp.partition]
            else:
                offsets[tp] = start
        return offsets

    async def _revoked(self) -> None:
        """aiokafka is about to rejoin the group: every partition is given up (eager).

        Records read before this point and not yet returned are dropped: after the rebalance
        aiokafka resumes every partition from its committed position.
        """
        self._rebalancing = True
        self._epoch += 1
        if self._getter is not None and not self._getter.done():
            self._getter.cancel()
        self._stash = []
        if self.closed or not self._assignment:
            return
        await self._guarded(self._set_assignment(frozenset()))

    async def _assigned(self, assigned: Any) -> None:
        try:
            if not self.closed:
                tps = frozenset(TopicPartition(tp.topic, tp.partition) for tp in assigned)
                await self._guarded(self._adopt(tps))
        finally:
            self._rebalancing = False
            self._signal()

    async def _adopt(self, tps: frozenset[TopicPartition]) -> None:
        await self._seek_uncommitted(tps)
        await self._set_assignment(tps)

    async def _seek_uncommitted(self, tps: frozenset[TopicPartition]) -> None:
        """Seek partitions with no committed position whose start is not ``"earliest"``."""
        starts = {tp: self._options.start_for(tp) for tp in sorted(tps)}
        starts = {tp: start for tp, start in starts.items() if start != "earliest"}
        if not starts:
            return
        consumer = self._consumer
        with translating(self._broker.url, group=self._options.group):
            committed = await asyncio.gather(*(consumer.committed(_kafka_tp(tp)) for tp in starts))
        todo = {tp: s for (tp, s), c in zip(starts.items(), committed, strict=True) if c is None}
        for tp, offset in (await self._start_offsets(todo)).items():
            consumer.seek(_kafka_tp(tp), offset)

    async def _guarded(self, step: Any) -> None:
        """Run an assignment step inside aiokafka's rebalance; keep its error for getmany."""
        try:
            await step
        except Exception as exc:  # noqa: BLE001 - handed to the caller by the next getmany
            log.debug("assignment callback of %r failed: %r", self, exc)
            self._failure = exc
            self._signal()

    def _signal(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _wake_fetch(self) -> None:
        self._signal()

    def _rearm(self) -> asyncio.Future[None]:
        """The future a waiting read watches (a fresh one once the last was resolved)."""
        wake = self._wake
        if wake is None or wake.done():
            wake = self._wake = asyncio.get_running_loop().create_future()
        return wake

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    # ------------------------------------------------------------ reading
    @property
    def buffered(self) -> int:
        # aiokafka decodes a fetched response only as records are taken, so their number is not
        # known; what is held is bounded in bytes by the fetch sizes (see the module docstring).
        return 0

    async def _fetch(self, timeout: float | None, limit: int) -> list[list[Record]]:
        if self._stash:
            return self._take_stash(limit)
        consumer = self._consumer
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        url, group = self._broker.url, self._options.group
        while True:
            self._raise_failure()
            if self.closed:
                return []
            if not self._rebalancing:
                # only what is fetched already: never waits (aiokafka waits only mid-rebalance)
                with translating(url, group=group):
                    data = await consumer.getmany(max_records=limit)
                if data:
                    return self._chunks(data)
            remaining = _FOREVER if deadline is None else deadline - loop.time()
            if remaining <= 0 or self._woken_up():
                return []
            wake = self._rearm()
            if self._rebalancing:  # wait for the assignment callbacks to finish
                with translating(url, group=group):
                    _raise_group_errors(consumer)
                await asyncio.wait((wake,), timeout=min(remaining, _GROUP_ERRORS_EVERY))
                continue
            data = await self._wait(consumer, wake, min(remaining, _FOREVER), limit)
            if data:
                return self._chunks(data)

    async def _wait(
        self, consumer: Any, wake: asyncio.Future[None], seconds: float, limit: int
    ) -> dict[Any, list[Any]]:
        """aiokafka's waiting ``getmany``, cut short by close, a callback error or a rebalance."""
        epoch = self._epoch
        getter = self._getter = asyncio.ensure_future(
            consumer.getmany(timeout_ms=max(1, int(seconds * 1000)), max_records=limit)
        )
        try:
            await asyncio.wait((getter, wake), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # cancelled: records aiokafka already handed over must not be lost
            if not getter.done():
                getter.cancel()
            elif (
                epoch == self._epoch
                and not getter.cancelled()
                and getter.exception() is None
                and getter.result()
            ):
                self._stash = self._chunks(getter.result())
            raise
        finally:
            self._getter = None
        if not getter.done():
            getter.cancel()
            return {}
        if getter.cancelled():  # by a rebalance
            return {}
        if epoch != self._epoch:  # read for partitions given up since: they are read again
            getter.exception()  # (retrieved, so that asyncio does not report it)
            return {}
        with translating(self._broker.url, group=self._options.group):
            data: dict[Any, list[Any]] = getter.result()
        return data

    @staticmethod
    def _chunks(data: dict[Any, list[Any]]) -> list[list[Record]]:
        chunks = list(data.values())
        for i, chunk in enumerate(chunks):
            if type(chunk[0]) is not Record:  # decoded before the hook was in place
                chunks[i] = _converted(chunk)
        return chunks

    def _take_stash(self, limit: int) -> list[list[Record]]:
        taken: list[list[Record]] = []
        while self._stash and limit > 0:
            chunk = self._stash[0]
            if len(chunk) <= limit:
                taken.append(self._stash.pop(0))
                limit -= len(chunk)
            else:
                taken.append(chunk[:limit])
                self._stash[0] = chunk[limit:]
                limit = 0
        return taken

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        self._stash = [c for c in self._stash if c[0].topic_partition != tp]
        try:
            self._consumer.seek(_kafka_tp(tp), offset)
        except TRANSLATED as exc:
            raise ConfigurationError(
                f"cannot seek {tp}: it is not assigned to this subscription right now ({exc})"
            ) from exc

    async def _commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        foreign = sorted(set(offsets) - self._assignment)
        if foreign:
            raise StaleMemberError(group, f"partitions {foreign} are not assigned to this member")
        commit = {_kafka_tp(tp): offset for tp, offset in offsets.items()}
        with translating(self._broker.url, group=group):
            async with asyncio.timeout(self._broker.settings.request_timeout):
                await self._consumer.commit(commit)

    async def _committed(self, group: str, tp: TopicPartition) -> int | None:
        with translating(self._broker.url, group=group):
            async with asyncio.timeout(self._broker.settings.request_timeout):
                offset: int | None = await self._consumer.committed(_kafka_tp(tp))
        return offset
