"""Server URLs of the networked backends: ``scheme://[user[:password]@]host[:port][,host[:port]]``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from brokers._connect import redact_url
from brokers._errors import UnsupportedURLError

__all__ = ("ServerURL", "parse_server_url")


@dataclass(frozen=True, slots=True)
class ServerURL:
    """A parsed server URL. ``servers`` are ``host:port`` (IPv6 hosts in brackets)."""

    scheme: str
    username: str | None
    password: str | None
    servers: tuple[str, ...]


def parse_server_url(
    url: str, *, schemes: tuple[str, ...], default_port: int, example: str
) -> ServerURL:
    """Split a server URL, refusing anything but servers and credentials.

    Args:
        url: the URL as given.
        schemes: the schemes this backend accepts, lower case.
        default_port: the port of a server named without one.
        example: the URL's shape for error messages, e.g. ``kafka://host:port[,host:port]``.

    Raises:
        UnsupportedURLError: another scheme, a path or query, an invalid or missing server.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in schemes:
        starts = " or ".join(f"{s}://" for s in schemes)
        raise UnsupportedURLError(redact_url(url), f"this URL starts with {starts}")
    netloc, _, path = rest.partition("/")
    if path.strip("/") or "?" in netloc or "#" in netloc:
        raise UnsupportedURLError(redact_url(url), f"the URL names only servers: {example}")
    username: str | None = None
    password: str | None = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    servers: list[str] = []
    for part in netloc.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            parsed = urlsplit(f"//{part}")
            host, port = parsed.hostname, parsed.port or default_port
        except ValueError as exc:
            raise UnsupportedURLError(redact_url(url), f"invalid server {part!r}") from exc
        if not host:
            raise UnsupportedURLError(redact_url(url), f"invalid server {part!r}")
        servers.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if not servers:
        raise UnsupportedURLError(redact_url(url), f"it names no server ({example})")
    return ServerURL(scheme, username, password, tuple(servers))
