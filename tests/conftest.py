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


def same_for_all_paths(fn, split=True):
    """Call fn() under every thread count and SIMD level; return the list of results.
    With split (the default), fn's input must be big enough for its kernels to ask for the
    whole team (above LC_PARALLEL_MIN): otherwise every thread count runs on one thread and
    the comparison proves nothing, so that is an error here."""
    out = []
    for level in SIMD_LEVELS:
        with litecomp.simd(level):
            for n in THREAD_COUNTS:
                with litecomp.threads(n):
                    litecomp._C.team_probe()
                    out.append(((level, n), fn()))
                    team = litecomp._C.team_probe()
                assert not split or team == n, \
                    f"under threads({n}) the kernels asked for {team} thread(s): the input " \
                    "is below the parallel threshold, so this compares one thread with itself"
    return out


def pytest_report_header(config):
    info = litecomp.build_info()
    return (f"litecomp {info['version']}: openmp={info['openmp']} "
            f"simd paths tested={','.join(SIMD_LEVELS)} threads={info['num_threads']}")
