import json
import os
import re
import subprocess
import sys

import pytest

import litecomp
from litecomp import cli


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "litecomp", *args], capture_output=True,
                          text=True, timeout=600, **kw)


def test_demo_small_prints_parameter_table_and_summary(tmp_path):
    p = run("demo", "--small", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "embed.weight" in out and "1000x64" in out
    assert "transformer_decoder.layers.1.norm3.bias" in out
    assert "== summary" in out
    # the export step wrote a GGUF file of the shrunk model, with its report
    assert "GGUF Q4_K:" in out and (tmp_path / "model-Q4_K.gguf").stat().st_size > 0
    assert (tmp_path / "model-Q4_K.gguf.report.json").exists()
    total = sum(a.size for a in litecomp.examples.tiny_decoder_lm().values())
    assert f"{total:,} parameters" in out
    # the distill step's fused lm_head + KL gives the loss of the materialised logits
    m = re.search(r"no logits: .* loss ([0-9.]+) \(on materialised logits ([0-9.]+)\)", out)
    assert m and abs(float(m.group(1)) - float(m.group(2))) <= 2e-6, out


def test_demo_in_process_and_step_selection(capsys, tmp_path):
    assert cli.main(["demo", "--small", "--steps", "model", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== model" in out
    assert cli.main(["demo", "--small", "--steps", "nope"]) == 1
    err = capsys.readouterr().err
    assert "steps: unknown step(s) nope" in err


def test_demo_steps_are_the_modules_of_the_demo_package_in_order():
    import pkgutil

    from litecomp import demo
    names = [m.NAME for m in demo.step_modules()]
    assert names == ["model", "save/reload", "prune", "quantize", "calibrated", "shrink", "export",
                     "distill"]
    assert all(m.run.__doc__.strip() for m in demo.step_modules())
    # every module of the package is a listed step (none written and forgotten)
    assert sorted(m.name for m in pkgutil.iter_modules(demo.__path__)) == sorted(demo.STEPS)


def test_info_json_and_threads_flag(capsys):
    assert cli.main(["--threads", "1", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_threads"] == 1
    litecomp.set_num_threads(litecomp._runtime.available_cores())


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "litecomp")
    if not os.path.exists(exe):
        pytest.skip("console script not on this interpreter's bin folder")
    p = subprocess.run([exe, "info"], capture_output=True, text=True)
    assert p.returncode == 0 and "openmp" in p.stdout
