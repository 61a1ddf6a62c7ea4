"""The command-line sessions on the pages are replayed, so they never drift from the CLI.

A ```` ```console ```` block on a page is a terminal session: lines starting with ``$ `` are
commands, the lines after each are what it prints (stdout and stderr, as a terminal shows them).
The test runs a page's blocks with bash, in a fresh directory, with the installed ``neuroplex``
on ``PATH`` and ``docs/examples`` importable (``shop.py`` is "in the current directory"), and
compares everything they print with the page, exactly (but for trailing spaces).

A block with a ``^C`` line is a command that runs until it is stopped, in a terminal of its own:
a worker. It is started first; once its app's topics exist, the page's other blocks run; then,
once it printed what the page shows before the ``^C``, it gets SIGINT, and all it printed must
be the block.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NEUROPLEX = Path(sys.executable).parent / "neuroplex"  # the entry point pip installed
BLOCK = re.compile(r"^```console\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PAGES = sorted(p.name for p in DOCS.glob("*.md") if BLOCK.search(p.read_text()))

# the worker is ready once its app's topics exist: what a user waits for before the next terminal
READY = """
import asyncio, sys
import brokers
from streams._cli import load_app

names = {n for t in load_app(sys.argv[1]).topics.values() for n in (t.name, t.dead_letter_topic)}


async def main() -> None:
    async with brokers.connect(sys.argv[2]) as log, asyncio.timeout(60):
        while not names <= set(await log.list_topics()):
            await asyncio.sleep(0.1)

asyncio.run(main())
"""


@dataclass
class Session:
    """One console block: its commands, and what the page says they print."""

    commands: list[str]
    output: list[str]
    interrupt_after: int | None = None  # lines of output shown before ``^C``
    env: dict[str, str] = field(default_factory=dict)  # what its ``export`` lines set

    @classmethod
    def parse(cls, block: str) -> Session:
        session = cls([], [])
        for line in block.splitlines():
            if line.startswith("$ "):
                session.commands.append(line.removeprefix("$ "))
                exported = re.fullmatch(r"export (\w+)=(\S+)", session.commands[-1])
                if exported:
                    session.env[exported[1]] = exported[2]
            elif line == "^C":
                session.interrupt_after = len(session.output)
            else:
                session.output.append(line)
        return session

    @property
    def shown(self) -> str:
        return _text(self.output)


def _text(lines: list[str]) -> str:
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def _environment(cwd: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NEUROPLEX_", "FORCE_COLOR", "CLICOLOR", "TTY_", "PY_COLORS"))
    }
    path = os.pathsep.join([str(NEUROPLEX.parent), env.get("PATH", "")])
    pythonpath = os.pathsep.join([str(DOCS / "examples"), str(ROOT)])
    # a terminal 80 columns wide without colours, as rich renders when it is not a terminal
    return {**env, "PATH": path, "PYTHONPATH": pythonpath, "COLUMNS": "80", "NO_COLOR": "1"}


class Background:
    """A long-running session (a worker), its output collected as it comes."""

    def __init__(self, session: Session, cwd: Path, env: dict[str, str]) -> None:
        *exports, command = session.commands
        assert command.startswith("neuroplex worker "), f"only workers run until ^C: {command}"
        self.session, self.lines = session, list[str]()
        script = "\n".join([*exports, f"exec {command}"])  # SIGINT goes to neuroplex itself
        self.process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        app = command.split()[2]
        ready = subprocess.run(
            [sys.executable, "-c", READY, app, {**env, **session.env}["NEUROPLEX_BROKER"]],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert ready.returncode == 0, f"the worker did not start:\n{self.text}\n{ready.stderr}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return _text(self.lines)

    def interrupt(self) -> None:
        """Ctrl-C, once the worker printed what the page shows before it."""
        before = _text(self.session.output[: self.session.interrupt_after])
        deadline = time.monotonic() + 30
        while not self.text.startswith(before) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=30) == 0, self.text
        self._reader.join(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.mark.parametrize("page", PAGES)
def test_console_sessions_print_what_the_page_shows(page: str, tmp_path: Path) -> None:
    # never skipped: a page whose commands cannot run is a failure ('make install' puts it there)
    assert NEUROPLEX.exists(), f"{NEUROPLEX} is missing: run 'make install' (pip install -e .)"
    sessions = [Session.parse(m[1]) for m in BLOCK.finditer((DOCS / page).read_text())]
    assert shutil.which("bash"), "the sessions are bash"
    env = _environment(tmp_path)
    background = [Background(s, tmp_path, env) for s in sessions if s.interrupt_after is not None]
    try:
        for session in sessions:
            if session.interrupt_after is not None:
                continue
            done = subprocess.run(
                ["bash", "-c", "\n".join(session.commands)],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=90,
                check=False,
            )
            assert _text(done.stdout.splitlines()) == session.shown, f"{page}: {session.commands}"
        for worker in background:
            worker.interrupt()
            assert worker.text == worker.session.shown, f"{page}: {worker.session.commands}"
    finally:
        for worker in background:
            worker.stop()
