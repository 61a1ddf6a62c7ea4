"""Pieces of the Kafka backend shared by the broker and its subscriptions.

URL parsing, the options every aiokafka client gets, the translation of aiokafka errors into the
one error hierarchy, and two narrow adaptations of aiokafka 0.14 internals, each explained where
it is made:

- :func:`forbid_auto_create` — aiokafka's clients ask for metadata with
  ``allow_auto_topic_creation=True`` and offer no option to turn it off, so a producer that still
  tracks a deleted topic (or any client asking about a missing one) would re-create it on Tansu,
  and on Kafka brokers with ``auto.create.topics.enable``. Topics are never auto-created here.
- :func:`record_from_kafka` — the hot path of consumption builds :class:`~brokers.Record`
  directly from the decoded wire record instead of building aiokafka's ``ConsumerRecord`` first
  and converting it (which cost a third of the consumer's throughput).
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
from collections.abc import Iterator
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.client import ConnectionGroup
from aiokafka.conn import create_conn
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.structs import TopicPartition
from pydantic import SecretStr

from brokers._connect import redact_url
from brokers._errors import (
    AuthorizationError,
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    NeuroplexError,
    StaleMemberError,
    UnknownTopicError,
)
from brokers._settings import KafkaSettings
from brokers._types import Headers, Record
from brokers._urls import parse_server_url

__all__ = (
    "KafkaTarget",
    "error_for_code",
    "forbid_auto_create",
    "leave_from_generation_zero",
    "make_record",
    "probe",
    "record_from_kafka",
    "translate",
    "translating",
)

log = logging.getLogger("brokers.kafka")

DEFAULT_PORT = 9092


class KafkaTarget:
    """Where and how to connect: bootstrap servers, security, and the options for aiokafka.

    Built once from the URL and the settings, so every configuration error surfaces when the
    broker object is made, not at the first request. The password stays a ``SecretStr`` until
    it is handed to aiokafka; ``repr`` never shows it.
    """

    def __init__(self, url: str, settings: KafkaSettings) -> None:
        parsed = parse_server_url(
            url,
            schemes=("kafka",),
            default_port=DEFAULT_PORT,
            example="kafka://host:port[,host:port]",
        )
        username, password, servers = parsed.username, parsed.password, list(parsed.servers)

        self.url = redact_url(url)
        self.servers = servers
        self.settings = settings
        self.username = settings.username if settings.username is not None else username
        self._password: SecretStr | None = (
            settings.password
            if settings.password is not None
            else (SecretStr(password) if password is not None else None)
        )
        protocol = settings.security_protocol
        if protocol.startswith("SASL"):
            if self.username is None or self._password is None:
                raise ConfigurationError(
                    f"security_protocol={protocol} needs username and password in the "
                    "KafkaSettings (or kafka://user:password@host:port)"
                )
        elif self.username is not None or settings.sasl_mechanism is not None:
            raise ConfigurationError(
                f"SASL credentials or sasl_mechanism are set but security_protocol={protocol}: "
                "use SASL_PLAINTEXT or SASL_SSL"
            )
        self._ssl: ssl.SSLContext | None = None
        if protocol in ("SSL", "SASL_SSL"):
            try:
                self._ssl = (
                    settings.tls.context()
                    if settings.tls is not None
                    else ssl.create_default_context()
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"cannot load the TLS material: {exc}") from exc
        elif settings.tls is not None:
            raise ConfigurationError(
                f"TLS settings are given but security_protocol={protocol}: use SSL or SASL_SSL"
            )

    def __repr__(self) -> str:
        return f"<KafkaTarget {self.url} {self.settings.security_protocol}>"

    def connection_options(self) -> dict[str, Any]:
        """Keyword arguments for ``aiokafka.conn.create_conn``."""
        settings = self.settings
        options: dict[str, Any] = {
            "client_id": settings.client_id,
            "request_timeout_ms": int(settings.request_timeout * 1000),
            "security_protocol": settings.security_protocol,
            "ssl_context": self._ssl,
        }
        if settings.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = self.username
            assert self._password is not None  # checked in __init__
            options["sasl_plain_password"] = self._password.get_secret_value()
        return options

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by aiokafka's client, admin client, producer and consumer."""
        return {"bootstrap_servers": list(self.servers), **self.connection_options()}


async def probe(target: KafkaTarget) -> None:
    """Open one connection (with the SASL handshake) to find out why a broker cannot be used.

    aiokafka's bootstrap logs every failure and then raises a bare "unable to bootstrap", so the
    broker opens one connection itself first and reports the real reason: refused credentials
    as :class:`AuthorizationError`, anything else as :class:`BrokerUnavailableError`.
    """
    reasons: list[str] = []
    options = target.connection_options()
    for server in random.sample(target.servers, len(target.servers)):
        host, _, port = server.rpartition(":")
        try:
            conn = await create_conn(host.strip("[]"), int(port), **options)
            try:
                await conn.send(MetadataRequest([]))  # what bootstrapping asks first
            finally:
                conn.close()
        except ssl.SSLError as exc:
            raise AuthorizationError(
                target.url, f"TLS handshake with {server} failed: {exc}"
            ) from exc
        except (KeyError, ValueError) as exc:
            # aiokafka's SCRAM client fails this way when the server's final message is the
            # RFC 5802 error ("e=...") instead of a signature: the credentials were refused.
            if target.settings.security_protocol.startswith("SASL"):
                raise AuthorizationError(
                    target.url, f"SASL authentication with {server} failed"
                ) from exc
            raise
        except _AUTH_ERRORS as exc:
            raise AuthorizationError(target.url, _describe(exc)) from exc
        except (OSError, TimeoutError, kafka_errors.KafkaError) as exc:
            reason = _describe(exc)
            if "closed" in str(exc) and not target.settings.security_protocol.startswith("SASL"):
                reason += " (a broker that requires SASL closes unauthenticated connections)"
            reasons.append(f"{server}: {reason}")
            continue
        return
    raise BrokerUnavailableError(target.url, "; ".join(reasons))


# ---------------------------------------------------------------- errors

_AUTH_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.AuthenticationFailedError,
    kafka_errors.AuthenticationMethodNotSupported,
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.IllegalSaslStateError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailed,
)
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.NoBrokersAvailable,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.LeaderNotAvailableError,
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.GroupCoordinatorNotAvailableError,
    kafka_errors.NotCoordinatorForGroupError,
    kafka_errors.GroupLoadInProgressError,
    kafka_errors.NotControllerError,
    kafka_errors.KafkaStorageError,
    kafka_errors.NotEnoughReplicasError,
    kafka_errors.NotEnoughReplicasAfterAppendError,
    OSError,
    TimeoutError,
)
_STALE_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.CommitFailedError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.RebalanceInProgressError,
    kafka_errors.IllegalStateError,  # "partition not assigned": it moved to another member
)
_CONFIGURATION_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.InvalidTopicError,
    kafka_errors.InvalidPartitionsError,
    kafka_errors.InvalidReplicationFactorError,
    kafka_errors.InvalidReplicationAssignmentError,
    kafka_errors.InvalidConfigurationError,
    kafka_errors.InvalidSessionTimeoutError,
    kafka_errors.InvalidGroupIdError,
    kafka_errors.PolicyViolationError,
    kafka_errors.KafkaConfigurationError,
)
# What aiokafka raises besides KafkaError subclasses (and what the network raises under it).
TRANSLATED: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaError,
    kafka_errors.IllegalOperation,
    kafka_errors.ConsumerStoppedError,
    OSError,
    TimeoutError,
)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if not text or text == name:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def error_for_code(code: int, message: str | None = None) -> kafka_errors.KafkaError:
    """The aiokafka error for a protocol error code (to translate with :func:`translate`)."""
    error: kafka_errors.KafkaError = kafka_errors.for_code(code)(message)
    return error


def translate(
    exc: BaseException,
    url: str,
    *,
    topic: str | None = None,
    group: str | None = None,
) -> NeuroplexError:
    """The error of our hierarchy for an aiokafka (or network) error."""
    if isinstance(exc, NeuroplexError):
        return exc
    reason = _describe(exc)
    if isinstance(exc, _AUTH_ERRORS):
        return AuthorizationError(url, reason)
    if isinstance(exc, kafka_errors.UnknownTopicOrPartitionError) and topic is not None:
        return UnknownTopicError(topic)
    if isinstance(exc, _STALE_ERRORS) and group is not None:
        return StaleMemberError(
            group, "the group rebalanced since this member's assignment (a new generation)"
        )
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return BrokerUnavailableError(url, reason)
    if isinstance(exc, _CONFIGURATION_ERRORS):
        return ConfigurationError(f"broker {url} rejected the request as invalid: {reason}")
    error = BrokerError(f"broker {url} failed the request: {reason}")
    if isinstance(exc, kafka_errors.KafkaError) and getattr(exc, "retriable", False):
        return _RetriableBrokerError(str(error))
    return error


class _RetriableBrokerError(BrokerError):
    """A broker error aiokafka marks retriable that has no more specific branch."""

    retriable = True


@contextlib.contextmanager
def translating(url: str, *, topic: str | None = None, group: str | None = None) -> Iterator[None]:
    """Translate aiokafka and network errors raised in the block (``raise ... from exc``)."""
    try:
        yield
    except NeuroplexError:
        raise
    except TRANSLATED as exc:
        raise translate(exc, url, topic=topic, group=group) from exc


# ---------------------------------------------------------------- metadata without auto-creation


async def _metadata_update(self: Any, cluster_metadata: Any, topics: Any) -> bool:
    """``AIOKafkaClient._metadata_update`` of aiokafka 0.14, asking never to auto-create topics.

    The only change from the original is ``allow_auto_topic_creation=False``.
    """
    metadata_request = MetadataRequest(
        list(topics) if topics else None, allow_auto_topic_creation=False
    )
    nodeids: list[Any] = [b.nodeId for b in self.cluster.brokers()]
    bootstrap_id = ("bootstrap", ConnectionGroup.DEFAULT)
    if bootstrap_id in self._conns:
        nodeids.append("bootstrap")
    random.shuffle(nodeids)
    for node_id in nodeids:
        conn = await self._get_conn(node_id)
        if conn is None:
            continue
        try:
            metadata = await conn.send(metadata_request)
        except (TimeoutError, kafka_errors.KafkaError) as err:
            log.warning("metadata request to node %s failed: %r", node_id, err)
            continue
        if not metadata.brokers:
            return False
        cluster_metadata.update_metadata(metadata)
        if bootstrap_id in self._conns and len(self.cluster.brokers()):
            self._conns.pop(bootstrap_id).close()
        break
    else:
        log.error("metadata update failed on every known node: %s", nodeids)
        cluster_metadata.failed_update(None)
        return False
    return True


def forbid_auto_create(client: Any) -> None:
    """Make an ``AIOKafkaClient`` ask for metadata without ever creating a topic.

    aiokafka 0.14 has no option for it (its consumer's ``allow_auto_create_topics`` is gone),
    so the client's metadata update is replaced on this one instance: nothing global changes.
    """
    original = getattr(type(client), "_metadata_update", None)
    if original is None or not hasattr(client, "_conns"):
        raise ConfigurationError(
            "this aiokafka version is not supported by neuroplex: install aiokafka>=0.11,<0.15"
        )
    client._metadata_update = _metadata_update.__get__(client)


async def _leave_group(coordinator: Any, consumer: Any) -> None:
    """aiokafka's group leave, also from generation 0 when this member holds every partition.

    aiokafka leaves only from a generation above 0, but Tansu numbers a group's first
    generation 0: a lone member that closed never said so, and the next member to join waited
    out its session. Only a lone member leaves from generation 0: when two members leave one
    after the other, Tansu keeps waiting, for as long as the rebalance timeout, for the one
    that left while the rebalance was under way (measured: a newcomer still unassigned after
    30 s; it happens from generation 1 too, with aiokafka's own leave). Best effort, as
    aiokafka's: a failed request is logged, and the session timeout ends the membership anyway.
    """
    generation = coordinator.generation
    if coordinator.member_id and (generation > 0 or (generation == 0 and _alone(consumer))):
        request = LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
        try:
            await coordinator._send_req(request)
        except kafka_errors.KafkaError as exc:
            log.info("leaving group %r failed: %r", coordinator.group_id, exc)
    coordinator.reset_generation()


def _alone(consumer: Any) -> bool:
    """Whether the consumer holds every partition of the topics it subscribed to."""
    held = consumer.assignment()
    cluster = consumer._client.cluster
    for topic in consumer.subscription():
        partitions = cluster.partitions_for_topic(topic) or set()
        if any(TopicPartition(topic, p) not in held for p in partitions):
            return False
    return bool(held)


def leave_from_generation_zero(consumer: Any) -> None:
    """Let a started consumer's group coordinator leave its group on close from generation 0
    too (see :func:`_leave_group`); nothing global changes."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "_maybe_leave_group"):
        return  # no group, or an aiokafka without the hook: it leaves from generation 1 on
    if getattr(coordinator, "_group_instance_id", None) is not None:
        return  # static membership: leaving is not wanted
    coordinator._maybe_leave_group = lambda: _leave_group(coordinator, consumer)


# ---------------------------------------------------------------- records on the hot path

_new_tuple = tuple.__new__  # Record(...) without its keyword-handling __new__


def make_record(
    topic: str,
    partition: int,
    offset: int,
    timestamp: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
) -> Record:
    """``Record(...)`` built from its fields in order; the same immutable record."""
    return _new_tuple(Record, (topic, partition, offset, timestamp, key, value, headers))


def headers_of(raw: Any) -> Headers:
    """Wire headers as ``(str, bytes)`` pairs (Kafka allows a null header value: ``b""``)."""
    if not raw:
        return ()
    headers: tuple[tuple[str, Any], ...] = tuple(raw)
    for _, value in headers:
        if value is None:
            return tuple((name, b"" if v is None else v) for name, v in headers)
    return headers


def record_from_kafka(tp: Any, wire: Any) -> Record:
    """A :class:`Record` from aiokafka's decoded wire record (``PartitionRecords`` hook)."""
    return _new_tuple(
        Record,
        (
            tp.topic,
            tp.partition,
            wire.offset,
            wire.timestamp,
            wire.key,
            wire.value,
            headers_of(wire.headers),
        ),
    )
