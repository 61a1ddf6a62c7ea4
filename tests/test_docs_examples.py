"""The docs never drift from code that runs.

Every program in ``docs/examples/`` runs as a subprocess — on every backend when it reads
``NEUROPLEX_BROKER``, once otherwise, on Kafka and NATS for a foreign producer (``FOREIGN``) —
and must print each ``Expect:`` line of its docstring; where ``NAME.out`` exists, its whole
output on ``memory://`` must equal it. ``test_*.py`` files there are run with pytest. Every
example is shown on a page; every page is in the site's nav; every signature of ``App`` and its
methods written on a page is the code's.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mkdocs.config import load_config

import brokers
from brokers import TopicPartition, TopicSpec
from streams import App

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"

ALL = sorted(p.name for p in EXAMPLES.glob("*.py"))
PYTEST_FILES = [name for name in ALL if name.startswith("test_")]
PROGRAMS = [name for name in ALL if name not in PYTEST_FILES]
# A service outside neuroplex (plain aiokafka, nats-py), run on Kafka and NATS as
# `python docs/examples/NAME URL TOPIC PARTITIONS` while an app reads what it publishes.
FOREIGN = ["wire_producer.py"]
OWN = [n for n in PROGRAMS if n not in FOREIGN]
ON_A_BROKER = [n for n in OWN if "NEUROPLEX_BROKER" in (EXAMPLES / n).read_text()]
STANDALONE = [n for n in OWN if n not in ON_A_BROKER]

# Topics that programs create under fixed names (name, partitions, consumer group or None).
# On servers that outlive a test session (NEUROPLEX_KAFKA_URL, NEUROPLEX_NATS_URL) they are
# dropped first, and the group's positions reset, so every run starts from the same state.
# (Programs that name their topics afresh on every run need no entry.)
TOPICS: dict[str, list[tuple[str, int, str | None]]] = {
    "quickstart.py": [("orders", 4, None)],
    "groups.py": [("payments", 4, "billing")],
    "read_to_end.py": [("readings", 3, None)],
    "partitioning.py": [("clicks", 8, None)],
    "errors.py": [("invoices", 2, None)],
    "shop.py": [("purchases", 8, "shop.add_up"), ("shop.totals.changelog", 8, None)],
}


def _expected(name: str) -> list[str]:
    """The ``Expect:`` lines of an example's docstring: what its output must contain."""
    doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text())) or ""
    return [
        line.removeprefix("Expect:").strip()
        for line in doc.splitlines()
        if line.startswith("Expect:")
    ]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def _check(result: subprocess.CompletedProcess[str], name: str) -> None:
    shown = f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, shown
    for expected in _expected(name):
        assert expected in result.stdout, f"expected {expected!r} in the output\n{shown}"


def test_every_program_says_what_it_prints() -> None:
    for name in PROGRAMS:
        assert _expected(name), f"{name}: add an 'Expect: <a line of its output>' docstring line"
    assert set(TOPICS) <= set(ON_A_BROKER)
    assert set(FOREIGN) <= set(PROGRAMS)


def _pages() -> Iterator[Path]:
    return (p for p in DOCS.rglob("*.md") if EXAMPLES not in p.parents)


def test_every_example_is_shown_on_a_page() -> None:
    text = "\n".join(p.read_text() for p in _pages())
    for name in ALL:
        assert f'--8<-- "docs/examples/{name}"' in text, f"{name} is on no page"


# a line that is only a signature in code, e.g. `app.topic(name, *, value_type=Any, ...)`
SIGNATURE = re.compile(r"^`@?(?:App|app\.(\w+))\((.*)\)`$", re.MULTILINE)


def _default(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    name = getattr(value, "__name__", None) or getattr(value, "_name", None)
    return str(name) if isinstance(value, type) or name == "Any" else repr(value)


def _signature(method: str | None) -> str:
    """How the pages write the signature of ``App`` (``None``) or of ``App.<method>``."""
    shown: list[str] = []
    parameters = inspect.signature(getattr(App, method or "__init__")).parameters.values()
    for parameter in list(parameters)[1:]:  # not self
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in shown:
            shown.append("*")
        default = parameter.default
        shown.append(
            parameter.name
            if default is parameter.empty
            else f"{parameter.name}={_default(default)}"
        )
    return ", ".join(shown)


def test_signatures_on_the_pages_are_the_code() -> None:
    found = [(p.name, m) for p in _pages() for m in SIGNATURE.finditer(p.read_text())]
    for page, shown in found:
        assert shown[2] == _signature(shown[1]), f"{page}: {shown[0]} is not the code's signature"
    assert len(found) >= 5, "the pages show the signatures of App and its methods"


def _nav_files(nav: object) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_files(value)
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_files(item)


def test_every_page_is_in_the_nav() -> None:
    config = load_config(str(ROOT / "mkdocs.yml"))
    listed = set(_nav_files(config.nav))
    pages = {p.relative_to(DOCS).as_posix() for p in _pages()}
    assert pages - listed == set(), "pages missing from the nav in mkdocs.yml"
    assert listed - pages == set(), "the nav lists pages that do not exist"


async def _fresh(url: str, topics: list[tuple[str, int, str | None]]) -> None:
    """Drop the example's topics; zero its group's positions (not every broker drops them)."""
    async with brokers.connect(url) as log:
        existing = await log.list_topics()
        for topic, partitions, group in topics:
            if topic not in existing:
                continue  # a fresh server: nothing to undo
            await log.delete_topic(topic)
            if group is None:
                continue
            await log.create_topic(TopicSpec(topic, partitions=partitions))
            everything = {TopicPartition(topic, p) for p in range(partitions)}
            async with log.subscribe(topic, group=group, session_timeout=6.0) as sub:
                async with asyncio.timeout(60):
                    while sub.assignment != everything:
                        await sub.getmany(timeout=0.5)
                await sub.commit(dict.fromkeys(everything, 0))


@pytest.mark.parametrize("name", ON_A_BROKER)
def test_example_runs(name: str, broker_url: str, backend: str) -> None:
    if backend in ("kafka", "nats") and name in TOPICS:
        asyncio.run(_fresh(broker_url, TOPICS[name]))
    result = _run([f"docs/examples/{name}"], NEUROPLEX_BROKER=broker_url)
    _check(result, name)
    recorded = EXAMPLES / name.replace(".py", ".out")
    if backend == "memory" and recorded.exists():
        # the output shown on the page is the output on memory://, exactly
        assert result.stdout == recorded.read_text()


@pytest.mark.parametrize("name", STANDALONE)
def test_standalone_example_runs(name: str) -> None:
    result = _run([f"docs/examples/{name}"])
    _check(result, name)
    recorded = EXAMPLES / name.replace(".py", ".out")
    if recorded.exists():
        assert result.stdout == recorded.read_text()


@pytest.mark.backends("kafka", "nats")
async def test_foreign_producer_is_read_like_the_apps_own_records(broker_url: str) -> None:
    """What docs/wire-format.md tells other services to send, sent by another process."""
    from streams import App, EventStream
    from streams.examples.pageviews import PageView

    run = uuid.uuid4().hex[:10]
    app = App(f"foreign-{run}", broker=broker_url, partitions=4, session_timeout=6.0)
    views = app.topic(f"views-{run}", value_type=PageView)
    counts = app.table("counts", source=views, default=int)
    rerouted: list[str | None] = []

    @app.agent(views)
    async def count(stream: EventStream) -> None:
        async for event in stream:
            assert isinstance(event.value, PageView)
            # the agent checks each record is on its key's partition and reroutes one that is
            # not (recording who moved it): none is, so the producer places keys as neuroplex does
            if event.header("x-rerouted-by") is not None:
                rerouted.append(event.key)
            counts[event.key] += 1

    async with app:
        (name,) = FOREIGN
        args = [f"docs/examples/{name}", broker_url, views.name, "4"]
        _check(await asyncio.to_thread(_run, args), name)
        async with asyncio.timeout(60):
            while len(counts) < 10:  # noqa: ASYNC110 - set by the agent
                await asyncio.sleep(0.05)
        assert dict(counts.items()) == {f"u{i}": 1 for i in range(10)}
        assert rerouted == []
        assert await app.broker.end_offsets(views.dead_letter_topic) == {0: 0}


@pytest.mark.parametrize("name", PYTEST_FILES)
def test_pytest_example_passes(name: str, broker_url: str, backend: str) -> None:
    # the inner run reuses this session's server instead of starting its own
    env = {"NEUROPLEX_BACKENDS": backend, "NEUROPLEX_REQUIRE_BACKENDS": "1"}
    if backend in ("kafka", "nats"):
        env[f"NEUROPLEX_{backend.upper()}_URL"] = broker_url
    result = _run(["-m", "pytest", f"docs/examples/{name}", "-q"], **env)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert re.search(r"\b[1-9]\d* passed", summary), summary
    assert "failed" not in summary
    assert "error" not in summary


def test_readme_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"```python\n(.*?)```", readme, re.DOTALL)
    assert found, "README.md has a python example"
    result = _run(["-c", found.group(1)])
    assert result.returncode == 0, result.stderr
    assert "[Record(topic='orders', partition=1, offset=0" in result.stdout, result.stdout
