"""dtype codes shared with C (csrc/litecomp.h, LC_DTYPES) and the ml_dtypes bridge.

bfloat16 and float8 are ml_dtypes' user-defined NumPy dtypes: their type numbers are
assigned at run time, so they are identified by name and reach C as raw bits (a uint16 or
uint8 view) together with a litecomp dtype code.
"""

import ml_dtypes
import numpy as np

from .errors import DTypeError

# name: (code, numpy dtype, raw view dtype for C).  Order and codes mirror LC_DTYPES.
_TABLE = {
    "float32": (0, np.dtype(np.float32), np.dtype(np.float32)),
    "float64": (1, np.dtype(np.float64), np.dtype(np.float64)),
    "float16": (2, np.dtype(np.float16), np.dtype(np.uint16)),
    "bfloat16": (3, np.dtype(ml_dtypes.bfloat16), np.dtype(np.uint16)),
    "float8_e4m3fn": (4, np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(np.uint8)),
    "float8_e5m2": (5, np.dtype(ml_dtypes.float8_e5m2), np.dtype(np.uint8)),
    "int8": (6, np.dtype(np.int8), np.dtype(np.int8)),
    "uint8": (7, np.dtype(np.uint8), np.dtype(np.uint8)),
    "int16": (8, np.dtype(np.int16), np.dtype(np.int16)),
    "int32": (9, np.dtype(np.int32), np.dtype(np.int32)),
    "int64": (10, np.dtype(np.int64), np.dtype(np.int64)),
    "bool": (11, np.dtype(np.bool_), np.dtype(np.uint8)),
    "uint16": (12, np.dtype(np.uint16), np.dtype(np.uint16)),
    "uint32": (13, np.dtype(np.uint32), np.dtype(np.uint32)),
    "uint64": (14, np.dtype(np.uint64), np.dtype(np.uint64)),
}

bfloat16 = np.dtype(ml_dtypes.bfloat16)
float8_e4m3fn = np.dtype(ml_dtypes.float8_e4m3fn)
float8_e5m2 = np.dtype(ml_dtypes.float8_e5m2)

#: The dtypes weights can have: every float kernel takes these.
WEIGHT_DTYPES = ("float32", "float64", "float16", "bfloat16")
#: Every float dtype litecomp knows (weights plus the float8 storage kinds).
FLOAT_DTYPES = WEIGHT_DTYPES + ("float8_e4m3fn", "float8_e5m2")


def name_of(dtype) -> str:
    """litecomp's name for a NumPy dtype (``'bfloat16'``, ``'float32'``, ``'bool'``, ...),
    which is also the name every checkpoint table in ``litecomp.io.dtypes`` is keyed by."""
    dt = np.dtype(dtype)
    return "bool" if dt.kind == "b" else dt.name


def code_of(dtype) -> int:
    """The C dtype code of a NumPy dtype; DTypeError for one litecomp does not know."""
    name = name_of(dtype)
    try:
        return _TABLE[name][0]
    except KeyError:
        raise DTypeError(f"dtype {np.dtype(dtype)} is not one litecomp handles") from None


def dtype_of(name: str) -> np.dtype:
    """The NumPy dtype for a litecomp dtype name."""
    try:
        return _TABLE[name][1]
    except KeyError:
        raise DTypeError(f"unknown dtype name {name!r}; known: {', '.join(_TABLE)}") from None


def raw_view(a: np.ndarray) -> np.ndarray:
    """View an array as the plain NumPy dtype C reads it as (bf16 -> uint16, fp8 -> uint8)."""
    raw = _TABLE[name_of(a.dtype)][2]
    return a if a.dtype == raw else a.view(raw)


def table():
    """{code: (name, itemsize)} as this module sees it; tests compare it with C's."""
    return {code: (name, dt.itemsize) for name, (code, dt, _raw) in _TABLE.items()}
