"""``python -m brokers.demo`` produces and consumes as a group, and a second run resumes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import brokers
from brokers import ProducerRecord

ROOT = Path(__file__).resolve().parents[1]


def _demo(*args: str) -> str:
    """Run the demo in its own process; returns its output after checking it exited 0."""
    result = subprocess.run(
        [sys.executable, "-m", "brokers.demo", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _count(pattern: str, output: str) -> int:
    found = re.search(pattern, output)
    assert found, f"no match for {pattern!r} in\n{output}"
    return int(found.group(1).replace(",", ""))


def test_demo_produces_and_consumes_on_memory() -> None:
    out = _demo("--records", "3000")
    assert "found no page views in the log yet: starting fresh" in out
    assert _count(r"produced ([\d,]+) page views \(", out) == 3000
    assert _count(r"consumed ([\d,]+) \([\d,]+/s\) as group 'demo'", out) == 3000
    assert re.search(r"^  1\. user-\d{4} +[\d,]+ views$", out, re.MULTILINE), out


def test_demo_stops_at_the_duration_bound() -> None:
    out = _demo("--records", "50000000", "--duration", "1.5")
    assert _count(r"produced ([\d,]+) page views \(", out) < 50_000_000
    assert "stopped by --duration" in out


async def _append(url: str, count: int) -> None:
    """Page views no run has consumed yet, as a run stopped before its consumer caught up."""
    async with brokers.connect(url) as log:
        await log.produce_batch(
            "pageviews",
            [
                ProducerRecord(brokers.json.dumps({"user": "user-late", "page": "/"}), key=b"u")
                for _ in range(count)
            ],
        )


def test_a_second_run_on_sqlite_resumes_from_the_committed_positions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    first = _demo("--url", url, "--records", "1000")
    assert "found no page views in the log yet" in first
    assert _count(r"consumed ([\d,]+) \(", first) == 1000

    asyncio.run(_append(url, 150))
    second = _demo("--url", url, "--records", "500")
    assert (
        "found 1,150 page views already in the log: group 'demo' had committed 1,000, "
        "150 left to consume; resuming from the committed positions"
    ) in second
    # the 150 left over and the 500 new ones: nothing the first run committed is read again
    assert _count(r"consumed ([\d,]+) \(", second) == 650
    assert "of which 150 were left by an earlier run" in second
    assert "user-late" in second
