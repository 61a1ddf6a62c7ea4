"""How a record's key, tombstone mark and headers ride in NATS message headers.

The value is the message payload, as is. Everything else goes into the NATS header block, in
the order produced, so any NATS client can publish and read records:

``Np-Key: <key>``
    the key, when it is text a header carries unchanged: valid UTF-8 without control
    characters and without leading or trailing whitespace (nats.js trims header values and
    refuses CR/LF in them). The empty key is ``Np-Key:`` with an empty value.
``Np-Key-B64: <base64>``
    any other key, in standard base64.
``Np-Null: 1``
    the value is ``None`` (a tombstone); the payload is empty. Without it an empty payload is
    the value ``b""``.
``<name>: <value>``
    a record header whose name is an HTTP token and whose value is text as above. Names
    starting with ``Np-`` or ``Nats-`` are reserved (JetStream's own headers start with
    ``Nats-`` and are not record headers).
``Np-Hdr: <base64url name>.<base64url value>``
    any other record header (binary values, reserved or unusual names).

Headers are parsed from the raw header block, so repeated names and their order survive.
"""

from __future__ import annotations

import base64
import binascii
import re

from brokers._types import Headers

__all__ = ("decode_headers", "encode_headers")

_HEAD = b"NATS/1.0\r\n"
_CRLF = b"\r\n"
_KEY = b"Np-Key: "
_KEY_B64 = b"Np-Key-B64: "
_NULL = b"Np-Null: 1\r\n"
_HDR = b"Np-Hdr: "
_ONLY_KEY = _HEAD + _KEY
_ONLY_KEY_SIZE = len(_ONLY_KEY)

# text a header value carries unchanged: no control characters, no outer whitespace
_PLAIN = re.compile(rb"(?:[!-~\x80-\xff](?:[ -~\x80-\xff]*[!-~\x80-\xff])?)?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED = ("np-", "nats-")


def _plain(value: bytes) -> bool:
    if _PLAIN.fullmatch(value) is None:
        return False
    if value.isascii():
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _plain_name(name: str) -> bool:
    return _TOKEN.fullmatch(name) is not None and not name.lower().startswith(_RESERVED)


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64url(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def encode_headers(
    key: bytes | None, tombstone: bool, headers: Headers, extra: bytes = b""
) -> bytes | None:
    """The NATS header block of a record, or ``None`` when it needs none.

    ``extra`` is appended as is (complete ``Name: value\\r\\n`` lines, e.g. ``Nats-TTL``).
    """
    if key is None and not tombstone and not headers and not extra:
        return None
    parts = [_HEAD]
    if key is not None:
        if _plain(key):
            parts += (_KEY, key, _CRLF)
        else:
            parts += (_KEY_B64, base64.b64encode(key), _CRLF)
    if tombstone:
        parts.append(_NULL)
    for name, value in headers:
        if _plain_name(name) and _plain(value):
            parts += (name.encode("ascii"), b": ", value, _CRLF)
        else:
            parts += (_HDR, _b64url(name.encode("utf-8")), b".", _b64url(value), _CRLF)
    if extra:
        parts.append(extra)
    parts.append(_CRLF)
    return b"".join(parts)


def decode_headers(block: bytes) -> tuple[bytes | None, bool, Headers]:
    """``(key, tombstone, headers)`` from a NATS header block (as written by any client).

    Lines that do not parse are skipped, as are JetStream's ``Nats-`` headers and ``Np-``
    headers this version does not know; a malformed ``Np-`` value is skipped rather than
    failing the whole record.
    """
    if block.startswith(_ONLY_KEY) and block.find(_CRLF, _ONLY_KEY_SIZE) == len(block) - 4:
        return block[_ONLY_KEY_SIZE:-4].strip(b" \t"), False, ()  # the common case: a key
    key: bytes | None = None
    tombstone = False
    headers: list[tuple[str, bytes]] = []
    for line in block.split(_CRLF)[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        value = value.strip(b" \t")
        lowered = name.lower()
        if lowered.startswith(b"np-"):
            try:
                if lowered == b"np-key":
                    key = value
                elif lowered == b"np-key-b64":
                    key = base64.b64decode(value, validate=True)
                elif lowered == b"np-null":
                    tombstone = True
                elif lowered == b"np-hdr":
                    raw_name, _, raw_value = value.partition(b".")
                    headers.append((_unb64url(raw_name).decode("utf-8"), _unb64url(raw_value)))
            except (binascii.Error, ValueError):
                continue
        elif not lowered.startswith(b"nats-"):
            headers.append((name.strip().decode("utf-8", "replace"), value))
    return key, tombstone, tuple(headers)
