"""The one error hierarchy of neuroplex.

Every error the project raises descends from :class:`NeuroplexError`. Branches follow what the
caller must do about it, not where it came from::

    NeuroplexError
    ├── ConfigurationError          fix the settings or the call, then retry
    │   └── UnsupportedURLError     the broker URL's scheme or shape is not known
    ├── BrokerError                 the log said no, or could not be reached
    │   ├── BrokerUnavailableError  (retriable) not reachable within the connect timeout
    │   ├── AuthorizationError      credentials refused or operation not permitted
    │   ├── RecordTooLargeError     one record is larger than the broker accepts
    │   ├── LogFileError            the embedded log's file (sqlite://) cannot be used
    │   │   ├── LogFileAccessError  the path cannot be opened for writing
    │   │   ├── NotALogError        the file is not a neuroplex log
    │   │   ├── LogVersionError     written by a newer neuroplex: upgrade to open it
    │   │   └── LogCorruptedError   the file is damaged: restore it from a copy
    │   ├── TopicError
    │   │   ├── UnknownTopicError   create the topic first
    │   │   └── TopicConflictError  the topic exists with other settings
    │   └── CommitError
    │       └── StaleMemberError    this group member's generation is over; rejoin
    ├── SerializationError          a record does not decode or validate (upper layers)
    └── ResourceStateError
        └── ClosedError             the resource was closed; open a new one

Third-party errors (aiokafka, nats-py, sqlite3) are translated at the ``brokers`` boundary with
``raise ... from exc``: user code never sees them. Upper layers (streams, agents) add their own
subclasses under the same root.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = (
    "AuthorizationError",
    "BrokerError",
    "BrokerUnavailableError",
    "ClosedError",
    "CommitError",
    "ConfigurationError",
    "LogCorruptedError",
    "LogFileAccessError",
    "LogFileError",
    "LogVersionError",
    "NeuroplexError",
    "NotALogError",
    "RecordTooLargeError",
    "ResourceStateError",
    "SerializationError",
    "StaleMemberError",
    "TopicConflictError",
    "TopicError",
    "UnknownTopicError",
    "UnsupportedURLError",
)


class NeuroplexError(Exception):
    """Root of every error raised by neuroplex."""


class ConfigurationError(NeuroplexError, ValueError):
    """The settings or the arguments of a call are invalid: fix them and call again."""


class UnsupportedURLError(ConfigurationError):
    """A broker URL that names no known backend."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(
            f"cannot connect to {url!r}: {reason}. Use one of memory://, "
            "sqlite:///path/to/log.db, kafka://host:port[,host:port] or nats://host:port."
        )


class BrokerError(NeuroplexError):
    """The log refused an operation or could not be reached.

    ``retriable`` says whether the same call may succeed if simply tried again later.
    """

    retriable: ClassVar[bool] = False


class BrokerUnavailableError(BrokerError):
    """The broker did not answer within the connect or request timeout."""

    retriable: ClassVar[bool] = True

    def __init__(self, url: str, reason: str, *, timeout: float | None = None) -> None:
        self.url = url
        self.reason = reason
        self.timeout = timeout
        waited = f" within {timeout:g} s" if timeout is not None else ""
        super().__init__(
            f"broker {url} is not reachable{waited}: {reason}. Check that it is running and "
            "that the address is right, or raise connect_timeout in the settings."
        )


class AuthorizationError(BrokerError):
    """The broker refused the credentials, or the operation is not permitted for them."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(
            f"broker {url} refused access: {reason}. Check the credentials in the settings "
            "(user, password, token, SASL mechanism, TLS) and the broker's permissions."
        )


class RecordTooLargeError(BrokerError):
    """One record is larger than the broker (or the configured limit) accepts."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        self.topic = topic
        self.size = size
        self.limit = limit
        super().__init__(
            f"record of {size} bytes for topic {topic!r} exceeds the limit of {limit} bytes. "
            "Split the value, store large payloads elsewhere and send a reference, or raise "
            "the broker's maximum message size and max_record_bytes in the settings."
        )


class LogFileError(BrokerError):
    """The file of the embedded log (``sqlite://``) cannot be used as it is."""

    def __init__(self, path: str, reason: str, advice: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"log file {path!r}: {reason}. {advice}")


class LogFileAccessError(LogFileError):
    """The log file cannot be opened for reading and writing.

    Its folder is missing, permissions or a read-only file system forbid writing, or the disk
    is full. Every process of a ``sqlite://`` log needs write access to the file and its folder
    (SQLite keeps ``-wal`` and ``-shm`` files beside it).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            path,
            reason,
            "Point the URL at a writable file in an existing folder, e.g. "
            "sqlite:///var/lib/app/log.db (the folder needs write access too).",
        )


class NotALogError(LogFileError):
    """The file exists but is not a neuroplex log (another SQLite database, or not SQLite)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            path,
            reason,
            "Check the path; neuroplex never overwrites a file it did not create.",
        )


class LogVersionError(LogFileError):
    """The log was written in a newer format than this version of neuroplex can read."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            path,
            f"its format version is {found}, newer than version {supported} which this "
            "neuroplex reads",
            "Upgrade neuroplex in this environment to open it.",
        )


class LogCorruptedError(LogFileError):
    """The log file is damaged (a disk fault, or a change made outside neuroplex)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            path,
            reason,
            "Restore the file from a copy, or salvage it with the sqlite3 shell's .recover.",
        )


class TopicError(BrokerError):
    """A problem with a topic's existence or settings."""


class UnknownTopicError(TopicError):
    """The topic does not exist."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(
            f"topic {topic!r} does not exist. Create it first with "
            "broker.create_topic(TopicSpec(name, partitions=N)); topics are never auto-created."
        )


class TopicConflictError(TopicError):
    """The topic exists with settings other than those asked for."""

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(
            f"topic {topic!r} already exists with other settings: {reason}. Use the existing "
            "settings, or pick a new topic name (partition counts cannot be changed in place)."
        )


class CommitError(BrokerError):
    """Positions could not be committed."""


class StaleMemberError(CommitError):
    """A consumer-group member whose generation is over tried to commit.

    Its partitions now belong to another member; the records it handled since its last commit
    will be handled again by the new owner (at-least-once).
    """

    def __init__(self, group: str, reason: str) -> None:
        self.group = group
        self.reason = reason
        super().__init__(
            f"commit refused for group {group!r}: {reason}. This member no longer owns the "
            "partitions; stop handling them and let the subscription rejoin the group."
        )


class SerializationError(NeuroplexError):
    """A record did not decode or validate."""


class ResourceStateError(NeuroplexError):
    """The resource is not in a state that allows the operation."""


class ClosedError(ResourceStateError):
    """The resource was closed; it cannot be used again."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what} is closed. Open a new one; closed resources cannot be reused.")
