"""Consumer groups on NATS: JetStream has no Kafka-style group protocol, so it is built here.

Everything lives in one KV bucket, ``<prefix>_groups`` (history 1, read from the stream leader),
under these keys (``<g>`` is the group name, as is when it is ``[A-Za-z0-9_-]+``, else ``=`` and
its base64url):

``m.<g>.gen``
    the **generation**: the member list ``{"members": {id: {"topics": [...],
    "session_timeout": s}}}``. Its KV revision is the generation number, so it only grows.
    Members change it by compare-and-set (read, edit, write expecting the revision read):
    joining adds oneself, leaving removes oneself, and a member removes others it found
    silent. Every member computes the same assignment from it with
    :func:`brokers._groups.assign_partitions`; no leader is needed.
``m.<g>.hb.<member>``
    a member's **heartbeat**, rewritten every ``heartbeat_interval`` (at most a third of the
    session timeout). Every member watches ``m.<g>.>``; a member whose heartbeat it has not
    seen for that member's ``session_timeout`` is removed from the generation by whoever
    notices first. An observer that stopped seeing its own heartbeats (its watch is stale)
    expires nobody. A member that finds itself removed joins again.
``o.<g>.<topic>.<partition>``
    the **committed position** ``{"offset": n, "member": id, "generation": rev}``. A member
    gaining a partition first *claims* it: it rewrites the key (same offset, its own id) by
    compare-and-set, and resumes from that offset. Each commit is a compare-and-set against
    the revision of the member's own last write, so once a new owner has claimed the
    partition, the old owner's commits fail with :class:`~brokers.StaleMemberError`. A commit
    is also refused when the member has not yet adopted the latest generation, or for a
    partition not assigned to it, as on every backend.

A rebalance is adopted inside ``getmany`` (the consumer's own task), before any record: partitions
kept are checked to still hold this member's claim (a member that was expired and rejoined may
have lost them in between; such partitions are revoked and assigned again), gained ones are
claimed, and only then are ``on_revoked`` / ``on_assigned`` called.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from brokers import json
from brokers._base import SubscribeOptions
from brokers._errors import BrokerError, NeuroplexError, StaleMemberError, UnknownTopicError
from brokers._groups import assign_partitions
from brokers._nats_support import RECOVERABLE, log, translating
from brokers._tasks import supervise
from brokers._types import TopicPartition

if TYPE_CHECKING:
    from brokers._nats import NatsBroker

__all__ = ("Adoption", "Generation", "GroupMember")

Resolve: TypeAlias = Callable[
    [Iterable[TopicPartition], dict[TopicPartition, int | None]],
    Awaitable[dict[TopicPartition, int]],
]
"""Where partitions start, given their committed positions (the subscription decides)."""

_CAS_ATTEMPTS = 50


@dataclass(frozen=True, slots=True)
class Member:
    topics: tuple[str, ...]
    session_timeout: float


@dataclass(frozen=True, slots=True)
class Generation:
    """The group's member list; ``revision`` (its KV revision) is the generation number."""

    revision: int = 0
    members: Mapping[str, Member] = field(default_factory=dict)

    @classmethod
    def decode(cls, data: bytes | None, revision: int) -> Generation:
        if not data:
            return cls(revision)
        try:
            raw: dict[str, Any] = json.loads(data)["members"]
            members = {
                str(m): Member(tuple(info["topics"]), float(info["session_timeout"]))
                for m, info in raw.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("nats: ignoring an unreadable group generation %r", data[:200])
            return cls(revision)
        return cls(revision, members)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "members": {
                    m: {"topics": list(info.topics), "session_timeout": info.session_timeout}
                    for m, info in sorted(self.members.items())
                }
            }
        )

    def with_member(self, member: str, info: Member) -> Generation:
        return Generation(self.revision, {**self.members, member: info})

    def without(self, gone: Iterable[str]) -> Generation:
        drop = set(gone)
        return Generation(self.revision, {m: i for m, i in self.members.items() if m not in drop})


@dataclass(frozen=True, slots=True)
class Adoption:
    """A generation made ready to adopt: this member's partitions, claims and start offsets."""

    generation: Generation
    assignment: frozenset[TopicPartition]
    regained: frozenset[TopicPartition]  # kept partitions whose claim another member took
    starts: dict[TopicPartition, int]  # for the gained and the regained
    claims: dict[TopicPartition, int]  # KV revision of this member's claim, per partition


def _member_id(client_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", client_id)[:40] or "member"
    return f"{safe}-{uuid.uuid4().hex[:12]}"


class GroupMember:
    """This subscription's membership of a group (see the module docstring)."""

    def __init__(
        self,
        broker: NatsBroker,
        group: str,
        options: SubscribeOptions,
        *,
        wake: Callable[[], None],
    ) -> None:
        self.group = group
        self.id = _member_id(broker.settings.client_id)
        self._broker = broker
        self._wake = wake
        names = broker.names
        self._gen_key = names.generation_key(group)
        self._hb_prefix = names.member_prefix(group)
        self._filter = names.membership_filter(group)
        self._info = Member(tuple(sorted(set(options.topics))), options.session_timeout)
        self._interval = min(broker.settings.heartbeat_interval, options.session_timeout / 3)
        self._seen = Generation()
        self._adopted: Generation | None = None
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._claims: dict[TopicPartition, int] = {}
        self._heard: dict[str, float] = {}  # member -> when its heartbeat was last seen
        self._kv: KeyValue | None = None
        self._commit_lock = asyncio.Lock()
        self._failure: BaseException | None = None

    @property
    def changed(self) -> bool:
        """Whether a generation newer than the adopted one is known."""
        return self._adopted is None or self._adopted.revision != self._seen.revision

    def check(self) -> None:
        """Raise if the background work stopped on an unexpected error."""
        if self._failure is not None:
            raise BrokerError(
                f"group {self.group!r}: membership stopped: {self._failure!r}"
            ) from self._failure

    # ------------------------------------------------------------ KV
    async def _store(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._broker.group_kv()
        return self._kv

    async def _get(self, key: str) -> tuple[bytes | None, int]:
        """The key's value (``None`` if absent or deleted) and revision (0 if never written)."""
        kv = await self._store()
        with translating(self._broker.url):
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError as exc:
                gone = exc.entry
                return None, (gone.revision or 0) if gone is not None else 0
        return entry.value, entry.revision or 0

    async def _cas(self, key: str, value: bytes, last: int) -> int | None:
        """Write ``value`` if the key is still at revision ``last``: the new revision, or
        ``None`` when someone wrote it meanwhile."""
        kv = await self._store()
        with translating(self._broker.url):
            try:
                return await kv.update(key, value, last=last)
            except nats.js.errors.KeyWrongLastSequenceError:
                return None

    async def _purge(self, key: str) -> None:
        """Remove a key without leaving a delete marker behind."""
        bucket = self._broker.names.bucket
        await self._broker.api(
            f"$JS.API.STREAM.PURGE.KV_{bucket}", {"filter": f"$KV.{bucket}.{key}"}
        )

    def _offsets_key(self, tp: TopicPartition) -> str:
        return self._broker.names.offsets_key(self.group, tp.topic, tp.partition)

    # ------------------------------------------------------------ membership
    def _observe(self, generation: Generation) -> None:
        if generation.revision > self._seen.revision:
            self._seen = generation
            self._wake()

    async def _change(self, edit: Callable[[Generation], Generation | None]) -> None:
        """Compare-and-set the generation with ``edit`` (``None``: nothing to change)."""
        for _ in range(_CAS_ATTEMPTS):
            data, revision = await self._get(self._gen_key)
            current = Generation.decode(data, revision)
            edited = edit(current)
            if edited is None:
                self._observe(current)
                return
            written = await self._cas(self._gen_key, edited.encode(), revision)
            if written is not None:
                self._observe(Generation(written, edited.members))
                return
            await asyncio.sleep(random.uniform(0.0, 0.05))  # another member won: retry
        raise BrokerError(f"group {self.group!r}: membership could not be updated (contention)")

    def _joined(self, generation: Generation) -> Generation | None:
        if generation.members.get(self.id) == self._info:
            return None
        return generation.with_member(self.id, self._info)

    async def _beat(self) -> None:
        kv = await self._store()
        with translating(self._broker.url):
            await kv.put(self._hb_prefix + self.id, json.dumps({"at": time.time()}))

    async def join(self) -> None:
        await self._beat()
        self._heard[self.id] = time.monotonic()
        await self._change(self._joined)

    async def leave(self) -> None:
        """Leave at once, so the others rebalance without waiting for the session timeout."""

        def left(generation: Generation) -> Generation | None:
            return generation.without([self.id]) if self.id in generation.members else None

        client = self._broker._client
        if client is None or not client.is_connected:
            log.warning(
                "nats: group %r: not connected, so member %s cannot leave; the others will "
                "expire it after its session timeout",
                self.group,
                self.id,
            )
            return
        try:
            async with asyncio.timeout(min(5.0, self._broker.settings.request_timeout)):
                await self._change(left)
                await self._purge(self._hb_prefix + self.id)
        except RECOVERABLE as exc:
            log.warning(
                "nats: group %r: leaving cleanly failed (%r); the others will expire "
                "this member after its session timeout",
                self.group,
                exc,
            )

    async def run(self) -> None:
        """Heartbeats and the membership watch, until cancelled."""
        try:
            await supervise(
                [
                    asyncio.create_task(self._heartbeats(), name=f"heartbeats of {self.id}"),
                    asyncio.create_task(self._watch(), name=f"membership watch of {self.id}"),
                ]
            )
        except Exception as exc:  # noqa: BLE001 - a bug: surfaced by check() in the next getmany
            log.exception("nats: group %r: membership stopped", self.group)
            self._failure = exc
            self._wake()

    async def _heartbeats(self) -> None:
        while True:
            try:
                await self._beat()
                if self.id not in self._seen.members:
                    log.info(
                        "nats: group %r: member %s was expired; joining again", self.group, self.id
                    )
                    await self._change(self._joined)
                await self._expire()
            except RECOVERABLE as exc:
                log.warning("nats: group %r: heartbeat failed: %s", self.group, exc)
            await asyncio.sleep(self._interval)

    async def _expire(self) -> None:
        now = time.monotonic()
        if now - self._heard.get(self.id, 0.0) > self._info.session_timeout:
            return  # our own heartbeats are not coming back: our view is stale, judge nobody
        members = self._seen.members
        for member in [m for m in self._heard if m not in members and m != self.id]:
            del self._heard[member]
        silent = {
            member
            for member, info in members.items()
            if member != self.id
            and now - self._heard.setdefault(member, now) > info.session_timeout
        }
        if not silent:
            return
        log.info("nats: group %r: expiring silent members %s", self.group, sorted(silent))

        def expired(generation: Generation) -> Generation | None:
            return generation.without(silent) if silent & generation.members.keys() else None

        await self._change(expired)
        for member in silent:
            self._heard.pop(member, None)
            await self._purge(self._hb_prefix + member)

    async def _watch(self) -> None:
        kv = await self._store()
        while True:
            try:
                with translating(self._broker.url):
                    watcher = await kv.watch(self._filter)
            except NeuroplexError as exc:
                log.warning("nats: group %r: cannot watch membership: %s", self.group, exc)
                await asyncio.sleep(self._interval)
                continue
            try:
                while True:
                    # Our own heartbeat comes by every interval: silence means the watch broke
                    # (its consumer is gone after a server restart, say), so watch anew.
                    try:
                        async with asyncio.timeout(3 * self._interval + 2.0):
                            entry = await anext(watcher)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        log.info(
                            "nats: group %r: membership watch went silent; restarting it",
                            self.group,
                        )
                        break
                    if entry is None:  # the end of the initial values
                        continue
                    if entry.key == self._gen_key:
                        if entry.operation is None:
                            self._observe(Generation.decode(entry.value, entry.revision or 0))
                    elif entry.key.startswith(self._hb_prefix):
                        member = entry.key[len(self._hb_prefix) :]
                        if entry.operation in (KV_DEL, KV_PURGE):
                            self._heard.pop(member, None)
                        else:
                            self._heard[member] = time.monotonic()
            finally:
                await self._stop_watch(watcher)

    async def _stop_watch(self, watcher: Any) -> None:
        """Stop a KV watch and delete its consumer (else the server keeps it 5 minutes)."""
        sub = getattr(watcher, "_sub", None)
        consumer = getattr(sub, "_consumer", None)
        try:
            await watcher.stop()
            client = self._broker._client
            if isinstance(consumer, str) and client is not None and client.is_connected:
                async with asyncio.timeout(1.0):
                    await self._broker.api(
                        f"$JS.API.CONSUMER.DELETE.KV_{self._broker.names.bucket}.{consumer}"
                    )
        except RECOVERABLE as exc:
            log.debug("nats: stopping a watch: %r", exc)

    # ------------------------------------------------------------ rebalancing
    async def prepare(self, resolve: Resolve) -> Adoption:
        """Compute this member's partitions in the latest generation, check and claim them."""
        generation = self._seen
        assignment: frozenset[TopicPartition] = frozenset()
        if self.id in generation.members:
            topics = {m: info.topics for m, info in generation.members.items()}
            partitions: list[TopicPartition] = []
            for topic in sorted({t for ts in topics.values() for t in ts}):
                try:
                    spec = await self._broker._spec(topic)
                except UnknownTopicError:
                    continue
                partitions += [TopicPartition(topic, p) for p in range(spec.partitions)]
            assignment = assign_partitions(topics, partitions).get(self.id, frozenset())
        kept = sorted(assignment & self._assignment)
        found = await asyncio.gather(*(self._get(self._offsets_key(tp)) for tp in kept))
        regained = frozenset(
            tp
            for tp, (_, revision) in zip(kept, found, strict=True)
            if revision != self._claims.get(tp)
        )
        claims = {tp: self._claims[tp] for tp in kept if tp not in regained}
        claiming = sorted((assignment - self._assignment) | regained)
        claimed = await asyncio.gather(*(self._claim(tp, generation) for tp in claiming))
        committed: dict[TopicPartition, int | None] = {}
        for tp, (offset, revision) in zip(claiming, claimed, strict=True):
            committed[tp] = offset
            claims[tp] = revision
        starts = await resolve(claiming, committed)
        return Adoption(generation, assignment, regained, starts, claims)

    async def _claim(self, tp: TopicPartition, generation: Generation) -> tuple[int | None, int]:
        key = self._offsets_key(tp)
        for _ in range(_CAS_ATTEMPTS):
            data, revision = await self._get(key)
            offset = _offset(data)
            value = json.dumps(
                {"offset": offset, "member": self.id, "generation": generation.revision}
            )
            written = await self._cas(key, value, revision)
            if written is not None:
                return offset, written
        raise BrokerError(f"group {self.group!r}: could not claim {tp} (contention)")

    def adopt(self, adoption: Adoption) -> None:
        self._adopted = adoption.generation
        self._assignment = adoption.assignment
        self._claims = dict(adoption.claims)

    # ------------------------------------------------------------ positions
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        async with self._commit_lock:
            adopted = self._adopted
            if adopted is None or adopted.revision != self._seen.revision:
                raise StaleMemberError(
                    self.group,
                    "the group rebalanced since this member's assignment (a new generation)",
                )
            foreign = sorted(set(offsets) - self._assignment)
            if foreign:
                raise StaleMemberError(
                    self.group, f"partitions {foreign} are not assigned to this member"
                )

            async def one(tp: TopicPartition, offset: int) -> TopicPartition | None:
                value = json.dumps(
                    {"offset": offset, "member": self.id, "generation": adopted.revision}
                )
                written = await self._cas(self._offsets_key(tp), value, self._claims[tp])
                if written is None:
                    return tp
                self._claims[tp] = written
                return None

            lost = [tp for tp in await asyncio.gather(*(one(*i) for i in offsets.items())) if tp]
            if lost:
                raise StaleMemberError(
                    self.group, f"partitions {sorted(lost)} were claimed by another member"
                )

    async def committed(self, tp: TopicPartition) -> int | None:
        data, _ = await self._get(self._offsets_key(tp))
        return _offset(data)


def _offset(data: bytes | None) -> int | None:
    if not data:
        return None
    try:
        offset = json.loads(data).get("offset")
    except (ValueError, AttributeError):
        return None
    return offset if isinstance(offset, int) else None
