"""Every hostile case in hostile_cases.py ends in its stated outcome within the stated CPU
time and peak memory (CPU time, not wall time: the bound is about work done, and a loaded
machine must not fail it)."""

import sys

import pytest

import hostile_cases as H
import litecomp

# ASan's redzones and quarantine (freed memory held back to catch use-after-free) make CPU
# time and peak memory meaningless there; a sanitizer build checks the outcomes only.
SANITIZED = bool(litecomp.build_info()["sanitize"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS via /proc (Linux)")
@pytest.mark.parametrize("name,title,expect,build", H.CASES, ids=[c[0] for c in H.CASES])
def test_hostile_input_is_bounded(tmp_path, name, title, expect, build):
    outcome, exc, _wall, cpu, peak = H.measure(build, str(tmp_path))
    if expect == "result":
        assert exc is None, f"{title}: {exc!r}"
    else:
        assert isinstance(exc, expect), f"{title}: {exc!r}"
    if not SANITIZED:
        assert cpu < H.BOUND_CPU_S, f"{title}: {cpu:.2f} s of CPU"
        assert peak < H.BOUND_MB, f"{title}: {peak:.0f} MB"
