"""Ctrl-C during long multi-tensor work: a real SIGINT to a child process stops a
whole-model quantize, a prune, the CLI commands and a big (or sharded) save between tensors
with KeyboardInterrupt, and leaves no partial output -- no target file, no temporary file,
and an older checkpoint at the same place intact."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import litecomp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    # under a preloaded ASan runtime the children exit 0 silently on SIGINT: the runtime,
    # not litecomp, decides what a signal does there
    pytest.mark.skipif(bool(litecomp.build_info()["sanitize"]),
                       reason="the sanitizer runtime takes over SIGINT in the children"),
]


def _child(code, *args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)


def _interrupt_when(p, ready, timeout=120):
    """Wait until ready() is true (the child is in the middle of its work), then SIGINT."""
    end = time.monotonic() + timeout
    try:
        while not ready():
            if p.poll() is not None or time.monotonic() > end:
                out, err = p.communicate(timeout=timeout)
                pytest.fail(f"child ended before it could be interrupted: {out} {err[-800:]}")
            time.sleep(0.005)
        p.send_signal(signal.SIGINT)
        return p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:          # a failed test must not leave its child running
            p.kill()
            p.wait()


def _started(p):
    line = []

    def ready():
        if not line:
            line.append(p.stdout.readline())
        return line[0].strip() == "START"
    return ready


def _leftovers(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".tmp"))


# Work sized to take seconds even on an idle machine; the signal comes right after START.
QUANTIZE = """
import sys, time, numpy as np, litecomp
from litecomp.quant import state
w = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)
sd = {f"layer{i}.weight": w for i in range(20000)}
print("START", flush=True)
time.sleep(0.2)
out, report = state.quantize_state_dict(sd, {"method": "rtn", "bits": 4, "group_size": 32})
litecomp.save(out, sys.argv[1])
print("DONE", flush=True)
"""

PRUNE = """
import sys, time, numpy as np, litecomp
from litecomp.prune import state
w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
sd = {f"layer{i}.weight": w for i in range(40000)}
print("START", flush=True)
time.sleep(0.2)
out, masks = state.prune_state_dict(sd, {"method": "magnitude", "sparsity": 0.5})
litecomp.save(out, sys.argv[1])
print("DONE", flush=True)
"""


@pytest.mark.parametrize("code", [QUANTIZE, PRUNE], ids=["quantize_state_dict",
                                                          "prune_state_dict"])
def test_whole_model_work_stops_on_sigint(tmp_path, code):
    target = tmp_path / "out.safetensors"
    p = _child(code, target)
    out, err = _interrupt_when(p, _started(p))
    assert p.returncode == -signal.SIGINT, (p.returncode, err[-800:])
    assert "KeyboardInterrupt" in err and "DONE" not in out
    assert os.listdir(tmp_path) == []


SAVE = """
import sys, numpy as np, litecomp
sd = {f"layer{i}.weight": np.full((1024, 1024), i, np.float32) for i in range(48)}
print("START", flush=True)
kw = {"max_shard_size": sys.argv[2]} if len(sys.argv) > 2 else {}
litecomp.save(sd, sys.argv[1], **kw)
print("DONE", flush=True)
"""


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_big_save_stops_on_sigint_without_a_file(tmp_path, suffix, delay):
    """The signal lands just as the temporary file appears (the race a careless writer
    loses: the file exists but is not yet known to the cleanup), and a little later."""
    target = tmp_path / f"model{suffix}"
    p = _child(SAVE, target)

    def ready():
        if _leftovers(tmp_path):
            time.sleep(delay)
            return True
        return False
    out, err = _interrupt_when(p, ready)
    assert p.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, err[-800:]
    assert os.listdir(tmp_path) == []


def test_sharded_save_stops_on_sigint_leaving_the_old_checkpoint(tmp_path):
    old = {f"layer{i}.weight": np.full((4, 4), -i, np.float32) for i in range(48)}
    index = litecomp.save(old, tmp_path / "model.safetensors", max_shard_size=200)
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    assert len(before) > 3 and os.path.basename(index) in before
    p = _child(SAVE, tmp_path / "model.safetensors", "40MB")
    # the second shard is being written: the first is complete, yet must not be in place
    out, err = _interrupt_when(p, lambda: any("-00002-of-" in f for f in _leftovers(tmp_path)))
    assert p.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, err[-800:]
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before
    back = litecomp.load(tmp_path)
    assert all(np.array_equal(back[k], old[k]) for k in old)


def _maps(pid, path):
    def ready():
        try:
            with open(f"/proc/{pid}/maps") as f:
                return path in f.read()
        except OSError:
            return False
    return ready


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to see the input mapped")
@pytest.mark.parametrize("command", [["quantize", "--bits", "4", "--group-size", "32"],
                                     ["prune", "--amount", "0.5"]], ids=["quantize", "prune"])
def test_cli_stops_on_sigint_without_output(tmp_path, command):
    src = tmp_path / "in" / "model.safetensors"
    src.parent.mkdir()
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    litecomp.save({f"layer{i}.weight": w + i for i in range(4000)}, src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "litecomp", command[0], str(src),
                          str(out_dir / "model.safetensors"), *command[1:]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    # the input is mapped once load() has opened it: the command is at work
    out, err = _interrupt_when(p, _maps(p.pid, str(src)))
    assert p.returncode == 130, (p.returncode, err[-800:])
    assert "interrupted" in err and "Traceback" not in err
    assert os.listdir(out_dir) == []
