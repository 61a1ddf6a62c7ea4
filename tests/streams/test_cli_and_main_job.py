"""The neuroplex CLI and the pageviews main job, as a user runs them (real processes)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import brokers
from brokers import TopicPartition
from streams import Table
from tests.brokers.conftest import unique
from tests.streams import _cli_app

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


def neuroplex_command() -> list[str]:
    """The installed ``neuroplex`` console script, else the same entry point through python."""
    script = Path(sys.executable).with_name("neuroplex")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from streams._cli import main; main()"]


async def counts_in_changelog(url: str, name: str, topic: str) -> dict[str, int]:
    """The test app's ``counts`` table as a fresh replica restores it from its changelog."""
    reader = _cli_app.build(name, topic, broker=url)
    reader.agents.clear()  # a reader: no agent, so no group membership
    async with reader:
        table = reader.tables["counts"]
        assert isinstance(table, Table)
        await table.load()
        return dict(table.items())


@pytest.mark.backends("sqlite", "kafka", "nats")
async def test_worker_command_processes_and_exits_0_on_sigterm_with_all_committed(
    broker_url: str, tmp_path: Path
) -> None:
    name, topic = unique("cliworker"), unique("events")
    sent = [(f"u{i % 7}", i % 3 + 1) for i in range(120)]
    expected: Counter[str] = Counter()
    for key, value in sent:
        expected[key] += value
    feeder = _cli_app.build(name, topic, broker=broker_url)
    feeder.agents.clear()  # creates the topics and sends, before the worker starts
    async with feeder:
        await feeder.topics[topic].send_many(sent)
        ends = await feeder.broker.end_offsets(topic)  # what was sent, per partition
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NEUROPLEX_BROKER": broker_url,
        "NEUROPLEX_TEST_APP": name,
        "NEUROPLEX_TEST_TOPIC": topic,
        "NEUROPLEX_STATE_DIR": str(tmp_path / "state"),
    }
    errors = tmp_path / "worker.err"
    with errors.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *neuroplex_command(),
            "worker",
            "tests.streams._cli_app:app",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
        try:
            # processed: the worker's flushes put every count in the table's changelog
            async with asyncio.timeout(90):
                while await counts_in_changelog(broker_url, name, topic) != dict(expected):
                    assert proc.returncode is None, errors.read_text()
                    await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, errors.read_text()
    said = " ".join(errors.read_text().split())  # rich wraps long lines
    assert f"worker {name} on {broker_url.split('://')[0]}://" in said, said  # once started
    assert said.index("Ctrl-C to stop") < said.index(f"worker {name} stopped")
    # the worker's group resumes exactly after what was sent, and the table restores to it
    group = f"{name}.count"
    async with (
        brokers.connect(broker_url) as log,
        log.subscribe(topic, group=group, session_timeout=3.0) as sub,
    ):
        committed = {p: await sub.committed(TopicPartition(topic, p)) for p in ends}
    assert committed == {p: end or None for p, end in ends.items()}
    assert await counts_in_changelog(broker_url, name, topic) == dict(expected)


def test_schema_export_describes_the_wire_format() -> None:
    out = cli("schema", "streams.examples.pageviews:app", "pageviews")
    assert out.returncode == 0, out.stderr
    assert '"at_ms"' in out.stdout
    assert '"required"' in out.stdout


def summary(out: str) -> tuple[int, int, int]:
    """From the main job's output: views already counted at the start, sent, final total."""
    already = re.search(r"(\d+) views already counted", out)
    final = re.search(r"summary: sent (\d+), .* totals (\d+) -> (\d+) ", out)
    assert already, out
    assert final, out
    assert int(final[2]) == int(already[1]), "the summary's totals start where the run started"
    return int(already[1]), int(final[1]), int(final[3])


@pytest.mark.backends("sqlite", "kafka", "nats")
def test_main_job_counts_and_a_second_run_resumes(broker_url: str) -> None:
    # the job's topics have fixed names: on Kafka and NATS, the one test that uses them
    args = ("-m", "streams.examples.pageviews", "--broker", broker_url, "--rate", "500")
    first = run(*args, "--duration", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    before, sent, after = summary(first.stdout)
    assert sent > 0
    assert after == before + sent, "the first run counted every view it sent"
    second = run(*args, "--duration", "1")
    assert second.returncode == 0, second.stdout + second.stderr
    already, sent_again, total = summary(second.stdout)
    assert already == after, "the second run starts from the first run's final total"
    assert total == after + sent_again


def test_main_job_on_memory() -> None:
    done = run("-m", "streams.examples.pageviews", "--broker", "memory://", "--duration", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    before, sent, after = summary(done.stdout)
    assert (before, after) == (0, sent), "a fresh log: every view sent, counted once"


def test_a_worker_without_a_broker_refuses_to_run_on_a_log_of_its_own() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NEUROPLEX_BROKER"}
    result = subprocess.run(
        [*neuroplex_command(), "worker", "tests.streams._cli_app:app"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "no broker for 'cli-app'" in result.stderr
    assert "NEUROPLEX_BROKER" in result.stderr
