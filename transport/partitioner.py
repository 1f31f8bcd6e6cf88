"""Kafka's default partitioner for keyed records, its hashes computed a batch at a time.

A keyed record goes to partition `toPositive(murmur2(key)) % partitions`, in Java's client, in
librdkafka's `murmur2_random` and in aiokafka's `DefaultPartitioner`, so that readers find a key
where every producer puts it. aiokafka computes murmur2 in pure Python, one key per `send` (2.2 us
for a 10-byte request id). `KeyPartitioner` places records exactly as aiokafka's does, but `prime`
hashes a batch of keys at once with numpy, and `__call__` then finds a primed key's hash in a dict:
0.5 us a key in batches of 500, 1.0 in batches of 32 (`python -m bench.partitioner`, medians of 3).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from aiokafka.partitioner import murmur2

SEED = 0x9747B28C
M = np.uint32(0x5BD1E995)
VECTOR_MIN = 32  # fewer keys than this: one at a time is as fast (numpy's calls cost more than they save)


def murmur2_many(keys: Sequence[bytes]) -> list[int]:
    """Kafka's murmur2 of each key (unsigned 32 bits, as aiokafka's `murmur2`), keys of a length at once."""
    hashes = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(index)
    for length, indexes in by_length.items():
        data = np.frombuffer(b"".join([keys[i] for i in indexes]), dtype=np.uint8).reshape(len(indexes), length)
        h = np.full(len(indexes), SEED ^ length, dtype=np.uint32)
        words = length // 4
        if words:
            blocks = np.ascontiguousarray(data[:, : words * 4]).view("<u4")
            for word in range(words):
                k = blocks[:, word] * M
                k ^= k >> 24
                k *= M
                h *= M
                h ^= k
        tail, base = length % 4, words * 4
        if tail >= 3:
            h ^= data[:, base + 2].astype(np.uint32) << 16
        if tail >= 2:
            h ^= data[:, base + 1].astype(np.uint32) << 8
        if tail >= 1:
            h ^= data[:, base].astype(np.uint32)
            h *= M
        h ^= h >> 13
        h *= M
        h ^= h >> 15
        for index, value in zip(indexes, h.tolist(), strict=True):
            hashes[index] = value
    return hashes


class KeyPartitioner:
    """aiokafka's `partitioner`: where `DefaultPartitioner` puts a record, with primed keys' hashes looked up."""

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def prime(self, keys: Sequence[bytes | None]) -> None:
        """Hash these keys at once for the sends that follow; what an earlier call primed is dropped."""
        if len(keys) < VECTOR_MIN:
            self._hashes = {}
            return
        unique = list(dict.fromkeys(key for key in keys if key is not None))
        self._hashes = dict(zip(unique, murmur2_many(unique), strict=True))

    def __call__(self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
        if key is None:  # as DefaultPartitioner: any partition with a leader
            return random.choice(available or all_partitions)
        hashed = self._hashes.get(key)
        if hashed is None:
            hashed = murmur2(key)
        return all_partitions[(hashed & 0x7FFFFFFF) % len(all_partitions)]


PARTITIONER = KeyPartitioner()  # the process's producers share it (a miss is hashed on the spot, as aiokafka does)
