"""The numpy fast path of vector packing gives exactly the bytes of the precise path, and
steps aside (None) for anything the precise path refuses or decides differently."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gathering_cache import ArgumentTypeError, InvalidArgumentError
from gathering_cache.caches.embeddings import check_vector
from gathering_cache.core.encoding import encode_vector, encode_vector_fast

ITEMS = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(),  # NaN, infinities, float64 beyond float32's range
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)


def _precise(embedding: Any, dimensions: int | None, precision: Any) -> bytes | None:
    try:
        return encode_vector(check_vector(embedding, dimensions), precision)
    except (ArgumentTypeError, InvalidArgumentError):
        return None


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(ITEMS, min_size=0, max_size=12),
    dimensions=st.one_of(st.none(), st.integers(1, 12)),
    precision=st.sampled_from(["lossless", "float32"]),
)
def test_lists_pack_exactly_as_the_precise_path(
    items: list[Any], dimensions: int | None, precision: Any
) -> None:
    fast = encode_vector_fast(items, dimensions, precision)
    if fast is not None:
        assert fast == _precise(items, dimensions, precision)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=False), min_size=1, max_size=12),
    dtype=st.sampled_from(["float16", "float32", "float64", "int64", "uint8", "bool"]),
    precision=st.sampled_from(["lossless", "float32"]),
)
def test_numpy_arrays_pack_exactly_as_the_precise_path(
    values: list[float], dtype: str, precision: Any
) -> None:
    with np.errstate(all="ignore"):
        array = np.array(values).astype(dtype)
    fast = encode_vector_fast(array, None, precision)
    if fast is not None:
        assert fast == _precise(array, None, precision)
    if dtype == "bool":
        assert fast is None  # a bool vector is refused by the precise path


@pytest.mark.parametrize("size", [1536, 3072])
def test_real_embeddings_take_the_fast_path(size: int) -> None:
    rng = np.random.default_rng(1)
    exact = rng.standard_normal(size).astype(np.float32)
    for embedding, width in ((exact.tolist(), b"f"), (exact, b"f"), (rng.random(size), b"d")):
        packed = encode_vector_fast(embedding, size, "lossless")
        assert packed is not None
        assert packed[1:2] == width
        assert packed == encode_vector(check_vector(embedding, size))


def test_exact_zeros_and_ones_stay_on_the_fast_path_but_a_bool_does_not() -> None:
    """0.0 and 1.0 (and the ints 0 and 1) are numbers like any other; only a bool, which
    packs to the same 0.0 or 1.0, must leave the fast path for the precise one's refusal."""
    vector: list[Any] = [0.25 * i for i in range(-8, 9)] + [1.0, 0, 1]
    fast = encode_vector_fast(vector, None)
    assert fast is not None
    assert fast == _precise(vector, None, "lossless")
    for flag in (True, False):
        with_bool = [*vector, flag]
        assert encode_vector_fast(with_bool, None) is None
        assert _precise(with_bool, None, "lossless") is None
    assert encode_vector_fast([], None) is None
