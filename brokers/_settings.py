"""Connection settings, one pydantic model per backend; credentials are ``SecretStr``."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from brokers._errors import ConfigurationError

__all__ = (
    "BrokerSettings",
    "KafkaSettings",
    "MemorySettings",
    "NatsSettings",
    "SqliteSettings",
    "TLSSettings",
)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigurationError(f"invalid {type(self).__name__}: {problems}") from exc


class TLSSettings(_Model):
    """TLS material for Kafka (SSL / SASL_SSL) or NATS (``tls://``)."""

    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    keyfile_password: SecretStr | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` built from these files (system CAs when ``cafile`` is unset)."""
        ctx = ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)
        ctx.check_hostname = self.check_hostname
        if self.certfile is not None:
            password = self.keyfile_password.get_secret_value() if self.keyfile_password else None
            ctx.load_cert_chain(
                str(self.certfile),
                str(self.keyfile) if self.keyfile else None,
                password=password,
            )
        return ctx


class BrokerSettings(_Model):
    """Settings every backend has.

    Attributes:
        connect_timeout: seconds to wait for the broker before
            :class:`~brokers.BrokerUnavailableError` (never a hang).
        request_timeout: seconds one request (produce, metadata, commit) may take.
        max_record_bytes: the largest record (key + value + headers) accepted; larger ones raise
            :class:`~brokers.RecordTooLargeError` before anything is sent.
        client_id: how this process names itself to the broker.
    """

    connect_timeout: float = Field(default=10.0, gt=0)
    request_timeout: float = Field(default=30.0, gt=0)
    max_record_bytes: int = Field(default=1_000_000, gt=0)
    client_id: str = "neuroplex"


class MemorySettings(BrokerSettings):
    """Settings of ``memory://``."""


class SqliteSettings(BrokerSettings):
    """Settings of ``sqlite:///path/to/log.db``.

    Attributes:
        poll_interval: the longest a consumer in another process waits to notice new records
            (consumers in the same process are woken at once).
        heartbeat_interval: how often a group member renews its lease.
        synchronous: ``"full"`` (default) syncs the write-ahead log to disk before a produce
            returns: acknowledged records survive a process kill and a power loss. ``"normal"``
            syncs only at checkpoints: they survive a process kill, but the last transactions
            before a power loss or OS crash may be lost (the file stays consistent).
        maintenance_interval: how often retention, compaction and the purge of deleted topics
            run in the background (in small steps between produce batches).
        integrity_check: run SQLite's ``quick_check`` over the whole file when opening it
            (time grows with the file's size); damage is otherwise reported when first read.
    """

    poll_interval: float = Field(default=0.05, gt=0)
    heartbeat_interval: float = Field(default=1.0, gt=0)
    synchronous: Literal["full", "normal"] = "full"
    maintenance_interval: float = Field(default=1.0, gt=0)
    integrity_check: bool = False


class KafkaSettings(BrokerSettings):
    """Settings of ``kafka://host:port[,host:port...]`` (aiokafka underneath).

    Attributes:
        security_protocol: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
        sasl_mechanism: ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512`` with SASL.
        username: the SASL user.
        password: the SASL password.
        tls: TLS material for ``SSL`` / ``SASL_SSL``.
        linger_ms: how long the producer waits to fill a batch.
        heartbeat_interval: group heartbeat period, seconds (below a third of the session
            timeout).
        replication_factor: for topics this client creates.
    """

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    password: SecretStr | None = None
    tls: TLSSettings | None = None
    linger_ms: int = Field(default=5, ge=0)
    heartbeat_interval: float = Field(default=1.0, gt=0)
    replication_factor: int = Field(default=1, ge=1)


class NatsSettings(BrokerSettings):
    """Settings of ``nats://host:port[,host:port...]`` (nats-py JetStream underneath).

    Credentials: one of ``user``/``password``, ``token``, ``nkey_seed`` or ``creds_file``
    (user and password may also be given in the URL, ``nats://user:pass@host:4222``).

    Attributes:
        tls: TLS material (or use a ``tls://`` URL).
        replicas: stream replicas for topics this client creates (cluster size permitting).
        storage: JetStream storage for topics this client creates.
        heartbeat_interval: how often a group member renews its membership.
        prefix: prefix of every stream, subject and bucket name neuroplex creates.
    """

    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    nkey_seed: SecretStr | None = None
    creds_file: Path | None = None
    tls: TLSSettings | None = None
    replicas: int = Field(default=1, ge=1, le=5)
    storage: Literal["file", "memory"] = "file"
    heartbeat_interval: float = Field(default=1.0, gt=0)
    prefix: str = Field(default="np", pattern=r"^[A-Za-z0-9_-]+$")
