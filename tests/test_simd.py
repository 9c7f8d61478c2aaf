import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import litecomp
from conftest import SIMD_LEVELS


def test_levels_and_forcing_scalar():
    assert SIMD_LEVELS[0] == "scalar"
    assert litecomp.detected_simd() == SIMD_LEVELS[-1]
    with litecomp.simd("scalar"):
        assert litecomp.get_simd() == "scalar"
        assert litecomp.build_info()["simd"] == "scalar"
    assert litecomp.get_simd() == litecomp.detected_simd()
    with litecomp.simd("avx512_vnni"):  # a cap above the CPU is clamped, not an error
        assert litecomp.get_simd() == litecomp.detected_simd()


@pytest.mark.parametrize("bad", ["sse9", 7, -1, None])
def test_bad_level_raises(bad):
    with pytest.raises(litecomp.ArgumentError, match="level"):
        litecomp.set_simd(bad)


def test_env_variable_forces_scalar():
    env = dict(os.environ, LITECOMP_SIMD="scalar")
    p = subprocess.run([sys.executable, "-c", "import litecomp; print(litecomp.get_simd())"],
                       capture_output=True, text=True, env=env, check=True)
    assert p.stdout.strip() == "scalar"


DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16,
          ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [1, 7, 16, 33, 1000, 70_001])
def test_every_path_matches_scalar(dtype, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 3).astype(dtype)
    if n > 10:
        x[[1, 4, 9]] = np.array([np.nan, np.inf, -np.inf]).astype(dtype)
    with litecomp.simd("scalar"):
        ref_stats = litecomp.tensor_stats(x)
        ref_f32 = litecomp.to_float32(x)
    for level in SIMD_LEVELS[1:]:
        with litecomp.simd(level):
            assert litecomp.tensor_stats(x) == ref_stats, level
            np.testing.assert_array_equal(litecomp.to_float32(x).view(np.uint32),
                                          ref_f32.view(np.uint32))
