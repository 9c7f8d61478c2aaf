"""Core kernels: the copy probe itself, conversion to float32, tensor statistics."""

import ml_dtypes
import numpy as np

import litecomp
from litecomp import _C

from ..harness import Run, case


def _size(quick, full):
    return (1 << 20) if quick else full


@case("copy 512 MiB (stream probe)", group="core")
def copy(quick):
    n = _size(quick, 512 << 20)
    src = np.ones(n, np.uint8)
    dst = np.zeros(n, np.uint8)
    return Run(litecomp=lambda: _C.stream_copy(dst, src),
               anchor=("numpy.copyto", lambda: np.copyto(dst, src)),
               bytes=2 * n, notes="litecomp uses all kernel threads; numpy.copyto one")


@case("bf16 -> f32, 64M elements", group="core")
def bf16_to_f32(quick):
    n = _size(quick, 64 << 20)
    x = litecomp.random.normal(n).astype(ml_dtypes.bfloat16)
    out = np.empty(n, np.float32)
    return Run(litecomp=lambda: litecomp.to_float32(x, out=out),
               anchor=("ndarray.astype (ml_dtypes)", lambda: x.astype(np.float32)),
               bytes=x.nbytes + out.nbytes,
               check=lambda a, b: np.testing.assert_array_equal(a, b))


@case("tensor_stats, fc.weight 98631x512 f32", group="core")
def stats(quick):
    shape = (1000, 512) if quick else (98631, 512)
    w = litecomp.random.uniform(shape, -0.044, 0.044)

    def numpy_stats():
        return (np.count_nonzero(w), np.isnan(w).sum(), np.abs(w).max(),
                w.sum(dtype=np.float64), np.square(w, dtype=np.float64).sum(), w.min(), w.max())

    return Run(litecomp=lambda: litecomp.tensor_stats(w),
               anchor=("numpy (count_nonzero, isnan, abs.max, sum, sumsq, min, max)",
                       numpy_stats),
               bytes=w.nbytes)
