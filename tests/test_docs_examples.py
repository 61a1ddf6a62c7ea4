"""The docs never drift from code that runs.

Every program in ``docs/examples/`` runs as a subprocess on every backend and prints what the
docs say it prints; every example is shown on a page; every page is in the site's nav.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mkdocs.config import load_config

import brokers
from brokers import TopicPartition, TopicSpec

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"

# Each program that needs a broker, and a line its output must hold on every backend.
ON_A_BROKER = {
    "quickstart.py": "read 3 orders",
    "groups.py": "worker-c resumed from the committed positions and read [b'late-1', b'late-2']",
    "read_to_end.py": "read 10000 readings, 0 written after we looked",
    "partitioning.py": "misplaced record: key b'user-42' on partition 5, but the key belongs on 4",
    "errors.py": "TopicConflictError: topic 'invoices' already exists with other settings",
}
# The topics each program creates (name, partitions, consumer group or None). On servers that
# outlive a test session (NEUROPLEX_KAFKA_URL, NEUROPLEX_NATS_URL) they are dropped first, and
# the group's positions reset, so every run starts from the same state.
TOPICS: dict[str, list[tuple[str, int, str | None]]] = {
    "quickstart.py": [("orders", 4, None)],
    "groups.py": [("payments", 4, "billing")],
    "read_to_end.py": [("readings", 3, None)],
    "partitioning.py": [("clicks", 8, None)],
    "errors.py": [("invoices", 2, None)],
}
# Programs that contact no broker.
STANDALONE = {"settings.py": "password=SecretStr('**********')"}
# pytest files showing how users test their pipelines: run with pytest, on the backend.
PYTEST_FILES = {"test_pipeline.py"}


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


def _check(result: subprocess.CompletedProcess[str], expected: str) -> None:
    shown = f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, shown
    assert expected in result.stdout, f"expected {expected!r} in the output\n{shown}"


def _programs() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_every_example_is_run_by_this_module() -> None:
    known = set(ON_A_BROKER) | set(STANDALONE) | PYTEST_FILES
    assert set(_programs()) == known, "add the new example's expected line to this module"
    assert set(TOPICS) == set(ON_A_BROKER), "name the topics the new example creates"


def _pages() -> Iterator[Path]:
    return (p for p in DOCS.rglob("*.md") if EXAMPLES not in p.parents)


def test_every_example_is_shown_on_a_page() -> None:
    text = "\n".join(p.read_text() for p in _pages())
    for name in _programs():
        assert f'--8<-- "docs/examples/{name}"' in text, f"{name} is on no page"


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


@pytest.mark.parametrize("name", sorted(ON_A_BROKER))
def test_example_runs(name: str, broker_url: str, backend: str) -> None:
    if backend in ("kafka", "nats"):
        asyncio.run(_fresh(broker_url, TOPICS[name]))
    result = _run([f"docs/examples/{name}"], NEUROPLEX_BROKER=broker_url)
    _check(result, ON_A_BROKER[name])
    recorded = EXAMPLES / name.replace(".py", ".out")
    if backend == "memory" and recorded.exists():
        # the output shown on the page is the output on memory://, exactly
        assert result.stdout == recorded.read_text()


@pytest.mark.parametrize("name", sorted(STANDALONE))
def test_standalone_example_runs(name: str) -> None:
    result = _run([f"docs/examples/{name}"])
    _check(result, STANDALONE[name])
    recorded = EXAMPLES / name.replace(".py", ".out")
    if recorded.exists():
        assert result.stdout == recorded.read_text()


@pytest.mark.parametrize("name", sorted(PYTEST_FILES))
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
    _check(result, "[Record(topic='orders', partition=1, offset=0")
