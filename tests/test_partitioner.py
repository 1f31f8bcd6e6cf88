"""Results go where Kafka's default partitioner puts their key, however their hashes were computed (no broker)."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given
from hypothesis import strategies as st

from transport.partitioner import VECTOR_MIN, KeyPartitioner, murmur2_many


@given(st.lists(st.binary(max_size=40), max_size=80))
def test_murmur2_many_is_kafkas_murmur2_of_each_key(keys: list[bytes]) -> None:
    """Keys of every length, the tail bytes of each length modulo 4 included, in one call."""
    assert [murmur2(key) for key in keys] == murmur2_many(keys)


def test_murmur2_many_matches_the_java_clients_values() -> None:
    """Values from Java's Utils.murmur2 (kafka-clients' UtilsTest), as unsigned 32 bits."""
    java = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    assert [value & 0xFFFFFFFF for value in java.values()] == murmur2_many(list(java))


@pytest.mark.parametrize("partitions", [1, 3, 7, 12])
@pytest.mark.parametrize("count", [1, VECTOR_MIN - 1, VECTOR_MIN, 500])
def test_places_every_key_as_aiokafkas_default_partitioner(partitions: int, count: int) -> None:
    """Primed (a batch of at least VECTOR_MIN keys) or not, and for keys primed by an earlier batch."""
    rng = random.Random(count * 100 + partitions)
    keys = [f"ok-{rng.randrange(10**9)}".encode() for _ in range(count)] + [b"", b"\xff" * 5]
    all_partitions = list(range(partitions))
    partitioner = KeyPartitioner()
    partitioner.prime(keys[:-1])
    placed = [partitioner(key, all_partitions, all_partitions) for key in keys]
    assert [DefaultPartitioner()(key, all_partitions, all_partitions) for key in keys] == placed
    partitioner.prime([b"another batch"] * VECTOR_MIN)
    assert placed == [partitioner(key, all_partitions, all_partitions) for key in keys]


def test_a_null_key_goes_to_a_partition_with_a_leader() -> None:
    partitioner = KeyPartitioner()
    assert {2, 5} == {partitioner(None, list(range(6)), [2, 5]) for _ in range(200)}
    assert {0, 1} == {partitioner(None, [0, 1], []) for _ in range(200)}
