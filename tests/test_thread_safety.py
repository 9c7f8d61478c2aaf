"""Kernels called from several Python threads at once (each releases the GIL) give the
bits a serial call gives, and thread counts never leak between threads: ``with threads(n):``
belongs to the calling thread, and ``set_num_threads`` / ``set_simd`` from another thread
while a call runs cannot change its result (the SIMD cap is process-wide: it may change the
path a call takes, never its bits)."""

import random
import threading

import pytest

import litecomp
from conftest import SIMD_LEVELS
from kernel_cases import as_bytes, make_cases

CASES = make_cases()


@pytest.fixture(scope="module")
def serial():
    with litecomp.threads(1), litecomp.simd("scalar"):
        return {name: as_bytes(fn()) for name, fn in CASES.items()}


def test_every_case_splits_work_across_threads():
    """The inputs are above the parallel threshold: every kernel asks for the whole team
    (and a tiny input for one thread), so the thread comparisons below compare real splits."""
    litecomp._C.team_probe()
    for name, fn in CASES.items():
        with litecomp.threads(3):
            fn()
            assert litecomp._C.team_probe() == 3, name
    small = litecomp.random.normal(100)
    with litecomp.threads(3):
        litecomp._C.team_probe()
        litecomp.quant.histc(small, 8, -1.0, 1.0)
        assert litecomp._C.team_probe() == 1


def test_settings_belong_to_the_calling_thread():
    old = litecomp.get_num_threads()
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def other():
        with litecomp.threads(2):
            inside.set()
            release.wait(10)
            seen["threads"] = litecomp.get_num_threads()

    th = threading.Thread(target=other)
    th.start()
    inside.wait(10)
    assert litecomp.get_num_threads() == old
    with litecomp.threads(3):
        litecomp.set_num_threads(4)              # inside a block: the block takes it too
        assert litecomp.get_num_threads() == 4
        release.set()
        th.join()
    assert seen == {"threads": 2}                # the main thread's changes did not leak
    assert litecomp.get_num_threads() == 4         # the process default that was set
    litecomp.set_num_threads(old)


def test_concurrent_calls_equal_serial_under_setting_churn(serial):
    """Four Python threads run every kernel under their own thread count while a fifth
    keeps changing the process-wide thread count and SIMD cap."""
    errors, stop = [], threading.Event()
    old = litecomp.get_num_threads()

    def churn():
        r = random.Random(1)
        while not stop.is_set():
            litecomp.set_num_threads(r.randint(1, 4))
            litecomp.set_simd(r.choice(SIMD_LEVELS))

    def worker(wid):
        r = random.Random(wid)
        names = list(CASES)
        try:
            for _ in range(2):
                r.shuffle(names)
                for name in names:
                    k = r.randint(1, 3)
                    with litecomp.threads(k):
                        litecomp._C.team_probe()
                        got = as_bytes(CASES[name]())
                        assert litecomp.get_num_threads() == k
                        assert litecomp._C.team_probe() == k, name
                    if got != serial[name]:
                        errors.append((wid, name, k))
        except Exception as exc:            # noqa: BLE001 - reported below
            errors.append((wid, repr(exc)))

    ch = threading.Thread(target=churn)
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    ch.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    ch.join()
    litecomp.set_num_threads(old)
    litecomp.set_simd(SIMD_LEVELS[-1])
    assert not errors, errors
