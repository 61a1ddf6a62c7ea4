"""The neuroplex CLI and the pageviews main job, as a user runs them (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokers.conftest import unique

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run("-c", "from streams._cli import main; main()", *args, stdin=stdin)


@pytest.mark.backends("sqlite", "kafka", "nats")
def test_send_tail_topics_and_schema(broker_url: str) -> None:
    topic = unique("cli")
    created = run(
        "-c",
        "import asyncio, brokers, sys\n"
        "async def main():\n"
        "    async with brokers.connect(sys.argv[1]) as b:\n"
        "        await b.create_topic(brokers.TopicSpec(sys.argv[2], partitions=2))\n"
        "asyncio.run(main())",
        broker_url,
        topic,
    )
    assert created.returncode == 0, created.stderr
    sent = cli(
        "send", topic, "-", "--key", "user-1", "--broker", broker_url, stdin='{"n": 1}\n{"n": 2}\n'
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.count(f"{topic}[") == 2
    tail = cli("tail", topic, "--start", "earliest", "--limit", "2", "--broker", broker_url)
    assert tail.returncode == 0, tail.stderr
    assert "user-1" in tail.stdout
    assert "'n': 2" in tail.stdout
    listed = cli("topics", "--broker", broker_url)
    assert topic in listed.stdout
    bad = cli("send", topic, "{not json", "--broker", broker_url)
    assert bad.returncode != 0
    assert "not JSON" in bad.stderr
    missing = cli("send", unique("missing"), "1", "--broker", broker_url)
    assert missing.returncode == 1
    assert "create_topic" in missing.stderr


def test_schema_export_describes_the_wire_format() -> None:
    out = cli("schema", "streams.examples.pageviews:app", "pageviews")
    assert out.returncode == 0, out.stderr
    assert '"at_ms"' in out.stdout
    assert '"required"' in out.stdout


@pytest.mark.backends("sqlite", "kafka", "nats")
def test_main_job_counts_and_a_second_run_resumes(broker_url: str) -> None:
    env_topic_free = broker_url  # the job's topics are fixed: one log per backend per test
    first = run(
        "-m",
        "streams.examples.pageviews",
        "--broker",
        env_topic_free,
        "--duration",
        "2",
        "--rate",
        "500",
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "summary: sent" in first.stdout
    second = run(
        "-m",
        "streams.examples.pageviews",
        "--broker",
        broker_url,
        "--duration",
        "1",
        "--rate",
        "500",
    )
    assert second.returncode == 0, second.stdout + second.stderr
    already = int(second.stdout.split(":", 1)[1].split("views already")[0].split()[-1])
    sent_first = int(first.stdout.split("summary: sent ")[1].split(",")[0])
    assert already >= sent_first, "the second run starts from the first run's totals"


def test_main_job_on_memory() -> None:
    done = run("-m", "streams.examples.pageviews", "--broker", "memory://", "--duration", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 views already counted" in done.stdout
