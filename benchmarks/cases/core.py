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
    src = np.arange(n, dtype=np.uint64).astype(np.uint8)
    dst, dst2 = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    return Run(litecomp=lambda: (_C.stream_copy(dst, src), dst)[1],
               anchor=("numpy.copyto", lambda: (np.copyto(dst2, src), dst2)[1]),
               bytes=2 * n, notes="litecomp uses all kernel threads; numpy.copyto one",
               check=lambda a, b: (np.testing.assert_array_equal(a, src),
                                   np.testing.assert_array_equal(b, src)))


@case("bf16 -> f32, 64M elements", group="core")
def bf16_to_f32(quick):
    n = _size(quick, 64 << 20)
    x = litecomp.random.normal(n).astype(ml_dtypes.bfloat16)
    # both sides allocate their output on every call (first-touch page faults included)
    return Run(litecomp=lambda: litecomp.to_float32(x),
               anchor=("ndarray.astype (ml_dtypes)", lambda: x.astype(np.float32)),
               bytes=x.nbytes + 4 * n,
               check=lambda a, b: np.testing.assert_array_equal(a, b),
               notes="both allocate the output; litecomp uses all kernel threads, "
                     "ml_dtypes' cast one")


@case("bf16 -> f32, 64M elements, into a reused buffer", group="core")
def bf16_to_f32_reused(quick):
    n = _size(quick, 64 << 20)
    x = litecomp.random.normal(n).astype(ml_dtypes.bfloat16)
    out, out2 = np.empty(n, np.float32), np.empty(n, np.float32)
    # both sides write into their own preallocated output (no page faults in the timing)
    return Run(litecomp=lambda: litecomp.to_float32(x, out=out),
               anchor=("numpy.copyto(out, x, casting='unsafe') (ml_dtypes)",
                       lambda: (np.copyto(out2, x, casting="unsafe"), out2)[1]),
               bytes=x.nbytes + out.nbytes,
               check=lambda a, b: np.testing.assert_array_equal(a, b),
               notes="both reuse an output buffer; litecomp uses all kernel threads, "
                     "ml_dtypes' cast one")


@case("tensor_stats, fc.weight 98631x512 f32", group="core")
def stats(quick):
    shape = (1000, 512) if quick else (98631, 512)
    w = litecomp.random.uniform(shape, -0.044, 0.044)

    def numpy_stats():
        return (np.count_nonzero(w), np.isnan(w).sum(), np.abs(w).max(),
                w.sum(dtype=np.float64), np.square(w, dtype=np.float64).sum(), w.min(), w.max())

    def check(s, b):
        assert (s.nonzero, s.nan) == (b[0], b[1]) and (s.absmax, s.min, s.max) == b[2:3] + b[5:]
        np.testing.assert_allclose([s.sum, s.sumsq], [b[3], b[4]], rtol=1e-9)

    return Run(litecomp=lambda: litecomp.tensor_stats(w),
               anchor=("numpy (count_nonzero, isnan, abs.max, sum, sumsq, min, max)",
                       numpy_stats),
               bytes=w.nbytes, check=check,
               notes="numpy: seven single-threaded passes, |w| and w^2 as temporaries; "
                     "litecomp: one pass on all kernel threads")
