"""pytest plugin (registered by entry point): real brokers for every backend.

Fixtures:
    backend: the backend name; tests that use it (or ``broker_url`` / ``broker``) run once per
        backend, with the name as the test id (``[memory]``, ``[sqlite]``, ``[kafka]``,
        ``[nats]``). ``@pytest.mark.backends("kafka", "nats")`` narrows the list for one test;
        ``--neuroplex-backends=memory,nats`` (or ``NEUROPLEX_BACKENDS``) for the run.
    broker_url: a URL of a running broker of that backend; one server per session per
        backend, a fresh file per test for sqlite.
    broker: an open broker on ``broker_url`` (needs pytest-asyncio), closed after the test.
    provided_broker: factory ``provided_broker("nats")`` → :class:`ProvidedBroker`.

A backend that cannot be provided is skipped with the reason, unless ``CI=true`` or
``NEUROPLEX_REQUIRE_BACKENDS=1``, when it fails the test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from brokers.testing._provision import (
    BACKENDS,
    BackendUnavailable,
    ProvidedBroker,
    provide,
    required_backends,
)

__all__ = ("pytest_addoption", "pytest_configure", "pytest_generate_tests", "pytest_report_header")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("neuroplex")
    group.addoption(
        "--neuroplex-backends",
        default=os.environ.get("NEUROPLEX_BACKENDS", ",".join(BACKENDS)),
        help="comma-separated backends to run backend tests on (default: all; "
        "env NEUROPLEX_BACKENDS)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): run this backend test only on the named backends"
    )


def pytest_report_header(config: pytest.Config) -> str:
    names = _selected(config)
    left_out = [n for n in BACKENDS if n not in names]
    required = "required" if required_backends() else "skipped when unavailable"
    line = f"neuroplex backends: {', '.join(names)} ({required})"
    return line + (f"; left out by choice: {', '.join(left_out)}" if left_out else "")


def _selected(config: pytest.Config) -> list[str]:
    raw = str(config.getoption("--neuroplex-backends"))
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise pytest.UsageError(f"unknown backends {unknown}: choose from {', '.join(BACKENDS)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    names = _selected(metafunc.config)
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None:
        names = [n for n in names if n in marker.args]
    metafunc.parametrize("backend", names, ids=names, indirect=True, scope="function")


class _Brokers:
    """Session-wide brokers, started on first use and stopped at the end of the session."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._provided: dict[str, ProvidedBroker] = {}
        self._failed: dict[str, str] = {}

    def get(self, backend: str) -> ProvidedBroker:
        if backend in self._failed:
            _unavailable(backend, self._failed[backend])
        if backend not in self._provided:
            try:
                self._provided[backend] = self._stack.enter_context(provide(backend))
            except BackendUnavailable as exc:
                self._failed[backend] = str(exc)
                _unavailable(backend, str(exc))
        return self._provided[backend]

    def close(self) -> None:
        self._stack.close()


def _unavailable(backend: str, reason: str) -> None:
    message = f"backend {backend} unavailable: {reason}"
    if required_backends():
        pytest.fail(message + " (required: CI=true or NEUROPLEX_REQUIRE_BACKENDS=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def _neuroplex_brokers() -> Iterator[_Brokers]:
    brokers = _Brokers()
    try:
        yield brokers
    finally:
        brokers.close()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test (parametrized; see the module docstring)."""
    name: str = getattr(request, "param", "memory")
    return name


@pytest.fixture
def provided_broker(_neuroplex_brokers: _Brokers) -> Callable[[str], ProvidedBroker]:
    """Get the session's running broker of a backend by name."""
    return _neuroplex_brokers.get


@pytest.fixture
def broker_url(backend: str, _neuroplex_brokers: _Brokers, tmp_path: Path) -> str:
    """A URL of a running broker of ``backend`` (a fresh log file per test for sqlite)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'log.db'}"
    return _neuroplex_brokers.get(backend).url


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - installed without the testing extra

    @pytest.fixture
    def broker(broker_url: str) -> None:
        """Fails: an async fixture needs pytest-asyncio."""
        pytest.fail(
            "the neuroplex `broker` fixture needs pytest-asyncio: "
            "pip install 'neuroplex[testing]' (or add pytest-asyncio to your test dependencies)"
        )

else:
    from brokers import Broker, connect

    @pytest_asyncio.fixture
    async def broker(  # type: ignore[misc]  # the other definition is for no pytest-asyncio
        broker_url: str,
    ) -> AsyncIterator[Broker]:
        """An open broker on ``broker_url``, closed after the test."""
        async with connect(broker_url) as opened:
            yield opened
