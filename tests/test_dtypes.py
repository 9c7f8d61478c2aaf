import ml_dtypes
import numpy as np
import pytest

import litecomp
from litecomp import dtypes


def test_codes_for_every_weight_dtype():
    assert dtypes.code_of(np.float32) == 0
    assert dtypes.code_of(np.float64) == 1
    assert dtypes.code_of(np.float16) == 2
    assert dtypes.code_of(ml_dtypes.bfloat16) == 3
    assert dtypes.code_of(ml_dtypes.float8_e4m3fn) == 4
    assert dtypes.code_of(np.bool_) == 11
    with pytest.raises(litecomp.DTypeError, match="complex64"):
        dtypes.code_of(np.complex64)


def test_raw_view_of_bf16_is_uint16_bits():
    x = np.array([1.0, -2.5, 0.0], ml_dtypes.bfloat16)
    raw = dtypes.raw_view(x)
    assert raw.dtype == np.uint16
    assert raw.tolist() == [0x3F80, 0xC020, 0x0000]


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
def test_to_float32_is_exact_for_every_16_bit_pattern(dtype, simd_level):
    bits = np.arange(1 << 16, dtype=np.uint16)
    x = bits.view(dtype)
    got = litecomp.to_float32(x)
    want = x.astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2])
def test_to_float32_is_exact_for_every_float8_pattern(dtype):
    x = np.arange(256, dtype=np.uint8).view(dtype)
    got = litecomp.to_float32(x)
    want = x.astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_float64_rounds_to_nearest_even(simd_level):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_007) * 10.0 ** rng.integers(-40, 40, 10_007)
    x[:4] = [1.0 + 2.0 ** -24, 1.0 + 3 * 2.0 ** -24, 1e300, -1e-300]
    with np.errstate(over="ignore"):
        want = x.astype(np.float32)
    np.testing.assert_array_equal(litecomp.to_float32(x).view(np.uint32), want.view(np.uint32))


def _variants(x):
    """The same values in memory layouts a kernel must not misread."""
    yield "strided", np.ascontiguousarray(np.repeat(x[:, None], 2, 1))[:, 0]
    yield "reversed", np.ascontiguousarray(x[::-1])[::-1]
    yield "fortran", np.asfortranarray(x.reshape(-1, 5))
    if x.dtype.itemsize > 1 and x.dtype.kind == "f":
        yield "byteswapped", x.astype(x.dtype.newbyteorder(">"))
    buf = np.zeros(x.nbytes + 1, np.uint8)[1:]
    mis = buf.view(x.dtype)
    mis[...] = x
    yield "misaligned", mis


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
def test_non_contiguous_and_odd_layouts_give_identical_results(dtype):
    x = np.random.default_rng(1).standard_normal(1000).astype(dtype)
    ref = litecomp.tensor_stats(x)
    ref32 = litecomp.to_float32(x)
    for name, v in _variants(x):
        assert litecomp.tensor_stats(v) == ref, name
        np.testing.assert_array_equal(litecomp.to_float32(v).ravel(), ref32, err_msg=name)


def test_2d_views_keep_their_shape():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    v = x[:, ::2]
    np.testing.assert_array_equal(litecomp.to_float32(v), v)
    assert litecomp.to_float32(v).shape == (4, 3)
