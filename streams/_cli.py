"""The ``neuroplex`` command line: run workers, send, tail, list topics, export schemas."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table as RichTable

import brokers
from brokers import json
from streams._app import App
from streams._table import Table

__all__ = ("load_app", "main")

cli = typer.Typer(
    name="neuroplex",
    help="Reactive stream processing on partitioned logs.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

BrokerOption = Annotated[
    str | None,
    typer.Option("--broker", "-b", help="Broker URL (default: NEUROPLEX_BROKER, else memory://)."),
]


def load_app(spec: str) -> App:
    """The App named by ``module:attribute`` (``module`` alone finds its only App)."""
    module_name, _, attribute = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, App):
            raise typer.BadParameter(f"{spec!r} is not a streams.App")
        return found
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    if len(apps) != 1:
        raise typer.BadParameter(f"{module_name!r} has {len(apps)} Apps: name one, module:app")
    return apps[0]


def _url(broker: str | None) -> str:
    return broker or os.environ.get("NEUROPLEX_BROKER", "memory://")


@cli.command()
def worker(
    app: Annotated[str, typer.Argument(help="The app, as module:attribute.")],
    broker: BrokerOption = None,
) -> None:
    """Run the app's agents until SIGTERM/SIGINT, which drains, commits and closes."""
    loaded = load_app(app)
    if broker is not None:
        loaded.use_broker(broker)
    if not loaded.names_a_broker:
        raise typer.BadParameter(
            f"no broker for {loaded.name!r}: pass --broker URL or set NEUROPLEX_BROKER (a worker "
            "on memory:// has a log of its own, which no other process can reach; "
            "--broker memory:// runs it anyway)",
            param_hint="--broker",
        )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=errors,
        transient=True,
    ) as progress:
        tasks: dict[tuple[str, int], TaskID] = {}

        def restoring(table: Table[Any, Any], partition: int, done: int, total: int) -> None:
            key = (table.name, partition)
            if key not in tasks:
                tasks[key] = progress.add_task(f"restore {table.name}[{partition}]", total=total)
            progress.update(tasks[key], completed=done, total=total)

        for table in loaded.tables.values():
            inner = table if isinstance(table, Table) else table.state
            if inner.on_restore is None:
                inner.on_restore = restoring
        loaded.run(
            started=lambda running: errors.print(
                f"[green]worker[/] {running.name} on {running.broker.url} — Ctrl-C to stop"
            )
        )
    errors.print(f"[green]worker[/] {loaded.name} stopped")


@cli.command()
def send(
    topic: Annotated[str, typer.Argument(help="The topic.")],
    value: Annotated[str, typer.Argument(help="The value, as JSON ('-' reads lines of stdin).")],
    key: Annotated[str | None, typer.Option("--key", "-k", help="The record key.")] = None,
    broker: BrokerOption = None,
) -> None:
    """Send JSON values to a topic (one per line with '-')."""
    lines = sys.stdin.read().splitlines() if value == "-" else [value]
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not JSON: {line!r} ({exc})") from exc

    async def run() -> None:
        async with brokers.connect(_url(broker)) as log:
            for line in lines:
                pos = await log.produce(
                    topic, line.encode(), key=None if key is None else key.encode()
                )
                console.print(f"{topic}[{pos.partition}]@{pos.offset}")

    _run(run())


@cli.command()
def tail(
    topic: Annotated[str, typer.Argument(help="The topic.")],
    start: Annotated[str, typer.Option(help="earliest or latest.")] = "latest",
    limit: Annotated[int | None, typer.Option(help="Stop after this many records.")] = None,
    broker: BrokerOption = None,
) -> None:
    """Print a topic's records as they come (pretty JSON)."""
    if start not in ("earliest", "latest"):
        raise typer.BadParameter("start is 'earliest' or 'latest'")

    async def run() -> None:
        seen = 0
        async with brokers.connect(_url(broker)) as log, log.subscribe(topic, start=start) as sub:  # type: ignore[arg-type]
            async for batch in sub:
                for record in batch:
                    key = record.key.decode(errors="replace") if record.key is not None else "-"
                    head = (
                        f"[dim]{record.topic}[{record.partition}]@{record.offset}[/] [bold]{key}[/]"
                    )
                    if record.value is None:
                        console.print(head, "[red]tombstone[/]")
                    else:
                        try:
                            console.print(head, json.loads(record.value))
                        except json.JSONDecodeError:
                            console.print(head, repr(record.value))
                    seen += 1
                    if limit is not None and seen >= limit:
                        return

    _run(run())


@cli.command()
def topics(broker: BrokerOption = None) -> None:
    """List the topics with their partitions and settings."""

    async def run() -> None:
        async with brokers.connect(_url(broker)) as log:
            table = RichTable("topic", "partitions", "compacted", "retention ms")
            for name in await log.list_topics():
                spec = await log.describe_topic(name)
                table.add_row(
                    name,
                    str(spec.partitions),
                    "yes" if spec.compacted else "",
                    str(spec.retention_ms or ""),
                )
            console.print(table)

    _run(run())


@cli.command()
def schema(
    app: Annotated[str, typer.Argument(help="The app, as module:attribute.")],
    topic: Annotated[str | None, typer.Argument(help="One topic (default: all).")] = None,
) -> None:
    """Print the JSON Schema of a typed topic's values (what other services must send)."""
    loaded = load_app(app)
    if topic and topic not in loaded.topics:
        raise typer.BadParameter(f"no topic {topic!r} in {loaded.name}")
    chosen = [loaded.topics[topic]] if topic else list(loaded.topics.values())
    out = {
        t.name: {"key": t.key_codec.json_schema(), "value": t.value_codec.json_schema()}
        for t in chosen
    }
    sys.stdout.write(json.dumps(out[topic] if topic else out).decode() + "\n")


def _run(coro: Any) -> None:
    try:
        asyncio.run(coro)
    except brokers.NeuroplexError as exc:
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def main() -> None:
    """The ``neuroplex`` entry point."""
    cli()
