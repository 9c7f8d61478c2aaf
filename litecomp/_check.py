"""Argument checks and normalisation shared by every capability.

Python does the talking, C does the loops: these helpers turn whatever the caller passed
into what a kernel takes (a C-contiguous, aligned, native-byte-order array plus its dtype
code) and raise litecomp errors that name the argument and the problem.
"""

import math
import numbers
import warnings
from typing import NamedTuple

import numpy as np

from . import dtypes as _dt
from .errors import ArgumentError, DTypeError, ShapeError


class KernelArray(NamedTuple):
    """An array ready for C: ``array`` has the caller's dtype, ``raw`` is the view C reads
    (bf16 as uint16, fp8 as uint8), ``code`` the C dtype code."""
    array: np.ndarray
    raw: np.ndarray
    code: int


def as_array(x, name: str) -> np.ndarray:
    """``np.asarray`` with a clear error for things that are not arrays."""
    if isinstance(x, np.ndarray):
        return x
    if x is None:
        raise ArgumentError(f"{name}: expected an array, got None")
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - rethrown with the argument's name
        raise ArgumentError(f"{name}: cannot be turned into an array ({exc})") from exc


def as_kernel_input(x, name: str, *, dtypes=_dt.WEIGHT_DTYPES, ndim=None,
                    writeable=False) -> KernelArray:
    """Check ``x`` and return it in the form C kernels take.

    dtypes: litecomp dtype names accepted (default: the weight dtypes f32/f64/f16/bf16).
    ndim: an int or a tuple of ints the array must have.
    Non-contiguous, misaligned or byte-swapped arrays are copied, never misread.
    """
    a = as_array(x, name)
    dname = _dt.name_of(a.dtype)
    if dname not in dtypes:
        raise DTypeError(f"{name}: dtype {a.dtype} is not supported here; "
                         f"expected one of {', '.join(dtypes)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ShapeError(f"{name}: expected a {want}-D array, got shape {a.shape}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if writeable:
        if not (a.flags.c_contiguous and a.flags.aligned and a.flags.writeable):
            raise ArgumentError(f"{name}: must be a writeable C-contiguous array "
                                "(it is written in place)")
    elif not (a.flags.c_contiguous and a.flags.aligned):
        a = np.ascontiguousarray(a)
        if not a.flags.aligned:  # ascontiguousarray keeps a misaligned base's view
            a = a.copy()
    return KernelArray(a, _dt.raw_view(a), _dt.code_of(a.dtype))


def check_int(value, name: str, lo=None, hi=None) -> int:
    """An integer (not bool) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ArgumentError(f"{name}: {value} is out of range [{lo}, {hi}]")
    return value


def check_float(value, name: str, lo=None, hi=None, *, finite=True) -> float:
    """A real number within [lo, hi] (finite unless finite=False)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ArgumentError(f"{name}: must be finite, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ArgumentError(f"{name}: {value} is out of range [{lo}, {hi}]")
    return value


def check_choice(value, name: str, choices):
    """One of ``choices``."""
    if value not in choices:
        raise ArgumentError(f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def check_axis(axis, ndim: int, name: str = "axis") -> int:
    """A valid axis for an ``ndim``-D array, normalised to be non-negative."""
    axis = check_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ArgumentError(f"{name}: {axis} is out of range for a {ndim}-D array")
    return axis % ndim


def renamed(value, old_value, name: str, old_name: str, *, deprecated=True):
    """An argument that also answers to an older spelling: ``value`` unless only
    ``old_value`` was given (None means not given).  Giving both is an ArgumentError.  The
    old spelling warns (DeprecationWarning) when ``deprecated``; torch's own spelling of an
    argument a function mirrors (``dim`` for ``axis``) is kept without a warning."""
    if old_value is None:
        return value
    if value is not None:
        raise ArgumentError(f"{name}: given twice, as {name}= and as {old_name}= "
                            f"(its old spelling); pass {name}= only")
    if deprecated:
        warnings.warn(f"{old_name}= is deprecated; pass {name}= (same meaning)",
                      DeprecationWarning, stacklevel=3)
    return old_value


def required(value, name: str):
    """``value``, or an ArgumentError naming the argument when it was not given (None)."""
    if value is None:
        raise ArgumentError(f"{name}: required")
    return value
