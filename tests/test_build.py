import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import litecomp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env=None, check=True):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "litecomp", *args], capture_output=True,
                       text=True, env=e, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_build_info_keys_and_values():
    info = litecomp.build_info()
    for key in ("version", "openmp", "simd", "num_threads"):
        assert key in info
    assert info["version"] == litecomp.__version__ == "0.1.0"
    assert info["simd"] in litecomp._runtime.SIMD_LEVELS
    assert info["num_threads"] == litecomp.get_num_threads()
    assert isinstance(info["openmp"], bool)


@pytest.mark.skipif(os.environ.get("LITECOMP_ALLOW_SERIAL") == "1",
                    reason="LITECOMP_ALLOW_SERIAL=1: serial build accepted")
def test_openmp_is_on_with_gcc_on_linux():
    if sys.platform != "linux":
        pytest.skip("OpenMP expectation only pinned for Linux/gcc")
    assert litecomp.build_info()["openmp"] is True


def test_version_and_info_commands():
    p = run_cli("--version")
    assert p.stdout.startswith(f"litecomp {litecomp.__version__}")
    assert "openmp" in p.stdout and "simd" in p.stdout
    info = json.loads(run_cli("info", "--json").stdout)
    assert info["version"] == litecomp.__version__
    assert info["openmp"] == litecomp.build_info()["openmp"]


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no C compiler")
def test_serial_fallback_build_warns_and_works(tmp_path):
    """LITECOMP_NO_OPENMP=1 builds serial kernels with a visible warning; the result imports,
    reports openmp False, and computes the same bits.  Also: -Wall -Wextra clean.

    Built the way ``pip install .`` builds: ``pip wheel`` in an isolated environment with the
    build requirements of pyproject.toml, not with whatever setuptools this venv holds."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "csrc"), src / "csrc")
    shutil.copytree(os.path.join(ROOT, "litecomp"), src / "litecomp",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    env = dict(os.environ, LITECOMP_NO_OPENMP="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v",
                        "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, env=env, timeout=900)
    log = p.stdout + p.stderr
    if p.returncode != 0 and ("NewConnectionError" in log or "No matching distribution" in log):
        pytest.skip("pip could not fetch the build requirements (offline?)")
    assert p.returncode == 0, log[-3000:]
    assert "OpenMP not available" in log
    compiler_warnings = [line for line in log.splitlines()
                         if "warning:" in line and ".c:" in line]
    assert compiler_warnings == []
    (wheel,) = (tmp_path / "dist").glob("litecomp-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("import litecomp, numpy as np; i = litecomp.build_info(); "
            "assert litecomp.__file__.startswith(%r), litecomp.__file__; "
            "x = litecomp.random.normal(100000, seed=5); "
            "print(i['openmp'], litecomp.tensor_stats(x).sum.hex())" % str(site))
    q = subprocess.run([sys.executable, "-c", code], cwd=site, capture_output=True,
                       text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    openmp, total = q.stdout.split()
    assert openmp == "False"
    here = litecomp.tensor_stats(litecomp.random.normal(100000, seed=5)).sum.hex()
    assert total == here
