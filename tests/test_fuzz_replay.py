"""The saved fuzz corpus through the loaders: every seed (real files from torch,
safetensors, numpy, gguf) and every input the fuzzer once broke litecomp with gives a result
or a litecomp error -- no other exception -- within a time bound."""

import importlib.util
import os
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("fuzz_targets",
                                               os.path.join(ROOT, "fuzz", "targets.py"))
targets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(targets)

# A few ms each; a regression that was a hang must stay far below the fuzzer's 10 s.
TIME_LIMIT_S = 2.0


def _files(folder):
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith("."))


def test_every_target_has_seeds():
    assert targets.names(), "no fuzz targets registered"
    for name in targets.names():
        assert _files(targets.TARGETS[name].seed_dir()), f"fuzz target {name} has no seeds"


def test_seeds_load():
    """Seeds are real files and load; those named error-* raise a litecomp error."""
    for name in targets.names():
        t = targets.TARGETS[name]
        for p in _files(t.seed_dir()):
            with open(p, "rb") as f:
                got = targets.run_one(t, f.read(), _tmp(name))
            want = "error" if os.path.basename(p).startswith("error-") else "ok"
            assert got == want, (name, p)


_TMP = {}


def _tmp(name):
    import tempfile
    if name not in _TMP:
        _TMP[name] = tempfile.mkdtemp(prefix=f"fuzz-replay-{name}-")
    return _TMP[name]


CASES = [(name, path) for name in targets.names()
         for path in _files(targets.TARGETS[name].regression_dir())]


@pytest.mark.parametrize("name,path", CASES,
                         ids=[f"{n}/{os.path.basename(p)}" for n, p in CASES])
def test_regression_inputs(name, path):
    t = targets.TARGETS[name]
    with open(path, "rb") as f:
        data = f.read()
    start = time.perf_counter()
    targets.run_one(t, data, _tmp(name))       # raises on anything but a litecomp error
    assert time.perf_counter() - start < TIME_LIMIT_S


def teardown_module():
    import shutil
    for d in _TMP.values():
        shutil.rmtree(d, ignore_errors=True)
