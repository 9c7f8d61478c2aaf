"""One call per kernel family on inputs big enough that the threads split the work
(above LC_PARALLEL_MIN, litecomp.build_info's C value), for tests that compare calls made
under different thread counts, SIMD levels and Python threads.  Each case returns bytes,
so "the same result" means the same bits."""

import dataclasses

import ml_dtypes
import numpy as np

import litecomp
from litecomp import distill, prune, sparse
from litecomp import quant as Q
from litecomp.quant import gguf

PARALLEL_MIN = litecomp._C.build_info()["parallel_min"]


def as_bytes(r):
    if isinstance(r, np.ndarray):
        return r.dtype.str.encode() + str(r.shape).encode() + r.tobytes()
    if isinstance(r, (tuple, list)):
        return b"|".join(as_bytes(v) for v in r)
    if isinstance(r, dict):
        return b"|".join(k.encode() + b"=" + as_bytes(v) for k, v in sorted(r.items()))
    if dataclasses.is_dataclass(r):
        return as_bytes({f.name: getattr(r, f.name) for f in dataclasses.fields(r)})
    if isinstance(r, float):
        return r.hex().encode()
    return repr(r).encode()


def make_cases(seed=0):
    """{family: zero-argument callable}; inputs are made once, here."""
    rng = np.random.default_rng(seed)
    n = 2 * PARALLEL_MIN + 4096                  # not a multiple of any block size
    x = rng.standard_normal(n).astype(np.float32)
    w = rng.standard_normal((1024, 640)).astype(np.float32)     # 655,360 > PARALLEL_MIN
    wb = w.astype(ml_dtypes.bfloat16)
    mask = prune.l1_unstructured(w, 0.5)
    s = rng.standard_normal((64, 5003)).astype(np.float32)       # 320k logits
    t = rng.standard_normal((64, 5003)).astype(np.float32)
    lin = Q.prepare_linear(Q.quantize(w[:512], 8, axis=0))
    xa = rng.standard_normal((600, 640)).astype(np.float32)       # M*N*K = 196M
    return {
        "core.tensor_stats": lambda: litecomp.tensor_stats(x),
        "core.to_float32": lambda: litecomp.to_float32(wb),
        "random.normal": lambda: litecomp.random.normal(n, seed=3, stream=1),
        "prune.l1_unstructured": lambda: prune.l1_unstructured(w, 0.37),
        "prune.per_row": lambda: prune.per_row(wb, 0.5),
        "prune.nm": lambda: prune.nm(w, 2, 4),
        "prune.apply": lambda: prune.apply(w, mask),
        "sparse.pack_bits": lambda: sparse.pack_bits(mask),
        "quant.quantize": lambda: Q.quantize(w, 4, group_size=32).data,
        "quant.histc": lambda: Q.histc(x, 512, -3.0, 3.0),
        "gguf.quantize": lambda: gguf.quantize(w.reshape(-1, 512), "Q4_K"),
        "codebook.nf4": lambda: Q.quantize_4bit(x, "nf4").data,
        "distill.loss": lambda: distill.loss("kl", s, t, temperature=2.0),
        "matmul.int8": lambda: lin(xa),
    }
