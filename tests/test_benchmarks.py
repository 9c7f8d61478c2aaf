import json
import os
import subprocess
import sys

from benchmarks import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_prints_table_and_writes_json(tmp_path):
    out = tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "memory bandwidth" in p.stdout and "speedup" in p.stdout
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["bandwidth_bytes_per_s"] > 0
    names = [r["case"] for r in doc["results"]]
    assert any("copy" in n for n in names)
    for r in doc["results"]:
        assert r["litecomp_s"] > 0
        assert r["missing"] or r["anchor_s"] > 0


def test_missing_anchor_is_reported_not_skipped():
    c = harness.Case("fake", "test", lambda quick: harness.Run(
        litecomp=lambda: sum(range(10)),
        anchor=harness.missing("nosuchpkg.fn", "nosuchpkg")))
    r = harness.run_case(c, quick=True, bandwidth=1e10, threads=1)
    assert r.anchor == "nosuchpkg.fn" and r.anchor_s is None
    assert r.missing == "nosuchpkg not installed"


def test_peak_memory_sees_numpy_allocations():
    import numpy as np
    peak = harness.peak_extra_memory(lambda: np.ones(64 << 20, np.uint8))
    if peak is not None:  # Linux only
        assert peak >= 60 << 20


def test_an_anchor_needs_a_check_or_a_yardstick():
    import pytest
    run = lambda quick: harness.Run(litecomp=lambda: 1, anchor=("peer", lambda: 1))  # noqa
    with pytest.raises(ValueError, match="needs check= .* or yardstick="):
        harness.run_case(harness.Case("unchecked", "test", run), quick=True, bandwidth=1e10,
                         threads=1)
    yard = lambda quick: harness.Run(litecomp=lambda: 1, anchor=("copy", lambda: 2),  # noqa
                                     yardstick="a copy of the same bytes")
    r = harness.run_case(harness.Case("y", "test", yard), quick=True, bandwidth=1e10, threads=1)
    assert "yardstick" in r.notes and "a copy of the same bytes" in r.notes

    def bad_check(a, b):
        assert a == b, "different results"
    wrong = lambda quick: harness.Run(litecomp=lambda: 1, anchor=("peer", lambda: 2),  # noqa
                                      check=bad_check)
    with pytest.raises(AssertionError, match="different results"):
        harness.run_case(harness.Case("w", "test", wrong), quick=True, bandwidth=1e10,
                         threads=1)


def test_io_comparison_reads_values_not_only_names():
    import numpy as np
    import pytest
    from benchmarks.cases import io
    a = {"w": np.zeros((2, 3), np.float32), "b": np.ones(3, np.float32)}
    io._same(a, {k: v.copy() for k, v in a.items()})
    with pytest.raises(AssertionError):
        io._same(a, {"w": np.zeros((2, 3), np.float32), "b": np.full(3, 2, np.float32)})
    with pytest.raises(AssertionError):
        io._same(a, {"w": np.zeros((3, 2), np.float32), "b": a["b"]})
    with pytest.raises(AssertionError):
        io._same(a, {"w": a["w"].astype(np.float64), "b": a["b"]})


def test_gguf_q4_0_gemv_times_q4_0_without_gguf(monkeypatch):
    import numpy as np
    import litecomp.quant as Q
    from litecomp.quant import gguf as lg
    monkeypatch.setitem(sys.modules, "gguf", None)
    harness.load_cases()
    c = next(c for c in harness.CASES if c.name == "4-bit GEMV gguf Q4_0 4096x11008 M=1 cold")
    run = c.setup(True)
    assert "gguf Q4_0" in run.notes and run.check is not None
    rng = np.random.default_rng(0)                    # the case's weight and input
    w = rng.standard_normal((256, 1024)).astype(np.float32) * 0.02
    x = rng.standard_normal((1, 1024)).astype(np.float32)
    want = Q.prepare_linear(lg.quantize(w, "Q4_0"), qtype="Q4_0", shape=w.shape)(x)
    np.testing.assert_array_equal(run.litecomp(), want)
