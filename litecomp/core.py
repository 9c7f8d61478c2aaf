"""Core kernels every capability uses: tensor statistics and float32 conversion."""

from dataclasses import dataclass

import numpy as np

from . import _C
from . import dtypes as _dt
from ._check import as_kernel_input


@dataclass(frozen=True)
class TensorStats:
    """Counts, extrema and moments of a float tensor.

    Non-finite values are counted (``nan``, ``posinf``, ``neginf``) but left out of ``sum``,
    ``sumsq``, ``absmax`` and the moments; ``min``/``max`` include infinities, skip NaN and
    report a zero extremum as +0.0.  ``sum`` is accumulated in float64 in a fixed order, so it
    is bit-identical for any thread count and SIMD level.
    """
    numel: int
    nonzero: int
    nan: int
    posinf: int
    neginf: int
    sum: float
    sumsq: float
    min: float
    max: float
    absmax: float

    @property
    def zeros(self) -> int:
        return self.numel - self.nonzero

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros (-0.0 counts as zero); 0.0 for an empty tensor."""
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def finite(self) -> int:
        return self.numel - self.nan - self.posinf - self.neginf

    @property
    def mean(self) -> float:
        return self.sum / self.finite if self.finite else float("nan")

    @property
    def std(self) -> float:
        """Population standard deviation of the finite values."""
        if not self.finite:
            return float("nan")
        var = self.sumsq / self.finite - self.mean ** 2
        return max(var, 0.0) ** 0.5

    @property
    def rms(self) -> float:
        return (self.sumsq / self.finite) ** 0.5 if self.finite else float("nan")


def tensor_stats(x) -> TensorStats:
    """Statistics of a float array (float32/64/16, bfloat16, float8) in one parallel pass."""
    k = as_kernel_input(x, "x", dtypes=_dt.FLOAT_DTYPES)
    return TensorStats(**_C.tensor_stats(k.raw, k.code))


def to_float32(x, *, out=None) -> np.ndarray:
    """Convert any float array to float32 (float64 rounds to nearest even; others are exact).

    The result has x's shape; ``out`` (a C-contiguous float32 array of that size) is
    written when given.
    """
    k = as_kernel_input(x, "x", dtypes=_dt.FLOAT_DTYPES)
    if out is None:
        out = np.empty(k.array.shape, np.float32)
    else:
        out = as_kernel_input(out, "out", dtypes=("float32",), writeable=True).array
    _C.to_float32(k.raw, k.code, out)
    return out
