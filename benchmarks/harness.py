"""The benchmark harness: litecomp beside its anchor (torch, gguf, safetensors, numpy) in the
same run, as ratios, plus the fraction of this machine's measured memory bandwidth.

A case is a function decorated with ``@case(...)`` in a module of benchmarks/cases/.  It
gets ``quick`` (tiny sizes for CI) and returns a ``Run``:

    @case("copy 256 MiB", group="core")
    def copy(quick):
        src = ...; dst = ...
        return Run(litecomp=lambda: ..., anchor=("numpy.copyto", lambda: ...),
                   bytes=2 * src.nbytes)

``bytes`` is what the litecomp call must move through memory at least (bytes read plus
bytes written); the roofline fraction is bytes / time / measured bandwidth.  An anchor that
cannot be imported is given as ``anchor=("torch ...", None)`` or with ``missing(...)`` and
shows as missing in the table, never silently dropped (and never replaced by something
else).

Every case whose anchor runs says how the two results are compared: ``check=`` (a function
of both outputs that raises when litecomp and the anchor did not compute the same thing),
or ``yardstick=`` (why the anchor is a speed reference that computes something else, e.g.
a memory copy of the same bytes; printed in the notes).  A case with neither is an error.
"""

import gc
import importlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np


@dataclass
class Run:
    litecomp: Callable[[], object]
    anchor: tuple = ("", None)  # (name, callable or None when missing)
    bytes: Optional[int] = None
    missing_reason: str = ""
    notes: str = ""
    check: Optional[Callable[[object, object], None]] = None  # (litecomp_out, anchor_out)
    yardstick: str = ""  # why the anchor computes something else (then no check)


@dataclass
class Case:
    name: str
    group: str
    setup: Callable[[bool], Run]
    repeats: int = 5
    warm_up: bool = True  # False: the one measured call is also the peak call (long cases)


@dataclass
class Result:
    case: str
    group: str
    litecomp_s: float
    anchor: str
    anchor_s: Optional[float]
    ratio: Optional[float]
    roofline: Optional[float]
    litecomp_peak: Optional[int]
    anchor_peak: Optional[int]
    notes: str = ""
    missing: str = ""
    extra: dict = field(default_factory=dict)


CASES: list = []


def case(name: str, *, group: str, repeats: int = 5, warm_up: bool = True):
    """Register a benchmark case (see the module docstring).  ``warm_up=False`` (cases of
    many seconds, where a first-call effect is noise): each side runs once, and that call
    gives both its time and its peak memory."""
    def deco(fn):
        CASES.append(Case(name, group, fn, repeats, warm_up))
        return fn
    return deco


def missing(anchor_name: str, package: str) -> tuple:
    """An anchor whose package is not installed: (name, None) plus the reason."""
    return (anchor_name, None, f"{package} not installed")


def optional_import(name: str):
    """Import a module or return None (the case then reports its anchor as missing)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# ------------------------------------------------------------------ measurement
def _rss_status():
    try:
        with open("/proc/self/status") as f:
            d = {}
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    d[k] = int(v.split()[0]) * 1024
            return d
    except OSError:
        return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Hand memory freed by earlier calls back to the OS (glibc's malloc_trim), so the
    starting point is what is really in use and a call measured after another one does
    not look smaller by reusing the first one's freed heap."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_memory(fn) -> Optional[int]:
    """Peak resident memory above the starting point while fn runs (Linux; None elsewhere)."""
    return run_with_peak(fn)[0]


def run_with_peak(fn):
    """Run fn once; return (peak extra resident bytes or None, fn's result).

    Resets the kernel's high-water mark (clear_refs 5), runs fn, reads VmHWM.  It sees
    every allocator (NumPy, torch, C), unlike tracemalloc.
    """
    gc.collect()
    _trim_heap()
    ok = _reset_peak()
    before = _rss_status() if ok else None
    out = fn()
    after = _rss_status() if ok else None
    if not before or not after:
        return None, out
    return max(0, after["VmHWM"] - before["VmRSS"]), out


def time_it(fn, repeats: int, warm: bool = False, *, clock=time.perf_counter,
            warm_ups: int = 1) -> float:
    """Median time of ``repeats`` calls on ``clock`` (wall time; ``time.thread_time`` for
    this thread's CPU time), after ``warm_ups`` warm-up calls unless ``warm``."""
    for _ in range(0 if warm else warm_ups):
        fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def measure_bandwidth(quick: bool) -> float:
    """This machine's memory bandwidth in bytes/s: STREAM-style copy in C (litecomp's
    stream_copy, all kernel threads), bytes read + bytes written, best of several runs."""
    from litecomp import _C
    n = (32 if quick else 512) << 20
    src = np.ones(n, np.uint8)
    dst = np.zeros(n, np.uint8)
    _C.stream_copy(dst, src)
    best = min(_timed(lambda: _C.stream_copy(dst, src)) for _ in range(3 if quick else 7))
    return 2 * n / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_case(c: Case, quick: bool, bandwidth: float, threads: int) -> Result:
    run = c.setup(quick)
    repeats = 1 if quick else c.repeats
    anchor = run.anchor
    reason = run.missing_reason
    if len(anchor) == 3:
        anchor_name, anchor_fn, reason = anchor
    else:
        anchor_name, anchor_fn = anchor
    if anchor_fn is not None:
        if run.check is None and not run.yardstick:
            raise ValueError(f"{c.name}: a case with an anchor needs check= (both sides "
                             "computed the same thing) or yardstick= (why not)")
        _set_torch_threads(threads)
    # The first call of each side is the warm-up; it also gives the peak memory and the
    # output the check compares, so a slow anchor runs 1 + repeats times, not more.
    single = not c.warm_up and not quick
    lp, lout, lt = _timed_with_peak(run.litecomp)
    if not single:
        lt = time_it(run.litecomp, repeats, warm=True)
    at = ap = None
    if anchor_fn is not None:
        ap, aout, at = _timed_with_peak(anchor_fn)
        if not single:
            at = time_it(anchor_fn, repeats, warm=True)
        if run.check is not None:
            run.check(lout, aout)
        del aout
    del lout
    roof = (run.bytes / lt / bandwidth) if run.bytes else None
    notes = run.notes
    if run.yardstick and anchor_fn is not None:
        notes = f"{notes}; " if notes else ""
        notes += f"anchor is a yardstick, not the same computation: {run.yardstick}"
    return Result(case=c.name, group=c.group, litecomp_s=lt, anchor=anchor_name,
                  anchor_s=at, ratio=(at / lt) if at is not None else None, roofline=roof,
                  litecomp_peak=lp, anchor_peak=ap, notes=notes,
                  missing="" if anchor_fn is not None else (reason or "missing"))


def _timed_with_peak(fn):
    t = time.perf_counter()
    peak, out = run_with_peak(fn)
    return peak, out, time.perf_counter() - t


def _set_torch_threads(n: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def load_cases(pattern: Optional[str] = None):
    """Import every benchmarks/cases/*.py (they register themselves) and filter by name."""
    here = os.path.join(os.path.dirname(__file__), "cases")
    for fname in sorted(os.listdir(here)):
        if fname.endswith(".py") and not fname.startswith("_"):
            importlib.import_module(f"benchmarks.cases.{fname[:-3]}")
    if not pattern:
        return list(CASES)
    pats = [p.strip().lower() for p in pattern.split(",")]
    return [c for c in CASES if any(p in c.name.lower() or p == c.group for p in pats)]
