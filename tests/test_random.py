import numpy as np
import pytest

import litecomp
from litecomp.reference import random as ref


def test_bits_and_uniform_equal_reference_exactly():
    n = 200_001
    np.testing.assert_array_equal(litecomp.random.bits(n, seed=9, stream=4), ref.bits(n, 9, 4))
    for dtype in (np.float32, np.float64):
        got = litecomp.random.uniform(n, -2.0, 3.0, seed=9, stream=4, dtype=dtype)
        np.testing.assert_array_equal(got, ref.uniform(n, -2.0, 3.0, 9, 4, dtype))


def test_normal_equals_reference():
    n = 100_000
    got = litecomp.random.normal(n, 1.0, 0.5, seed=2, stream=7, dtype=np.float64)
    # libm (C) and NumPy's log/cos may differ in the last bit; near zero that is a large
    # relative but a tiny absolute difference.
    np.testing.assert_allclose(got, ref.normal(n, 1.0, 0.5, 2, 7, np.float64),
                               rtol=1e-13, atol=1e-13)


def test_distribution_moments():
    u = litecomp.random.uniform(1_000_000, -1, 1, seed=1)
    assert u.min() >= -1 and u.max() < 1
    assert abs(u.mean()) < 3e-3 and u.var() == pytest.approx(1 / 3, rel=1e-2)
    z = litecomp.random.normal(1_000_000, seed=1)
    assert abs(z.mean()) < 3e-3 and z.std() == pytest.approx(1.0, rel=5e-3)
    assert abs(((z - z.mean()) ** 3).mean()) < 0.02  # symmetric


def test_streams_and_seeds_differ_and_repeat():
    a = litecomp.random.uniform(1000, seed=1, stream=0)
    assert np.array_equal(a, litecomp.random.uniform(1000, seed=1, stream=0))
    assert not np.array_equal(a, litecomp.random.uniform(1000, seed=1, stream=1))
    assert not np.array_equal(a, litecomp.random.uniform(1000, seed=2, stream=0))
    # prefix property: element i does not depend on the array's length
    np.testing.assert_array_equal(litecomp.random.uniform(10, seed=1), a[:10])


def test_shapes():
    assert litecomp.random.normal((3, 4)).shape == (3, 4)
    assert litecomp.random.uniform(0).shape == (0,)
