"""Threads, SIMD level and build facts: the knobs every kernel obeys."""

import contextlib
import os
import platform
import sys

from . import _C
from ._check import check_int
from .errors import ArgumentError

__version__ = "0.1.0"

SIMD_LEVELS = ("scalar", "avx2", "avx512", "avx512_vnni")


def available_cores() -> int:
    """Cores this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int) -> None:
    """Set the number of threads litecomp's kernels use, for the whole process (results do
    not depend on it).  Inside a ``with threads(m):`` block it also sets that block's
    value, so the caller sees what it set; other threads' blocks keep theirs."""
    _C.set_num_threads(check_int(n, "n", 1, 4096))


def get_num_threads() -> int:
    """The number of threads litecomp's kernels use when called from this thread."""
    return _C.get_num_threads()


@contextlib.contextmanager
def threads(n: int):
    """``with litecomp.threads(n):`` run this thread's kernels on n threads inside the
    block, then restore.  The setting belongs to the calling thread: kernels that other
    Python threads run at the same time keep their own count."""
    n = check_int(n, "n", 1, 4096)
    old = _C.thread_override()
    _C.set_thread_override(n)
    try:
        yield
    finally:
        _C.set_thread_override(old)


_TRIM = None


def release_memory() -> None:
    """Give the heap's free pages back to the operating system (glibc's ``malloc_trim``;
    nothing elsewhere).  Freed NumPy and torch buffers of a few MB stay in the heap and keep
    counting as resident memory; a pipeline that frees a block's working set calls this
    so the next block starts from what is really in use."""
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                _TRIM = ctypes.CDLL(None).malloc_trim
                _TRIM.argtypes, _TRIM.restype = [ctypes.c_size_t], ctypes.c_int
            except (OSError, AttributeError):
                _TRIM = False
    if _TRIM:
        _TRIM(0)


_BLAS = None


def _blas_controller():
    """threadpoolctl's controller of NumPy's BLAS, or False without threadpoolctl."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
            _BLAS = ThreadpoolController().select(user_api="blas")
        except Exception:  # noqa: BLE001 - absent or unusable: run as is
            _BLAS = False
    return _BLAS


def blas_single_thread():
    """``with blas_single_thread():`` NumPy's BLAS/LAPACK run on one thread inside.

    For the small factorizations of a larger computation (a 512x512 Cholesky, a 128x128
    triangular inverse): threaded LAPACK splits them into steps with a barrier each, and a
    barrier waits for the slowest thread -- on a machine whose cores are busy (or shared
    with torch's own thread pool) that turns milliseconds into seconds.  Large GEMMs keep
    every thread.  Process-wide while it lasts (BLAS has one setting); needs threadpoolctl,
    else it changes nothing."""
    c = _blas_controller()
    return c.limit(limits=1) if c else contextlib.nullcontext()


def _level_number(level) -> int:
    if isinstance(level, str):
        if level not in SIMD_LEVELS:
            raise ArgumentError(f"level: {level!r} is not one of {', '.join(SIMD_LEVELS)}")
        return SIMD_LEVELS.index(level)
    return check_int(level, "level", 0, len(SIMD_LEVELS) - 1)


def set_simd(level) -> None:
    """Cap the SIMD level kernels may use, for the whole process: 'scalar' forces the
    reference path everywhere.

    The effective level is the lower of the cap and what this CPU supports.  The
    ``LITECOMP_SIMD`` environment variable sets the cap at import.  Unlike the thread
    count the cap is process-wide (kernels read it on their worker threads); every level
    gives the same bits, so it only ever changes speed.
    """
    _C.set_simd_cap(_level_number(level))


def get_simd() -> str:
    """The SIMD level kernels use now."""
    return SIMD_LEVELS[_C.simd_level()]


def detected_simd() -> str:
    """The best SIMD level this CPU and OS support."""
    return SIMD_LEVELS[_C.build_info()["simd_detected"]]


def available_simd() -> tuple:
    """Every level that can be forced here, from 'scalar' up to the detected one."""
    return SIMD_LEVELS[: _C.build_info()["simd_detected"] + 1]


@contextlib.contextmanager
def simd(level):
    """``with litecomp.simd("scalar"):`` cap the SIMD level inside the block, then restore
    (process-wide, see ``set_simd``: a test and debugging knob for one thread at a time)."""
    old = _C.simd_cap()
    set_simd(level)
    try:
        yield
    finally:
        _C.set_simd_cap(old)


class _BuildInfo(dict):
    """build_info()'s dict; the old key "avxvnni" still reads "avx_vnni" (with a warning)."""

    def __missing__(self, key):
        if key == "avxvnni":
            import warnings
            warnings.warn('build_info()["avxvnni"] is now spelled "avx_vnni"',
                          DeprecationWarning, stacklevel=2)
            return self["avx_vnni"]
        raise KeyError(key)


def build_info() -> dict:
    """How this litecomp was built and what it will use on this machine.  ``avx_vnni``: the
    CPU has AVX-VNNI (256-bit VNNI, which only the quantized matmul kernels use)."""
    c = _C.build_info()
    return _BuildInfo({
        "version": __version__,
        "openmp": c["openmp"],
        "openmp_version": c["openmp_version"],
        "simd": SIMD_LEVELS[c["simd"]],
        "simd_detected": SIMD_LEVELS[c["simd_detected"]],
        "avx_vnni": c["avx_vnni"],
        "num_threads": get_num_threads(),
        "available_cores": available_cores(),
        "compiler": c["compiler"],
        "sanitize": c["sanitize"],
        "python": platform.python_version(),
        "numpy": __import__("numpy").__version__,
        "platform": f"{sys.platform}-{platform.machine()}",
    })


def _init_from_env() -> None:
    env = os.environ.get("LITECOMP_NUM_THREADS", "").strip()
    n = available_cores()
    if env:
        try:
            n = int(env)
            if n < 1:
                raise ValueError
        except ValueError:
            raise ArgumentError(
                f"LITECOMP_NUM_THREADS: expected a positive integer, got {env!r}") from None
    _C.set_num_threads(n)
    level = os.environ.get("LITECOMP_SIMD", "").strip().lower()
    if level:
        set_simd(level)


_init_from_env()
