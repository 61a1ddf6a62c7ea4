"""``brokers.connect(url)``: the backend is chosen by the URL's scheme."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from brokers._errors import ConfigurationError, UnsupportedURLError
from brokers._settings import (
    BrokerSettings,
    KafkaSettings,
    MemorySettings,
    NatsSettings,
    SqliteSettings,
)

if TYPE_CHECKING:
    from brokers._base import BaseBroker

__all__ = ("connect", "redact_url")

# scheme -> (module, class, settings type, extra to install)
_BACKENDS: dict[str, tuple[str, str, type[BrokerSettings], str | None]] = {
    "memory": ("brokers._memory", "MemoryBroker", MemorySettings, None),
    "sqlite": ("brokers._sqlite", "SqliteBroker", SqliteSettings, None),
    "kafka": ("brokers._kafka", "KafkaBroker", KafkaSettings, "kafka"),
    "nats": ("brokers._nats", "NatsBroker", NatsSettings, "nats"),
    "tls": ("brokers._nats", "NatsBroker", NatsSettings, "nats"),
}


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to log and show in errors)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    if parts.password is not None:
        netloc = f"{parts.username}:***@{host}"
    elif parts.scheme in ("nats", "tls"):
        netloc = f"***@{host}"  # nats://TOKEN@host: the user part is the token
    else:
        return url
    return parts._replace(netloc=netloc).geturl()


def connect(url: str, *, settings: BrokerSettings | None = None) -> BaseBroker:
    """A broker for ``url``; open it with ``async with`` (or ``await broker.open()``).

    Args:
        url: ``memory://[name]``, ``sqlite:///path/to/log.db``, ``kafka://host:port[,...]``
            or ``nats://host:port[,...]`` (``tls://`` for NATS over TLS).
        settings: the backend's settings model (:class:`KafkaSettings`, :class:`NatsSettings`,
            ...); defaults apply when omitted.

    Returns:
        A broker implementing :class:`brokers.Broker`, not yet connected.

    Raises:
        UnsupportedURLError: the scheme names no backend, or the URL has no address.
        ConfigurationError: ``settings`` belong to another backend, or the backend's extra
            (``neuroplex[kafka]``, ``neuroplex[nats]``) is not installed.

    Example:
        >>> async def main() -> None:
        ...     async with connect("memory://") as broker:
        ...         await broker.create_topic(TopicSpec("orders", partitions=4))
    """
    if not isinstance(url, str):
        raise UnsupportedURLError(repr(url), "the URL must be a str")
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise UnsupportedURLError(url, "it has no scheme")
    backend = _BACKENDS.get(scheme.lower())
    if backend is None:
        raise UnsupportedURLError(redact_url(url), f"unknown scheme {scheme!r}")
    module_name, class_name, settings_type, extra = backend
    if settings is None:
        settings = settings_type()
    elif not isinstance(settings, settings_type):
        raise ConfigurationError(
            f"{type(settings).__name__} given for {scheme}:// — use {settings_type.__name__}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise ConfigurationError(
            f"the {scheme}:// backend needs its client library: pip install 'neuroplex[{extra}]'"
        ) from exc
    cls: Any = getattr(module, class_name)
    broker: BaseBroker = cls.from_url(url, settings)
    return broker
