"""The cache's value format: a vector, then the tokens the item counts for."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from app.state.cache import MAX_COUNT, CachedItem, decode, encode

DIMS = 8
VECTOR = np.arange(DIMS, dtype=np.float32) / 7


def test_a_vector_and_its_count_round_trip():
    value = encode(CachedItem(VECTOR, 1234))
    assert value == VECTOR.astype("<f4").tobytes() + struct.pack("<I", 1234)
    item = decode(value, DIMS)
    assert item is not None and item.tokens == 1234
    np.testing.assert_array_equal(item.vector, VECTOR)
    assert item.vector.dtype == np.float32 and item.vector.shape == (DIMS,)


def test_an_entry_from_before_the_count_is_still_served_without_one():
    item = decode(VECTOR.astype("<f4").tobytes(), DIMS)
    assert item is not None and item.tokens is None
    np.testing.assert_array_equal(item.vector, VECTOR)


def test_without_usage_or_past_uint32_only_the_vector_is_kept():
    bare = VECTOR.astype("<f4").tobytes()
    assert encode(CachedItem(VECTOR, None)) == bare
    assert encode(CachedItem(VECTOR, MAX_COUNT + 1)) == bare
    assert encode(CachedItem(VECTOR, MAX_COUNT)) == bare + b"\xff\xff\xff\xff"
    assert encode(CachedItem(VECTOR.astype(np.float64), 0)) == bare + bytes(4)  # as float32


@pytest.mark.parametrize("length", [0, 4, DIMS * 4 - 4, DIMS * 4 + 1, DIMS * 4 + 8])
def test_a_value_of_another_width_is_a_miss(length):
    assert decode(bytes(length), DIMS) is None
    assert decode(None, DIMS) is None
