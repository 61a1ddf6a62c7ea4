"""The App: declarations (topics, agents, tables) and their lifecycle on one broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import brokers
import brokers.json
from brokers import (
    Broker,
    ProducerRecord,
    Record,
    ResourceStateError,
    TopicSpec,
    UnsupportedURLError,
)
from brokers._tasks import stop_task, supervise
from streams._agent import Agent, ErrorPolicy
from streams._errors import DeclarationError
from streams._event import Event
from streams._global import GlobalTable
from streams._placement import MISPLACED_POLICIES, ORIGIN_HEADER, MisplacedPolicy, passed_on
from streams._store import StoreKind
from streams._stream import EventStream, Source
from streams._table import RestoreProgress, Table
from streams._topic import DEAD_LETTER_SUFFIX, Topic
from streams._windowed import ClosedWindow, WindowedTable
from streams._windows import WindowSpec

__all__ = ("App",)

log = logging.getLogger("neuroplex.app")

K = TypeVar("K")
V = TypeVar("V")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_BROKER = "memory://"
BROKER_ENV = "NEUROPLEX_BROKER"


class App:
    """A stream-processing application: its topics, agents and tables, on one broker.

    Declaring touches no event loop and no network; ``async with app`` (or :meth:`run`)
    connects, creates the topics and starts the agents; leaving drains them (each finishes its
    batch and commits) and closes. A stopped app may run again, in any event loop: it starts
    as a fresh worker would, its tables restored from their changelogs.

    Args:
        name: the app's id: consumer groups are ``<name>.<agent>``, internal topics start with it.
        broker: a broker URL or an opened :class:`brokers.Broker`; default: the URL in the
            ``NEUROPLEX_BROKER`` environment variable when the app starts, else ``memory://``.
        partitions: the partition count of topics declared without one.
        session_timeout: consumer-group session timeout of the agents, seconds.
        drain_timeout: how long leaving the app waits for agents to finish their batch.
        state_dir: where tables declared with ``store="sqlite"`` keep their local files
            (default ``NEUROPLEX_STATE_DIR``, else ``./state``).
        commit_interval: while records keep arriving, an agent flushes its tables and commits
            at most this often (seconds); batches in between are held together. When the log
            has nothing more ready it commits at once, so this bounds the delay under load
            only. ``0`` commits after every fetched batch.

    Example:
        >>> app = App("shop", broker="memory://")
        >>> orders = app.topic("orders", value_type=dict)
        >>> @app.agent(orders)
        ... async def count(stream):
        ...     async for event in stream:
        ...         print(event.key, event.value)
    """

    def __init__(
        self,
        name: str,
        *,
        broker: str | Broker | None = None,
        partitions: int = 8,
        session_timeout: float = 10.0,
        drain_timeout: float = 10.0,
        state_dir: str | Path | None = None,
        commit_interval: float = 1.0,
    ) -> None:
        TopicSpec(name)  # the app name appears in topic names: same rules
        if partitions < 1:
            raise DeclarationError(f"partitions must be at least 1, got {partitions}")
        if not commit_interval >= 0:
            raise DeclarationError(
                f"commit_interval must be >= 0 seconds (0 commits every batch), got "
                f"{commit_interval!r}"
            )
        self.commit_interval = commit_interval
        self.name = name
        self._broker_arg = broker
        self.default_partitions = partitions
        self.session_timeout = session_timeout
        self.drain_timeout = drain_timeout
        self.state_dir = Path(state_dir or os.environ.get("NEUROPLEX_STATE_DIR", "state"))
        self.topics: dict[str, Topic[Any, Any]] = {}
        self.agents: dict[str, Agent[Any, Any]] = {}
        self.tables: dict[str, Table[Any, Any] | WindowedTable[Any, Any]] = {}
        self.global_tables: dict[str, GlobalTable[Any, Any]] = {}
        self.sources: set[Source] = set()
        self._broker: Broker | None = None
        self._owns_broker = False
        self._runner: asyncio.Task[None] | None = None
        self._started = False
        self._failure_seen = False
        self._stop_requested_event: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"<App {self.name} topics={len(self.topics)} agents={len(self.agents)}>"

    # ------------------------------------------------------------ declarations
    def topic(
        self,
        name: str,
        *,
        value_type: Any = Any,
        key_type: Any = str,
        partitions: int | None = None,
        compacted: bool = False,
        retention_ms: int | None = None,
    ) -> Topic[Any, Any]:
        """Declare a typed topic (created when the app starts if it does not exist).

        ``value_type`` may be a pydantic model, a dataclass, any type pydantic validates,
        ``bytes`` (untouched) or ``str``; ``key_type`` is ``str``, ``int`` or ``bytes``.
        Declaring the same name again returns the same topic if the types agree.
        """
        existing = self.topics.get(name)
        if existing is not None:
            if (existing.value_type, existing.key_type) != (value_type, key_type):
                raise DeclarationError(
                    f"topic {name!r} is already declared with value_type="
                    f"{existing.value_type!r}, key_type={existing.key_type!r}"
                )
            return existing
        topic: Topic[Any, Any] = Topic(
            self,
            name,
            key_type=key_type,
            value_type=value_type,
            partitions=partitions,
            compacted=compacted,
            retention_ms=retention_ms,
        )
        self.topics[name] = topic
        return topic

    def agent(
        self,
        topic: Topic[Any, Any],
        *,
        name: str | None = None,
        concurrency: int = 1,
        on_error: ErrorPolicy = "raise",
        retries: int = 0,
        backoff: float = 0.5,
        sink: Topic[Any, Any] | None = None,
        on_misplaced: MisplacedPolicy | None = None,
        tables: Sequence[Table[Any, Any] | WindowedTable[Any, Any]] | None = None,
    ) -> Callable[[F], F]:
        """Declare an agent over ``topic``'s stream.

        The function is either ``async def f(stream)`` iterating the events, or a plain
        ``def f(event)`` (sync, or ``async``-returning) called per event whose non-``None``
        result goes to ``sink``. Per-partition order is kept; ``concurrency`` members of the
        agent's group run in this worker, each on its own partitions.

        Args:
            topic: a topic declared on this app.
            name: the agent's name (default: the function's), unique in the app.
            concurrency: members of the group in this worker.
            on_error: after ``retries``, ``raise`` stops the app, ``skip`` drops the event,
                ``dead_letter`` sends it to the topic's dead-letter topic with the reason.
            retries: how many times a failing event is retried first.
            backoff: seconds before the first retry, doubling after each.
            sink: where a per-event function's results are sent.
            on_misplaced: a keyed record found on another partition than its key's (a
                producer with another partitioner) is ``reroute``-d to its key's partition,
                sent to the ``dead_letter`` topic with the reason, or handled where it is
                (``accept``, for agents that keep no state per key). Default: ``reroute``
                when the agent changes tables, else ``accept``.
            tables: the tables of ``topic`` this agent changes (``[]``: none). Needed only
                when the topic has several agents: one agent changes a table, by default the
                only one of its topic without ``tables=``.
        """
        if topic.app is not self:
            raise DeclarationError(f"{topic!r} belongs to another app: declare it on {self!r}")
        if concurrency < 1 or retries < 0 or backoff < 0:
            raise DeclarationError("concurrency >= 1, retries >= 0 and backoff >= 0 are needed")
        if on_error not in ("raise", "skip", "dead_letter"):
            raise DeclarationError(f"on_error={on_error!r}: use 'raise', 'skip' or 'dead_letter'")
        if on_misplaced is not None and on_misplaced not in MISPLACED_POLICIES:
            raise DeclarationError(
                f"on_misplaced={on_misplaced!r}: use 'reroute', 'dead_letter' or 'accept'"
            )
        for table in tables or ():
            if self.tables.get(table.name) is not table or table.source is not topic:
                raise DeclarationError(
                    f"tables=: {table!r} is not a table of {topic.name!r} declared on this "
                    f"app; an agent changes tables whose source is its topic"
                )

        def declare(fn: F) -> F:
            agent_name: str = name or str(getattr(fn, "__name__", "agent"))
            if agent_name in self.agents:
                raise DeclarationError(f"an agent named {agent_name!r} is already declared")
            self.agents[agent_name] = Agent(
                self,
                fn,
                topic,
                name=agent_name,
                concurrency=concurrency,
                on_error=on_error,
                retries=retries,
                backoff=backoff,
                sink=sink,
                on_misplaced=on_misplaced,
                tables=tables,
            )
            return fn

        return declare

    def group_by(
        self,
        topic: Topic[Any, Any],
        key: Callable[[Event[Any, Any]], Any],
        *,
        name: str,
        partitions: int | None = None,
        key_type: Any = str,
    ) -> Topic[Any, Any]:
        """Re-key ``topic`` through the internal topic ``<app>.<name>.repartition``.

        An internal agent forwards every event with ``key(event)`` as its key (same value and
        headers), so tables and agents of the returned topic see each new key on one partition.
        Forwarded records carry their upstream position (``x-origin``: the record read here,
        also when that one came through a repartition itself), and tables keep the highest
        upstream position applied per key, so a forward repeated after a crash is not counted
        twice: state stays exactly-once across the repartition.

        Example:
            >>> by_user = app.group_by(views, lambda e: e.value.user, name="by_user")
            >>> totals = app.table("totals", source=by_user, default=int)
        """
        if topic.app is not self:
            raise DeclarationError(f"{topic!r} belongs to another app: declare it on {self!r}")
        target = self.topic(
            f"{self.name}.{name}.repartition",
            key_type=key_type,
            value_type=topic.value_type,
            partitions=partitions,
        )
        target.repartition = True
        target.internal = True

        async def forward(stream: EventStream) -> None:
            async for chunk in stream.take(1000, within=0.05):
                await self.broker.produce_batch(
                    target.name,
                    [
                        ProducerRecord(
                            target.encode_value(e.value),
                            target.encode_key(key(e)),
                            None,
                            (
                                *passed_on(e.headers),
                                (ORIGIN_HEADER, f"{e.partition}:{e.offset}".encode()),
                            ),
                        )
                        for e in chunk
                    ],
                )

        self.agent(topic, name=f"_group_by_{name}", tables=[])(forward)
        return target

    def table(
        self,
        name: str,
        *,
        source: Topic[Any, Any],
        default: Callable[[], Any] | None = None,
        value_type: Any = Any,
        on_restore: RestoreProgress | None = None,
        store: StoreKind = "memory",
        standby: bool = False,
    ) -> Table[Any, Any]:
        """Declare a table folded by the agents of ``source``, partitioned like it.

        Its changelog is the compacted topic ``<app>.<name>.changelog``; the partitions a
        worker gains are restored from it before their events are handled (``on_restore``
        hears the progress), and the state is exactly-once (see :class:`Table`).

        Args:
            name: the table's name, unique in the app.
            source: the topic whose agents change the table (keys must be that topic's keys).
            default: makes missing keys read as ``default()`` (``table[k] += 1`` just works).
            value_type: what values are (any type pydantic validates; JSON in the changelog).
            on_restore: called as ``(table, partition, records_read, records_total)``.
            store: ``"memory"`` (restore replays the changelog) or ``"sqlite"`` (state in a
                local file under ``state_dir``, larger than memory if need be; a restart
                replays only the changelog's tail).
            standby: keep warm copies of the partitions this worker does not own (following
                the changelog), so taking one over replays only the tail. Memory store only:
                with ``store="sqlite"`` it raises :class:`DeclarationError`.
        """
        if name in self.tables:
            raise DeclarationError(f"a table named {name!r} is already declared")
        if standby and store != "memory":
            raise DeclarationError(
                f"table {name!r}: standby=True keeps warm copies in memory and works with "
                f"store='memory' only, not store={store!r}. With store='sqlite' a worker "
                "restores the partitions it held before from its local file and reads only "
                "the changelog's tail; choose store='memory', standby=True for warm copies of "
                "the partitions it does not own, or drop standby=True"
            )
        if source.app is not self:
            raise DeclarationError(f"{source!r} belongs to another app: declare it on {self!r}")
        table: Table[Any, Any] = Table(
            self,
            name,
            source=source,
            default=default,
            value_type=value_type,
            on_restore=on_restore,
            store=store,
            standby=standby,
        )
        self.tables[name] = table
        return table

    def join_windowed(
        self,
        left: Topic[Any, Any],
        right: Topic[Any, Any],
        *,
        within: float,
        name: str,
        grace: float = 0.0,
        time_of: Callable[[Event[Any, Any]], int] | None = None,
    ) -> Topic[Any, Any]:
        """Join two streams by key: every left and right event less than ``within`` apart.

        Both sides are forwarded to the internal topic ``<app>.<name>.join`` keyed alike (so a
        key's events meet on one partition, whatever the sides' partitioning); an internal agent
        keeps each key's recent events of both sides in a table (exactly-once state) and sends
        each new pair, as ``{"left": ..., "right": ..., "key": ...}``, to the returned topic
        ``<app>.<name>.joined`` (at least once). Events older than ``within`` + ``grace`` behind
        the partition's stream time are dropped from the state.

        Args:
            left: one stream.
            right: the other stream, with keys of the same meaning.
            within: the largest time between two events that pair up, seconds.
            name: names the internal topics and table.
            grace: how late (behind stream time) an event may come and still pair.
            time_of: event time in ms (default: the record's log time).
        """
        within_ms, grace_ms = round(within * 1000), round(grace * 1000)
        if within_ms <= 0 or grace_ms < 0:
            raise DeclarationError("join_windowed needs within > 0 and grace >= 0")
        meet = self.topic(f"{self.name}.{name}.join", value_type=dict[str, Any])
        meet.repartition = True
        meet.internal = True
        out = self.topic(f"{self.name}.{name}.joined", value_type=dict[str, Any])
        buffer = self.table(f"{name}_join", source=meet, value_type=dict[str, Any])

        def forwarder(side: str, topic: Topic[Any, Any]) -> None:
            # upstream positions of the two sides must not collide in the origin map
            def tag(partition: int) -> int:
                return partition if side == "left" else -partition - 1

            async def forward(stream: EventStream) -> None:
                async for chunk in stream.take(1000, within=0.05):
                    records = []
                    for e in chunk:
                        at = e.timestamp if time_of is None else int(time_of(e))
                        encoded = topic.encode_value(e.value)
                        value = None if encoded is None else brokers.json.loads(encoded)
                        records.append(
                            ProducerRecord(
                                brokers.json.dumps({"side": side, "at": at, "value": value}),
                                meet.encode_key(e.key),
                                None,
                                ((ORIGIN_HEADER, f"{tag(e.partition)}:{e.offset}".encode()),),
                            )
                        )
                    await self.broker.produce_batch(meet.name, records)

            self.agent(topic, name=f"_join_{name}_{side}", tables=[])(forward)

        forwarder("left", left)
        forwarder("right", right)

        async def pair(stream: EventStream) -> None:
            stream_time: dict[int, int] = {}
            async for event in stream:
                side, at = event.value["side"], event.value["at"]
                horizon = max(stream_time.get(event.partition, at), at)
                stream_time[event.partition] = horizon
                if at < horizon - within_ms - grace_ms:
                    continue  # too late to pair
                state = buffer.get(event.key) or {"left": [], "right": []}
                other = "right" if side == "left" else "left"
                fresh = buffer.will_apply(event.key)
                pairs = [
                    {"key": event.key, side: event.value["value"], other: value}
                    for t, value in state[other]
                    if abs(t - at) < within_ms
                ]
                keep = horizon - within_ms - grace_ms
                buffer[event.key] = {
                    side: [*(x for x in state[side] if x[0] >= keep), [at, event.value["value"]]],
                    other: [x for x in state[other] if x[0] >= keep],
                }
                if fresh and pairs:
                    await out.send_many((event.key, p) for p in pairs)

        self.agent(meet, name=f"_join_{name}")(pair)
        return out

    def global_table(self, name: str, *, topic: Topic[Any, Any]) -> GlobalTable[Any, Any]:
        """Declare a copy of ``topic``'s latest value per key on every worker.

        The right side of stream-table joins (``stream.join(users)``): any worker can look any
        key up. Use a table's ``changelog`` to replicate that table everywhere.
        """
        if name in self.global_tables or name in self.tables:
            raise DeclarationError(f"a table named {name!r} is already declared")
        table: GlobalTable[Any, Any] = GlobalTable(self, name, topic=topic)
        self.global_tables[name] = table
        return table

    def windowed_table(
        self,
        name: str,
        *,
        source: Topic[Any, Any],
        window: WindowSpec,
        default: Callable[[], Any],
        merge: Callable[[Any, Any], Any] | None = None,
        on_close: Callable[[ClosedWindow[Any, Any]], None] | None = None,
        emit_to: Topic[Any, Any] | None = None,
        close_on_wall_clock: bool = False,
        time_of: Callable[[Event[Any, Any]], int] | None = None,
    ) -> WindowedTable[Any, Any]:
        """Declare aggregates per key and event-time window (see :mod:`streams._windows`).

        ``table[event.key] += x`` adds to every window of the event's time. Windows close when
        stream time passes their end plus grace; closed windows go to ``on_close`` and, as
        ``{"start", "end", "value"}`` records keyed like the source, to ``emit_to``. With
        ``close_on_wall_clock``, windows whose time passed on the wall clock are emitted once a
        second even when no event comes (they leave the state when stream time closes them).

        Args:
            name: the table's name, unique in the app.
            source: the topic whose agents change it.
            window: ``Tumbling.of(10)``, ``Hopping.of(10, 5)``, ``Sliding.of(60)`` or
                ``Session.of(30)`` (each with ``grace=`` seconds).
            default: the aggregate of an empty window (``int`` for counts).
            merge: how session windows combine when they meet (e.g. ``operator.add``).
            on_close: called with each closed window.
            emit_to: a topic closed windows are sent to.
            close_on_wall_clock: also close windows by the wall clock.
            time_of: the event time in ms from an event (default: the record's log time),
                e.g. ``lambda e: e.value.at_ms`` when producers stamp their events.
        """
        if name in self.tables:
            raise DeclarationError(f"a table named {name!r} is already declared")
        table: WindowedTable[Any, Any] = WindowedTable(
            self,
            name,
            source=source,
            window=window,
            default=default,
            merge=merge,
            on_close=on_close,
            emit_to=emit_to,
            close_on_wall_clock=close_on_wall_clock,
            time_of=time_of,
        )
        self.tables[name] = table
        return table

    def _assign_writers(self) -> None:
        """Which agent changes each table: the one naming it in ``tables=`` (a fold names
        its own), else the only agent of its topic without ``tables=``. Two agents changing
        one table would flush each other's changes before their events are done, and its
        partitions would follow two groups' assignments.
        """
        for table in self.tables.values():
            naming = [
                a.name for a in self.agents.values() if any(t is table for t in a.tables or ())
            ]
            if len(naming) > 1:
                raise DeclarationError(
                    f"table {table.name!r} is named in tables= by agents {naming}: one agent "
                    "changes a table (that is what keeps it exactly once); have one of them "
                    "change it, or give each a table of its own"
                )
            if not naming:
                naming = [
                    a.name
                    for a in self.agents.values()
                    if a.topic is table.source and a.tables is None
                ]
                if len(naming) > 1:
                    raise DeclarationError(
                        f"table {table.name!r} of topic {table.source.name!r}, which has "
                        f"agents {naming}: one agent changes a table; name it with "
                        f"@app.agent(topic, tables=[{table.name}]) (the others may read it)"
                    )
            table.writer = naming[0] if naming else None

    def tables_of(self, topic: Topic[Any, Any]) -> list[Table[Any, Any] | WindowedTable[Any, Any]]:
        """The tables that change with events of ``topic``."""
        return [t for t in self.tables.values() if t.source is topic]

    # ------------------------------------------------------------ runtime
    def use_broker(self, broker: str | Broker) -> None:
        """Run on ``broker`` (a URL or an open broker) instead: for a module-level app whose
        broker is chosen at run time (``neuroplex worker --broker``). Only before it starts."""
        if self._started:
            raise ResourceStateError(f"app {self.name!r} already started on its broker")
        self._broker_arg = broker

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise ResourceStateError(f"app {self.name!r} is not started: use 'async with app'")
        return self._broker

    async def __aenter__(self) -> Self:
        if self._started:
            raise ResourceStateError(f"app {self.name!r} is already started")
        self._assign_writers()
        for agent in self.agents.values():
            agent.misplaced_policy()  # a policy the tables rule out fails here, not later
        self._started = True
        self._failure_seen = False
        self.sources = set()
        arg = self._broker_arg
        self._owns_broker = arg is None or isinstance(arg, str)
        try:
            if isinstance(arg, str):
                self._broker = await brokers.connect(arg).open()
            elif arg is None:
                self._broker = await _open_broker_from_environment()
            else:
                self._broker = arg
            for topic in list(self.topics.values()):
                await self._broker.create_topic(topic.spec(self.default_partitions))
                await self._broker.create_topic(TopicSpec(topic.dead_letter_topic, partitions=1))
            for table in self.tables.values():
                await table.start()
            for global_table in self.global_tables.values():
                global_table.start()
        except BaseException:
            await self._close_broker()
            self._started = False
            raise
        self._stop_requested_event = asyncio.Event()
        if self.agents or self.global_tables:  # standby followers run with the agents
            self._runner = asyncio.create_task(self._run_agents(), name=f"app {self.name}")
        return self

    async def _run_agents(self) -> None:
        tasks = [
            asyncio.create_task(agent.run(), name=f"agent {agent.name}")
            for agent in self.agents.values()
        ]
        followers = [
            asyncio.create_task(g.follow(), name=f"global table {g.name}")
            for g in self.global_tables.values()
        ]
        followers += [
            asyncio.create_task(t.follow_standby(), name=f"standby {t.name}")
            for t in self.tables.values()
            if isinstance(t, Table) and t.standby  # memory store: checked when declared
        ]
        tasks += followers
        clocked = [
            table
            for table in self.tables.values()
            if isinstance(table, WindowedTable) and table.close_on_wall_clock
        ]
        if clocked:
            tasks.append(asyncio.create_task(self._wall_clock(clocked), name="wall-clock windows"))
        if followers:
            tasks.append(asyncio.create_task(self._stop_followers(followers), name="followers"))
        # not a TaskGroup: it cancels its tasks once, and a lost cancel would hang stop()
        await supervise(tasks)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` has begun (agents drain and end)."""
        event = self._stop_requested_event
        return event is not None and event.is_set()

    @property
    def _stop_requested(self) -> asyncio.Event:
        if self._stop_requested_event is None:
            raise ResourceStateError(f"app {self.name!r} is not started")
        return self._stop_requested_event

    async def _stop_followers(self, followers: list[asyncio.Task[None]]) -> None:
        """Global tables follow their topic until the app stops."""
        await self._stop_requested.wait()
        await asyncio.gather(*(stop_task(follower) for follower in followers))

    async def _wall_clock(self, tables: list[WindowedTable[Any, Any]]) -> None:
        """Emit windows whose time passed on the wall clock, once a second, until stopping.

        Sent from here, not with an agent's batch: on a quiet stream no batch comes.
        """
        while not self._stop_requested.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._stop_requested.wait()
            for table in tables:
                await table.emit(table.close_by_wall_clock())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Drain (agents finish their batch and commit), then close. Idempotent."""
        runner, self._runner = self._runner, None
        try:
            if self._stop_requested_event is not None:
                self._stop_requested_event.set()
            if runner is not None and not runner.done():
                for source in self.sources:
                    source.stop()
                await asyncio.wait([runner], timeout=self.drain_timeout)
                if not runner.done():
                    log.warning(
                        "app %s: agents did not drain in %ss; cancelling them",
                        self.name,
                        self.drain_timeout,
                    )
                if not await stop_task(runner, timeout=self.drain_timeout):
                    # closing the broker below fails what they wait on
                    log.error(
                        "app %s: agents still running %ss after they were cancelled; "
                        "closing the app under them",
                        self.name,
                        self.drain_timeout,
                    )
                    runner.add_done_callback(self._ended_after_stop)
            if (
                runner is not None
                and runner.done()
                and not self._failure_seen
                and not runner.cancelled()
            ):
                self._failure_seen = True
                failure = runner.exception()
                if failure is not None:
                    raise failure
        finally:
            for table in self.tables.values():
                (table if isinstance(table, Table) else table.state).close()
            await self._close_broker()
            self._started = False  # it may run again, as a fresh worker would

    def _ended_after_stop(self, runner: asyncio.Task[None]) -> None:
        """The agents ended at last, after :meth:`stop` returned: nobody is left to raise to."""
        if runner.cancelled():
            outcome = "cancelled"
        else:
            failure = runner.exception()
            outcome = "returned" if failure is None else f"failed: {failure!r}"
        log.warning("app %s: agents ended after the app stopped (%s)", self.name, outcome)

    async def _close_broker(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None and self._owns_broker:
            await broker.aclose()

    async def wait(self) -> None:
        """Until the agents end (when their code returns); raises an agent's failure."""
        if self._runner is not None:
            try:
                await asyncio.shield(self._runner)
            except Exception:
                self._failure_seen = True
                raise

    def run(self, *, started: Callable[[App], None] | None = None) -> None:
        """Run until SIGINT/SIGTERM (then drain and close) or until an agent fails.

        ``started(app)`` is called once the app is started: connected, its topics created,
        its agents joining their groups (``app.broker.url`` says where it runs).
        """
        asyncio.run(self._serve(started))

    @property
    def names_a_broker(self) -> bool:
        """Whether a broker was given (``broker=``, :meth:`use_broker`, ``NEUROPLEX_BROKER``):
        else the app runs on ``memory://``, a log of its own process."""
        return self._broker_arg is not None or bool(os.environ.get(BROKER_ENV))

    async def _serve(self, started: Callable[[App], None] | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with self:
            if started is not None:
                started(self)
            waiter = asyncio.create_task(stop.wait())
            runner = self._runner
            watched: set[asyncio.Future[Any]] = {waiter}
            if runner is not None:
                watched.add(runner)
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    async def dead_letter(self, record: Record, reason: str) -> None:
        """Send ``record`` to its topic's dead-letter topic with the reason and its position."""
        headers = (
            *record.headers,
            ("x-dead-letter-reason", reason.encode()),
            ("x-source-topic", record.topic.encode()),
            ("x-source-partition", str(record.partition).encode()),
            ("x-source-offset", str(record.offset).encode()),
        )
        await self.broker.produce_batch(
            record.topic + DEAD_LETTER_SUFFIX,
            [ProducerRecord(record.value, record.key, None, headers)],
        )
        log.warning(
            "dead letter %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )


async def _open_broker_from_environment() -> Broker:
    """The broker ``NEUROPLEX_BROKER`` names (unset or empty: ``memory://``), opened."""
    url = os.environ.get(BROKER_ENV) or DEFAULT_BROKER
    try:
        log = brokers.connect(url)
    except UnsupportedURLError as exc:
        raise UnsupportedURLError(
            url, f"{exc.reason} (it is {BROKER_ENV}, read because App(broker=...) was not given)"
        ) from exc
    return await log.open()
