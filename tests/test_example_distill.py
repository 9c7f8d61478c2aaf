"""Smoke test of examples/distill_decoder.py (tiny models, a few steps)."""

import importlib.util
import math
import os

import pytest

import litecomp

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "examples", "distill_decoder.py")


def _load():
    spec = importlib.util.spec_from_file_location("distill_decoder", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_prints_three_held_out_losses(capsys, tmp_path):
    ex = _load()
    threads = torch.get_num_threads(), litecomp.get_num_threads()
    res = ex.main(["--quick"])                       # one thread by default (--threads)
    text = ex.make_text(str(tmp_path / "t.txt"), 5_000, seed=1)
    again = ex.main(["--quick", "--text", text, "--teacher-steps", "5", "--student-steps", "3"])
    assert (torch.get_num_threads(), litecomp.get_num_threads()) == threads   # restored
    out = capsys.readouterr().out
    assert list(res) == ["teacher", "student from scratch", "distilled student"]
    assert all(math.isfinite(v) and 0 < v < math.log(64) for v in res.values())
    # the bigger, longer-trained teacher is ahead of both students even in the quick run
    assert res["teacher"] < min(res["student from scratch"], res["distilled student"])
    assert "held-out loss" in out and "distilled student" in out
    assert f"text: {text}" in out and len(again) == 3


def test_generated_text_is_deterministic(tmp_path):
    ex = _load()
    a = open(ex.make_text(str(tmp_path / "a.txt"), 2_000, seed=3)).read()
    b = open(ex.make_text(str(tmp_path / "b.txt"), 2_000, seed=3)).read()
    assert a == b and len(a) >= 2_000 and a.endswith(".\n")
