import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import litecomp
from litecomp.reference import core as ref


def _check(x):
    got = litecomp.tensor_stats(x)
    want = ref.tensor_stats(x)
    for k, v in want.items():
        g = getattr(got, k)
        assert g == v or (math.isnan(g) and math.isnan(v)), (k, g, v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
def test_stats_equal_reference_bit_for_bit(dtype, simd_level):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(140_003) * 2).astype(dtype)
    x[::97] = 0
    x[5], x[6], x[7], x[8] = np.nan, np.inf, -np.inf, -0.0
    _check(x)


def test_stats_meaning():
    x = np.array([0.0, -0.0, 1.0, -3.0, np.nan, np.inf, 2.0], np.float32)
    s = litecomp.tensor_stats(x)
    assert (s.numel, s.nonzero, s.zeros, s.nan, s.posinf, s.neginf) == (7, 5, 2, 1, 1, 0)
    assert (s.min, s.max, s.absmax, s.sum, s.sumsq) == (-3.0, np.inf, 3.0, 0.0, 14.0)
    assert s.sparsity == pytest.approx(2 / 7)
    assert s.finite == 5 and s.mean == 0.0
    assert s.std == pytest.approx(math.sqrt(14 / 5))


def test_empty_and_all_nan():
    e = litecomp.tensor_stats(np.zeros(0, np.float32))
    assert (e.numel, e.sparsity, e.min, e.max, e.absmax) == (0, 0.0, math.inf, -math.inf, 0.0)
    a = litecomp.tensor_stats(np.full(5, np.nan))
    assert a.nan == 5 and a.nonzero == 5 and math.isnan(a.mean)


def test_zero_extrema_reported_as_positive_zero():
    s = litecomp.tensor_stats(np.array([-0.0, -0.0], np.float32))
    assert math.copysign(1, s.min) == 1 and math.copysign(1, s.max) == 1


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(st.sampled_from([np.float32, np.float64, np.float16]),
                  st.integers(0, 300),
                  elements=st.floats(allow_nan=True, allow_infinity=True, width=16)))
def test_stats_property_vs_reference(x):
    _check(x)


def test_sum_matches_float64_sum():
    x = litecomp.random.normal(1_000_000, seed=3)
    s = litecomp.tensor_stats(x)
    assert s.sum == pytest.approx(float(x.astype(np.float64).sum()), rel=1e-12, abs=1e-9)
    assert s.sumsq == pytest.approx(float((x.astype(np.float64) ** 2).sum()), rel=1e-12)
