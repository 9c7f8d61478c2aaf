"""Deprecated: the quantized Linear layers moved to ``litecomp.quant.matmul`` (one home for
quantized formats and the kernels that run them).  Every name here still works for one
release and warns; build layers with ``litecomp.quant.prepare_linear(quantize(...))``.
"""

import warnings

from .errors import ArgumentError
from .quant import codebook as _codebook
from .quant import matmul as _matmul


def _linear(x, w, bias=None, *, path=None):
    """``litecomp.qmatmul.linear``: ``x @ W.T + bias`` for a layer (now ``quant.linear``)."""
    if not isinstance(w, _matmul._Layer):
        raise ArgumentError(f"w: expected Int8Linear, BlockLinear or NF4Linear, got "
                            f"{type(w).__name__}")
    return _matmul.linear(x, w, bias, path=path)


_MOVED = {
    "Int8Linear": (_matmul.Int8Linear, "litecomp.quant.matmul.Int8Linear"),
    "BlockLinear": (_matmul.BlockLinear, "litecomp.quant.matmul.BlockLinear"),
    "NF4Linear": (_matmul.NF4Linear, "litecomp.quant.matmul.NF4Linear"),
    "available_paths": (_matmul.available_paths, "litecomp.quant.matmul.available_paths"),
    "linear": (_linear, "litecomp.quant.linear"),
    "NF4_TABLE": (_codebook.NF4, "litecomp.quant.codebook.NF4"),
    "NT": (_matmul.NT, "litecomp.quant.matmul.NT"),
    "MAX_K": (_matmul.MAX_K, "litecomp.quant.matmul.MAX_K"),
}


def __getattr__(name):
    try:
        value, new = _MOVED[name]
    except KeyError:
        raise AttributeError(f"module 'litecomp.qmatmul' has no attribute {name!r}") from None
    warnings.warn(f"litecomp.qmatmul.{name} is deprecated and will be removed in the next "
                  f"release; use {new}", DeprecationWarning, stacklevel=2)
    return value


def __dir__():
    return sorted(_MOVED)
