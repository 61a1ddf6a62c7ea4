"""Consistency levels of KV reads, and the session context that causal and monotonic reads use.

A read waits until this process's view has applied certain log positions, per partition:

=============  ================================================================================
``eventual``   nothing: the view as it is
``monotonic``  the positions the session already *read at* (its ``reads``): never older
``causal``     those, and the positions of the session's *writes* (and of contexts it merged)
``strong``     the log end of the partition, taken when the read is called
=============  ================================================================================

Each level gives everything the ones above it in this table give.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from brokers import ConfigurationError

__all__ = ("LEVELS", "CausalContext", "Consistency", "check_level")

Consistency: TypeAlias = Literal["eventual", "strong", "causal", "monotonic"]
LEVELS: tuple[Consistency, ...] = ("eventual", "monotonic", "causal", "strong")


def check_level(level: object) -> Consistency:
    if level not in LEVELS:
        raise ConfigurationError(
            f"consistency {level!r}: use 'eventual', 'strong', 'causal' or 'monotonic'"
        )
    return level


def _raise(positions: dict[int, int], partition: int, offset: int) -> None:
    if offset > positions.get(partition, -1):
        positions[partition] = offset


@dataclass(slots=True)
class CausalContext:
    """A session's place in the log, per partition; pass it as ``context=`` to reads and writes.

    ``writes`` holds the offset of the session's last write to each partition; ``reads`` the
    position the view had reached when the session last read the partition. A ``monotonic``
    read waits for ``reads`` (it never shows an older state than the session saw); a
    ``causal`` read waits for both (it also sees the session's own writes, wherever they were
    made). :meth:`to_dict` / :meth:`from_dict` carry it to another service (in an HTTP header,
    a message); :meth:`merge` joins two sessions' pasts.
    """

    writes: dict[int, int] = field(default_factory=dict)
    reads: dict[int, int] = field(default_factory=dict)

    def note_write(self, partition: int, offset: int) -> None:
        """The session wrote the record at ``offset``."""
        _raise(self.writes, partition, offset)

    def note_read(self, partition: int, position: int) -> None:
        """The session read from a view that had applied ``partition`` up to ``position``."""
        _raise(self.reads, partition, position)

    def causal(self) -> dict[int, int]:
        """Per partition, what a causal read must have seen: writes and reads together."""
        wanted = dict(self.reads)
        for partition, offset in self.writes.items():
            _raise(wanted, partition, offset)
        return wanted

    def merge(self, other: CausalContext) -> None:
        for partition, offset in other.writes.items():
            self.note_write(partition, offset)
        for partition, position in other.reads.items():
            self.note_read(partition, position)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {
            "writes": {str(p): o for p, o in self.writes.items()},
            "reads": {str(p): o for p, o in self.reads.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, int]]) -> CausalContext:
        """Rebuild a context from :meth:`to_dict`; raises ``ConfigurationError`` on bad data."""
        try:
            return cls(
                {int(p): int(o) for p, o in data.get("writes", {}).items()},
                {int(p): int(o) for p, o in data.get("reads", {}).items()},
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"invalid causal context {data!r}: use what CausalContext.to_dict() returned"
            ) from exc
