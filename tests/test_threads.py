import os
import subprocess
import sys

import numpy as np
import pytest

import litecomp
from conftest import THREAD_COUNTS, same_for_all_paths


def test_set_get_and_context_manager_restore():
    old = litecomp.get_num_threads()
    try:
        litecomp.set_num_threads(3)
        assert litecomp.get_num_threads() == 3
        with litecomp.threads(1):
            assert litecomp.get_num_threads() == 1
            assert litecomp.build_info()["num_threads"] == 1
        assert litecomp.get_num_threads() == 3
        with pytest.raises(RuntimeError):
            with litecomp.threads(5):
                raise RuntimeError("boom")
        assert litecomp.get_num_threads() == 3
    finally:
        litecomp.set_num_threads(old)


@pytest.mark.parametrize("bad", [0, -1, 5000, 2.5, "2", None, True])
def test_bad_thread_counts_raise_naming_n(bad):
    with pytest.raises(litecomp.ArgumentError, match="n"):
        litecomp.set_num_threads(bad)


def test_default_is_available_cores():
    env = {k: v for k, v in os.environ.items() if k != "LITECOMP_NUM_THREADS"}
    p = subprocess.run([sys.executable, "-c",
                        "import litecomp; print(litecomp.get_num_threads(), "
                        "litecomp._runtime.available_cores())"],
                       capture_output=True, text=True, env=env, check=True)
    got, cores = p.stdout.split()
    assert got == cores


def test_env_variable_sets_threads():
    env = dict(os.environ, LITECOMP_NUM_THREADS="3")
    p = subprocess.run([sys.executable, "-c", "import litecomp; print(litecomp.get_num_threads())"],
                       capture_output=True, text=True, env=env, check=True)
    assert p.stdout.strip() == "3"


def test_bad_env_variable_is_a_clear_error():
    env = dict(os.environ, LITECOMP_NUM_THREADS="lots")
    p = subprocess.run([sys.executable, "-c", "import litecomp"], capture_output=True,
                       text=True, env=env)
    assert p.returncode != 0
    assert "LITECOMP_NUM_THREADS" in p.stderr and "lots" in p.stderr


def _bits(x):
    return x.view(np.uint8).tobytes() if isinstance(x, np.ndarray) else repr(x)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 65535, 65536, 65537, 300_001])
def test_tensor_stats_identical_for_every_thread_count_and_path(n):
    x = litecomp.random.normal(n, seed=n)
    if n > 20:
        x[3], x[17], x[19] = np.nan, np.inf, -0.0
    results = same_for_all_paths(lambda: litecomp.tensor_stats(x))
    first = results[0][1]
    for key, r in results:
        assert r == first, key
        assert r.sum.hex() == first.sum.hex(), key


def test_random_and_conversion_identical_for_every_thread_count():
    n = 3 * (1 << 16) + 5
    ref_u = None
    for t in THREAD_COUNTS:
        with litecomp.threads(t):
            u = litecomp.random.uniform(n, seed=1, stream=2)
            z = litecomp.random.normal(n, seed=1, stream=2)
            b = litecomp.to_float32(z.astype(np.float64) * 1.000001)
        if ref_u is None:
            ref_u, ref_z, ref_b = u, z, b
        assert _bits(u) == _bits(ref_u) and _bits(z) == _bits(ref_z) and _bits(b) == _bits(ref_b)
