"""Counter-based random numbers: reproducible for any thread count and block split.

Element i of stream s under seed k depends only on (k, s, i); see csrc/random.c for the
definition and litecomp/reference/random.py for the NumPy twin.  Use distinct ``stream``
numbers for independent tensors drawn from one seed.
"""

import numpy as np

from . import _C
from . import dtypes as _dt
from ._check import check_float, check_int, check_choice

_DIST = _C.random_dists  # csrc/random.c's table: {"uniform": code, "normal": ..., "bits": ...}
_U64 = 2 ** 64 - 1


def _out(shape, dtype):
    dtype = check_choice(np.dtype(dtype).name, "dtype", ("float32", "float64"))
    return np.empty(shape, dtype), _dt.code_of(dtype)


def uniform(shape, low=0.0, high=1.0, *, seed=0, stream=0, dtype=np.float32) -> np.ndarray:
    """Uniform values in [low, high)."""
    low = check_float(low, "low")
    high = check_float(high, "high")
    out, code = _out(shape, dtype)
    _C.fill_random(out, code, check_int(seed, "seed", 0, _U64),
                   check_int(stream, "stream", 0, _U64), _DIST["uniform"], low, high)
    return out


def normal(shape, mean=0.0, std=1.0, *, seed=0, stream=0, dtype=np.float32) -> np.ndarray:
    """Normal values (Box-Muller on one 64-bit hash per element)."""
    mean = check_float(mean, "mean")
    std = check_float(std, "std", 0.0)
    out, code = _out(shape, dtype)
    _C.fill_random(out, code, check_int(seed, "seed", 0, _U64),
                   check_int(stream, "stream", 0, _U64), _DIST["normal"], mean, std)
    return out


def bits(shape, *, seed=0, stream=0) -> np.ndarray:
    """Raw 64-bit hashes, uint64 (for random scores and tie-breaking)."""
    out = np.empty(shape, np.uint64)
    _C.fill_random(out, _dt.code_of(np.uint64), check_int(seed, "seed", 0, _U64),
                   check_int(stream, "stream", 0, _U64), _DIST["bits"], 0.0, 0.0)
    return out
