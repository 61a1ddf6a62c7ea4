"""connect(): URLs, settings and unreachable brokers."""

from __future__ import annotations

import asyncio
import time

import pytest

import brokers
from brokers import (
    BrokerUnavailableError,
    ConfigurationError,
    KafkaSettings,
    NatsSettings,
    ResourceStateError,
    UnsupportedURLError,
)
from brokers.testing import free_port


@pytest.mark.parametrize("url", ["redis://localhost", "localhost:9092", "", "kafka"])
def test_unknown_urls_are_refused_with_the_supported_ones(url: str) -> None:
    with pytest.raises(UnsupportedURLError, match="memory://"):
        brokers.connect(url)


def test_settings_of_another_backend_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="NatsSettings"):
        brokers.connect("kafka://127.0.0.1:9092", settings=NatsSettings())


def test_passwords_never_show_in_urls() -> None:
    assert brokers.redact_url("nats://me:s3cret@host:4222") == "nats://me:***@host:4222"
    assert brokers.redact_url("kafka://host:9092") == "kafka://host:9092"


async def test_broker_must_be_opened_first() -> None:
    broker = brokers.connect("memory://")
    with pytest.raises(ResourceStateError, match="async with"):
        await broker.list_topics()


@pytest.mark.parametrize(
    ("scheme", "settings"),
    [("kafka", KafkaSettings(connect_timeout=2)), ("nats", NatsSettings(connect_timeout=2))],
    ids=["kafka", "nats"],
)
async def test_unreachable_broker_is_a_typed_error_within_the_timeout(
    scheme: str, settings: brokers.BrokerSettings
) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="not reachable") as info:
        async with brokers.connect(url, settings=settings):
            pass
    assert info.value.retriable
    assert time.monotonic() - started < 30, "bounded by connect_timeout, never a hang"


@pytest.mark.parametrize(
    ("scheme", "settings"),
    [("kafka", KafkaSettings(connect_timeout=1)), ("nats", NatsSettings(connect_timeout=1))],
    ids=["kafka", "nats"],
)
async def test_a_server_that_never_answers_is_a_typed_error_after_connect_timeout(
    scheme: str, settings: brokers.BrokerSettings
) -> None:
    """A listener that accepts the connection and then says nothing (a hung broker, a wrong
    service behind the port): connecting ends with a typed error, it does not hang."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(30):  # far above connect_timeout: only a hang reaches it
            with pytest.raises(BrokerUnavailableError):
                async with brokers.connect(f"{scheme}://127.0.0.1:{port}", settings=settings):
                    pass
        assert held, "the client did reach the silent server"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def test_invalid_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="connect_timeout"):
        KafkaSettings(connect_timeout=-1)


def test_nats_tokens_never_show_in_urls() -> None:
    assert brokers.redact_url("nats://s3cret-token@host:4222") == "nats://***@host:4222"
    assert brokers.redact_url("kafka://user@host:9092") == "kafka://user@host:9092"
