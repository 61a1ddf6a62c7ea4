"""Kafka's default partitioner: murmur2 of the key bytes, made positive, modulo partitions.

The same function as the Java client's ``Utils.murmur2`` / ``BuiltInPartitioner`` for keyed
records, kafkajs's ``DefaultPartitioner`` and librdkafka's ``murmur2_random``. Every backend uses
it, so a key lands on the same partition whichever client in whichever language produced it.
"""

from __future__ import annotations

import functools

from brokers._errors import ConfigurationError

__all__ = ("default_partitioner", "murmur2")

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit MurmurHash2 of ``data`` as Kafka computes it, as an unsigned int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - (length & 3)
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        if tail == 3:
            h ^= data[whole + 2] << 16
        if tail >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def default_partitioner(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner chooses for a keyed record.

    Args:
        key: the record key's bytes (keys are UTF-8 strings on the wire).
        num_partitions: the topic's partition count.

    Returns:
        ``(murmur2(key) & 0x7fffffff) % num_partitions``.

    Raises:
        ConfigurationError: ``num_partitions`` is below 1 or ``key`` is not bytes.

    Example:
        >>> default_partitioner(b"user-42", 8)
        4
    """
    if num_partitions < 1:
        raise ConfigurationError(f"num_partitions must be at least 1, got {num_partitions}")
    return _positive_hash(_key_bytes(key)) % num_partitions


def _key_bytes(key: object) -> bytes:
    if type(key) is bytes:
        return key
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise ConfigurationError(f"key {key!r} must be bytes: encode str keys as UTF-8")


@functools.lru_cache(maxsize=1 << 16)
def _positive_hash(key: bytes) -> int:
    # keys repeat (users, sessions, table keys): pure-Python murmur2 is ~2 us a key, a hit ~0.1 us
    return murmur2(key) & 0x7FFFFFFF
