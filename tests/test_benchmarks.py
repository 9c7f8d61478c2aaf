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
