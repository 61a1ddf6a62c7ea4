"""Pieces of the NATS backend shared by the broker, its subscriptions and its groups.

URL parsing and connection options (:class:`NatsTarget`), how topics, partitions and keys map
to JetStream names and subjects (:class:`Names`), and the translation of nats-py errors into
the one error hierarchy (:func:`translate`, :func:`translating`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import logging
import re
import ssl
from collections.abc import Iterator
from typing import Any

import nats.errors
import nats.js.errors

from brokers._connect import redact_url
from brokers._errors import (
    AuthorizationError,
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    NeuroplexError,
    UnknownTopicError,
)
from brokers._settings import NatsSettings
from brokers._urls import parse_server_url

__all__ = (
    "RECOVERABLE",
    "TRANSLATED",
    "ApiError",
    "Names",
    "NatsTarget",
    "is_auth_failure",
    "log",
    "translate",
    "translating",
)

log = logging.getLogger("brokers.nats")

DEFAULT_PORT = 4222


class NatsTarget:
    """Where and how to connect: servers, credentials and TLS, checked when the broker is made.

    Secrets stay ``SecretStr`` (or private attributes) until they are handed to nats-py in
    :meth:`connect_options`; ``repr`` and :attr:`url` never show them.
    """

    def __init__(self, url: str, settings: NatsSettings) -> None:
        parsed = parse_server_url(
            url,
            schemes=("nats", "tls"),
            default_port=DEFAULT_PORT,
            example="nats://host:port[,host:port]",
        )
        scheme, user, password = parsed.scheme, parsed.username, parsed.password
        servers = [f"{scheme}://{address}" for address in parsed.servers]

        self.url = redact_url(url)  # a password or a token (nats://TOKEN@host) becomes ***
        self.servers = servers
        self.settings = settings
        self._user: str | None = None
        self._password: str | None = None
        self._token: str | None = None
        if settings.user is not None or settings.password is not None:
            self._user = settings.user
            self._password = (
                settings.password.get_secret_value() if settings.password is not None else None
            )
        elif user is not None and password is not None:
            self._user, self._password = user, password
        elif user is not None:  # nats://TOKEN@host, as the NATS tools read it
            self._token = user
        if settings.token is not None:
            self._token = settings.token.get_secret_value()
        methods = [
            name
            for name, present in (
                ("user/password", self._user is not None or self._password is not None),
                ("token", self._token is not None),
                ("nkey_seed", settings.nkey_seed is not None),
                ("creds_file", settings.creds_file is not None),
            )
            if present
        ]
        if len(methods) > 1:
            raise ConfigurationError(
                f"NATS credentials: use one of user/password, token, nkey_seed or creds_file, "
                f"not {' and '.join(methods)}"
            )
        if (settings.nkey_seed or settings.creds_file) and importlib.util.find_spec(
            "nkeys"
        ) is None:
            raise ConfigurationError(
                "nkey_seed and creds_file need the nkeys package: pip install nkeys"
            )
        if settings.creds_file is not None and not settings.creds_file.is_file():
            raise ConfigurationError(f"creds_file {str(settings.creds_file)!r} is not a file")
        self._tls: ssl.SSLContext | None = None
        if settings.tls is not None or scheme == "tls":
            try:
                self._tls = (
                    settings.tls.context()
                    if settings.tls is not None
                    else ssl.create_default_context()
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"cannot load the TLS material: {exc}") from exc

    def __repr__(self) -> str:
        return f"<NatsTarget {self.url}>"

    @property
    def has_credentials(self) -> bool:
        settings = self.settings
        return (
            self._user is not None
            or self._token is not None
            or settings.nkey_seed is not None
            or settings.creds_file is not None
        )

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.aio.client.Client.connect`` (secrets included)."""
        settings = self.settings
        options: dict[str, Any] = {
            "servers": list(self.servers),
            "name": settings.client_id,
            "connect_timeout": settings.connect_timeout,
        }
        if self._user is not None:
            options["user"] = self._user
            options["password"] = self._password or ""
        if self._token is not None:
            options["token"] = self._token
        if settings.nkey_seed is not None:
            options["nkeys_seed_str"] = settings.nkey_seed.get_secret_value()
        if settings.creds_file is not None:
            options["user_credentials"] = str(settings.creds_file)
        if self._tls is not None:
            options["tls"] = self._tls
        return options


# ---------------------------------------------------------------- names

_KV_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_LONG_KEY = 192  # longer keys are hashed in subjects (a NATS control line holds 4 KiB)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Names:
    """How topics, partitions, keys and groups map to JetStream names and subjects.

    With the default prefix ``np``, topic ``orders.v1`` is stream ``np_orders=v1`` with
    subjects ``np.orders=v1.<partition>`` (``.`` becomes ``=``: dots separate subject tokens and
    are not allowed in stream names, and ``=`` cannot occur in a topic name, so the mapping is
    one to one). A compacted topic has a subject per key:
    ``np.<topic>.<partition>.<key token>`` where the key token is the key in unpadded
    base64url (``=`` for the empty key; ``~`` and the base64url SHA-256 of the key for keys
    longer than 192 bytes).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.bucket = f"{prefix}_groups"

    @staticmethod
    def token(topic: str) -> str:
        """The topic as one subject token, stream-name and KV-key safe."""
        return topic.replace(".", "=")

    @staticmethod
    def topic_of(token: str) -> str:
        return token.replace("=", ".")

    def stream(self, topic: str) -> str:
        return f"{self.prefix}_{self.token(topic)}"

    def topic_of_stream(self, stream: str) -> str | None:
        head = f"{self.prefix}_"
        return self.topic_of(stream[len(head) :]) if stream.startswith(head) else None

    def subjects(self, topic: str, *, compacted: bool) -> str:
        """The stream's subject filter."""
        return f"{self.prefix}.{self.token(topic)}.*" + (".*" if compacted else "")

    def all_subjects(self) -> str:
        return f"{self.prefix}.>"

    def partition_subject(self, topic: str, partition: int) -> str:
        return f"{self.prefix}.{self.token(topic)}.{partition}"

    def partition_filter(self, topic: str, partition: int, *, compacted: bool) -> str:
        subject = self.partition_subject(topic, partition)
        return subject + ".*" if compacted else subject

    @staticmethod
    def key_token(key: bytes) -> str:
        if not key:
            return "="
        if len(key) > _LONG_KEY:
            return "~" + _b64(hashlib.sha256(key).digest())
        return _b64(key)

    @staticmethod
    def kv_token(name: str) -> str:
        """A group (or other free-form) name as one KV key token: as is, or ``=`` + base64url."""
        return name if _KV_SAFE.fullmatch(name) else "=" + _b64(name.encode())

    # group bookkeeping in the KV bucket ``<prefix>_groups``
    def generation_key(self, group: str) -> str:
        return f"m.{self.kv_token(group)}.gen"

    def member_prefix(self, group: str) -> str:
        return f"m.{self.kv_token(group)}.hb."

    def membership_filter(self, group: str) -> str:
        return f"m.{self.kv_token(group)}.>"

    def offsets_key(self, group: str, topic: str, partition: int) -> str:
        return f"o.{self.kv_token(group)}.{self.token(topic)}.{partition}"

    def offsets_filter(self, topic: str) -> str:
        """Every group's committed positions of ``topic``, as a subject of the bucket's stream."""
        return f"$KV.{self.bucket}.o.*.{self.token(topic)}.*"


# ---------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answer of the JetStream API (``{"error": {...}}``) or a status reply."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description
        self.index: int | None = None  # which message of a batch, for publish errors
        super().__init__(f"JetStream error {code}/{err_code}: {description}")


# JetStream API error codes used here (nats-server's errors.json)
STREAM_NOT_FOUND = 10059
STREAM_NAME_IN_USE = 10058
SUBJECTS_OVERLAP = 10065
WRONG_LAST_SEQUENCE = 10071
MESSAGE_TOO_LARGE = 10054
NO_MESSAGE_FOUND = 10037
CONSUMER_NOT_FOUND = 10014

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
    nats.errors.FlushTimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    OSError,
    TimeoutError,
)
TRANSLATED: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    ApiError,
    OSError,
    TimeoutError,
)


RECOVERABLE: tuple[type[BaseException], ...] = (NeuroplexError, *TRANSLATED)
"""What background work logs and retries: ours and nats-py's errors (network, JetStream)."""


def is_auth_failure(exc: BaseException) -> bool:
    """Whether a connection error means the server refused the credentials."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return exc.description
    if isinstance(exc, nats.js.errors.APIError) and exc.description:
        return exc.description
    text = str(exc).strip()
    name = type(exc).__name__
    if not text or text == name:
        return name
    return text.removeprefix("nats: ")


def translate(exc: BaseException, url: str, *, topic: str | None = None) -> NeuroplexError:
    """The error of our hierarchy for a nats-py (or network) error."""
    if isinstance(exc, NeuroplexError):
        return exc
    reason = _describe(exc)
    if is_auth_failure(exc) or "permissions violation" in reason.lower():
        return AuthorizationError(url, reason)
    codes: tuple[int, int] | None = None
    if isinstance(exc, ApiError):
        codes = (exc.code, exc.err_code)
    elif isinstance(exc, nats.js.errors.APIError):
        codes = (exc.code or 0, exc.err_code or 0)
    if codes is not None:
        code, err_code = codes
        if topic is not None and err_code == STREAM_NOT_FOUND:
            return UnknownTopicError(topic)
        if code in (401, 403):
            return AuthorizationError(url, reason)
        if code == 503:
            return BrokerUnavailableError(url, f"JetStream is not available: {reason}")
        return BrokerError(f"broker {url} refused the request: {reason}")
    if isinstance(exc, nats.errors.NoRespondersError):
        return BrokerUnavailableError(
            url, "JetStream does not answer (start nats-server with -js, check the account)"
        )
    if isinstance(exc, _UNAVAILABLE):
        return BrokerUnavailableError(url, reason)
    return BrokerError(f"broker {url} failed the request: {reason}")


@contextlib.contextmanager
def translating(url: str, *, topic: str | None = None) -> Iterator[None]:
    """Translate nats-py and network errors raised in the block (``raise ... from exc``)."""
    try:
        yield
    except NeuroplexError:
        raise
    except TRANSLATED as exc:
        raise translate(exc, url, topic=topic) from exc
