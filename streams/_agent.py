"""Agents: a function over a topic's stream, run by every worker of the app's group."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, TypeVar

from brokers import NeuroplexError, ProducerRecord, Record, Subscription, TopicPartition
from brokers._tasks import supervise
from streams._errors import DeclarationError
from streams._event import Event
from streams._placement import MisplacedPolicy, Placement
from streams._stream import EventStream, Source, source_stream

if TYPE_CHECKING:
    from streams._app import App
    from streams._table import Table
    from streams._topic import Topic
    from streams._windowed import WindowedTable

__all__ = ("Agent", "AgentError", "ErrorPolicy")

log = logging.getLogger("neuroplex.agents")

K = TypeVar("K")
V = TypeVar("V")

ErrorPolicy: TypeAlias = Literal["raise", "skip", "dead_letter"]
"""What an agent does with an event its code keeps failing on, after the retries."""

StreamFunction: TypeAlias = Callable[[EventStream], Awaitable[None]]
EventFunction: TypeAlias = Callable[[Event[Any, Any]], Any]


class AgentError(NeuroplexError):
    """An agent's code failed on an event and its error policy is ``raise``."""

    def __init__(self, agent: str, record: Record, attempts: int, cause: BaseException) -> None:
        self.agent = agent
        self.record = record
        self.attempts = attempts
        super().__init__(
            f"agent {agent!r} failed {attempts} time(s) on {record.topic}[{record.partition}]"
            f"@{record.offset}: {type(cause).__name__}: {str(cause).rstrip('.')}. Fix the code "
            "or the data, or "
            "declare the agent with on_error='skip' or 'dead_letter'."
        )


class Agent(Generic[K, V]):
    """A declared agent. Created by :meth:`App.agent`; run by the app."""

    def __init__(
        self,
        app: App,
        fn: StreamFunction | EventFunction,
        topic: Topic[K, V],
        *,
        name: str,
        concurrency: int,
        on_error: ErrorPolicy,
        retries: int,
        backoff: float,
        sink: Topic[Any, Any] | None,
        on_misplaced: MisplacedPolicy | None = None,
        tables: Sequence[Table[Any, Any] | WindowedTable[Any, Any]] | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.topic = topic
        self.name = name
        self.concurrency = concurrency
        self.on_error = on_error
        self.retries = retries
        self.backoff = backoff
        self.sink = sink
        self._on_misplaced = on_misplaced
        # the tables it says it changes (App.agent's tables=); None: not said
        self.tables = None if tables is None else tuple(tables)
        self._is_stream_function = inspect.iscoroutinefunction(fn)
        self._members: list[Subscription] = []

    def __repr__(self) -> str:
        return f"<Agent {self.name} on {self.topic.name} x{self.concurrency}>"

    @property
    def assignments(self) -> list[frozenset[TopicPartition]]:
        """The partitions each of this worker's members of the agent's group holds now."""
        return [sub.assignment for sub in self._members]

    def misplaced_policy(self) -> MisplacedPolicy:
        """What this agent does with a keyed record on another partition than its key's.

        Declared, or by default ``reroute`` when the agent changes tables and ``accept`` when
        not (another agent of its topic changes them, say). Raises :class:`DeclarationError`
        for ``accept`` on an agent that changes tables. The tables an agent changes are known
        once the app starts.
        """
        changed = [t for t in self.app.tables_of(self.topic) if t.writer == self.name]
        policy = self._on_misplaced or ("reroute" if changed else "accept")
        if policy == "accept" and changed:
            tables = ", ".join(repr(t.name) for t in changed)
            raise DeclarationError(
                f"agent {self.name!r}: on_misplaced='accept' would fold records found on "
                f"another partition than their key's into the wrong partition of {tables}; "
                "use 'reroute' (the default) or 'dead_letter'"
            )
        return policy

    @property
    def group(self) -> str:
        """The consumer group of this agent: ``<app>.<agent>``."""
        return f"{self.app.name}.{self.name}"

    async def __call__(self, stream: EventStream) -> None:
        """Run the agent's code over ``stream`` (a per-event function is looped here)."""
        if self._is_stream_function:
            await self.fn(stream)  # type: ignore[arg-type]  # checked: a coroutine function
            return
        fn: EventFunction = self.fn  # type: ignore[assignment]  # not a coroutine function
        sink = self.sink
        async for event in stream:
            result = fn(event)
            if inspect.isawaitable(result):
                result = await result
            if sink is not None and result is not None:
                await sink.send(event.key, result)

    async def run(self) -> None:
        """Run ``concurrency`` members of the agent's group until cancelled or finished."""
        await supervise(
            [
                asyncio.create_task(self._member(), name=f"agent {self.name} #{i}")
                for i in range(self.concurrency)
            ]
        )

    async def _member(self) -> None:
        app = self.app
        # the tables this agent changes: the others of its topic are another agent's
        tables = [t for t in app.tables_of(self.topic) if t.writer == self.name]
        source: Source | None = None
        policy = self.misplaced_policy()
        placement = None
        if policy != "accept":
            spec = await app.broker.describe_topic(self.topic.name)
            placement = Placement(spec.partitions, policy)

        async def revoked(tps: frozenset[TopicPartition]) -> None:
            if source is not None:
                source.forget(tps)
            # a partition another member of this agent here gained already keeps its state:
            # the tables are this worker's, whichever member holds the partition
            here = frozenset().union(*(m.assignment for m in self._members if m is not sub))
            await self._revoked(tps - here, tables)

        sub = app.broker.subscribe(
            self.topic.name,
            group=self.group,
            session_timeout=app.session_timeout,
            on_assigned=lambda tps: self._assigned(tps, tables),
            on_revoked=revoked,
        )
        async with sub:
            self._members.append(sub)
            source = Source(
                self.topic,
                sub,
                dead_letter=app.dead_letter,
                participants=list(tables),
                commit_interval=app.commit_interval,
                placement=placement,
                reroute=self._reroute,
                agent=self.name,
            )
            app.sources.add(source)
            if app.stopping:
                source.stop()  # the app began to stop while this member was joining
            try:
                await self._drive(source)
            finally:
                app.sources.discard(source)
                self._members.remove(sub)

    async def _drive(self, source: Source) -> None:
        """Run the agent's code over the source, applying the error policy to failures."""
        failures: dict[tuple[str, int, int], int] = {}
        while True:
            try:
                await self(source_stream(source))
            except Exception as exc:
                records = source.failed_records()
                if not records:
                    raise
                await self._failed(source, records, failures, exc)
            else:
                if not source.closed:
                    await source.finish_batch()
                return

    async def _reroute(self, copies: list[ProducerRecord]) -> None:
        """Send misplaced records to their keys' partitions of the agent's topic."""
        await self.app.broker.produce_batch(self.topic.name, copies)

    async def _failed(
        self,
        source: Source,
        records: list[Record],
        failures: dict[tuple[str, int, int], int],
        exc: Exception,
    ) -> None:
        first = records[0]
        where = (first.topic, first.partition, first.offset)
        attempts = failures[where] = failures.get(where, 0) + 1
        if attempts <= self.retries:
            log.warning(
                "agent %s failed on %s[%d]@%d (attempt %d of %d), retrying: %r",
                self.name,
                *where,
                attempts,
                self.retries + 1,
                exc,
            )
            await asyncio.sleep(self.backoff * 2 ** (attempts - 1))
            source.rewind(skip=False)
            return
        if self.on_error == "raise":
            raise AgentError(self.name, first, attempts, exc) from exc
        if self.on_error == "dead_letter":
            reason = f"agent {self.name}: {type(exc).__name__}: {exc}"
            for record in records:
                await self.app.dead_letter(record, reason)
        log.warning("agent %s gave up on %s[%d]@%d (%s): %r", self.name, *where, self.on_error, exc)
        del failures[where]
        source.rewind(skip=True)

    async def _assigned(
        self,
        tps: frozenset[TopicPartition],
        tables: list[Table[Any, Any] | WindowedTable[Any, Any]],
    ) -> None:
        for table in tables:
            await table.on_assigned(tps)

    async def _revoked(
        self,
        tps: frozenset[TopicPartition],
        tables: list[Table[Any, Any] | WindowedTable[Any, Any]],
    ) -> None:
        for table in tables:
            await table.on_revoked(tps)
