"""Shared fixtures: every SIMD level this CPU has, and thread counts to compare."""

import numpy as np
import pytest

import litecomp

SIMD_LEVELS = litecomp.available_simd()
THREAD_COUNTS = (1, 2, 3, 8)


@pytest.fixture(params=SIMD_LEVELS)
def simd_level(request):
    """Run the test once per SIMD level available here (scalar first)."""
    with litecomp.simd(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def same_for_all_paths(fn):
    """Call fn() under every thread count and SIMD level; return the list of results."""
    out = []
    for level in SIMD_LEVELS:
        with litecomp.simd(level):
            for n in THREAD_COUNTS:
                with litecomp.threads(n):
                    out.append(((level, n), fn()))
    return out


def pytest_report_header(config):
    info = litecomp.build_info()
    return (f"litecomp {info['version']}: openmp={info['openmp']} "
            f"simd paths tested={','.join(SIMD_LEVELS)} threads={info['num_threads']}")
