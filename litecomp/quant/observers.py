"""Observers: stream calibration batches through C min/max kernels and turn what they saw
into quantization parameters exactly as torch.ao's ``calculate_qparams()`` does.

``obs.update(batch)`` folds a batch in; ``obs.qparams()`` returns (scales, zero_points)
as float32 / int32 arrays (shape (1,) per tensor, (C,) per channel).
"""

import numpy as np

from .._check import check_axis, check_choice, check_float
from ..errors import ArgumentError
from .core import EPS, _float_input, _view, calc_qparams, minmax

DTYPES = ("qint8", "quint8")


def qrange(dtype="quint8", reduce_range=False):
    """(qmin, qmax) of a torch quantized dtype; reduce_range drops one bit as torch does."""
    dtype = check_choice(str(dtype).replace("torch.", ""), "dtype", DTYPES)
    if dtype == "qint8":
        return (-64, 63) if reduce_range else (-128, 127)
    return (0, 127) if reduce_range else (0, 255)


def qparams_for(mn, mx, dtype, reduce_range, scheme, bits=None):
    """torch's qparams for ``dtype`` or, with ``bits``, litecomp's unsigned-code qparams."""
    if bits is not None:
        from .core import _check_wide_bits as _check_bits
        bits = _check_bits(bits)
        check_choice(scheme, "scheme", ("affine", "symmetric"))
        return calc_qparams(mn, mx, 0, (1 << bits) - 1, scheme,
                            zero_point_symmetric=1 << (bits - 1))
    qmin, qmax = qrange(dtype, reduce_range)
    return calc_qparams(mn, mx, qmin, qmax, scheme,
                        zero_point_symmetric=128 if dtype == "quint8" else 0)


class MinMaxObserver:
    """torch.ao.quantization.MinMaxObserver: running min and max of every batch.

    dtype "quint8" (default) or "qint8"; scheme "affine" or "symmetric"; reduce_range.
    """
    averaging_constant = None

    def __init__(self, dtype="quint8", scheme="affine", reduce_range=False, *, axis=None):
        self.dtype = check_choice(str(dtype).replace("torch.", ""), "dtype", DTYPES)
        self.scheme = check_choice(scheme, "scheme", ("affine", "symmetric"))
        if scheme == "symmetric" and reduce_range and self.dtype == "quint8":
            raise ArgumentError("reduce_range: torch does not reduce the range of symmetric "
                                "quint8")
        self.reduce_range = bool(reduce_range)
        self.axis = axis
        self.min_val = None
        self.max_val = None

    def _batch_minmax(self, x):
        k = _float_input(x, "batch")
        if self.axis is None:
            return minmax(k, _view(k.array.shape, None, None))
        axis = check_axis(self.axis, max(k.array.ndim, 1))
        return minmax(k, _view(k.array.shape, axis, None))

    def update(self, batch):
        """Fold a batch into the running statistics; returns self."""
        mn, mx = self._batch_minmax(batch)
        if self.min_val is None:
            self.min_val, self.max_val = mn, mx
        elif mn.shape != self.min_val.shape:
            raise ArgumentError(f"batch: has {mn.size} channels, earlier batches "
                                f"{self.min_val.size}")
        elif self.averaging_constant is None:
            self.min_val = np.minimum(self.min_val, mn)
            self.max_val = np.maximum(self.max_val, mx)
        else:  # min += c * (min(x) - min), in float32 as torch computes it
            c = np.float32(self.averaging_constant)
            self.min_val = (self.min_val + c * (mn - self.min_val)).astype(np.float32)
            self.max_val = (self.max_val + c * (mx - self.max_val)).astype(np.float32)
        return self

    __call__ = update

    def qparams(self, bits=None, scheme=None):
        """(scales float32, zero_points int32).  Without arguments: torch's
        ``calculate_qparams()`` for this observer's dtype.  With ``bits`` (and optionally
        ``scheme``): litecomp's unsigned codes [0, 2**bits - 1], as ``quantize`` uses them
        (pass the result to ``quantize(..., qparams=...)``)."""
        if self.min_val is None:  # torch: no data seen -> scale 1, zero point 0
            return np.ones(1, np.float32), np.zeros(1, np.int32)
        return qparams_for(self.min_val, self.max_val, self.dtype, self.reduce_range,
                           scheme or self.scheme, bits)


class MovingAverageMinMaxObserver(MinMaxObserver):
    """torch's MovingAverageMinMaxObserver: min += c * (batch min - min), c = 0.01."""

    def __init__(self, averaging_constant=0.01, dtype="quint8", scheme="affine",
                 reduce_range=False, *, axis=None):
        super().__init__(dtype, scheme, reduce_range, axis=axis)
        self.averaging_constant = check_float(averaging_constant, "averaging_constant", 0, 1)


class PerChannelMinMaxObserver(MinMaxObserver):
    """torch's PerChannelMinMaxObserver (ch_axis=0 by default)."""

    def __init__(self, axis=0, dtype="quint8", scheme="affine", reduce_range=False):
        super().__init__(dtype, scheme, reduce_range, axis=axis)


class MovingAveragePerChannelMinMaxObserver(MovingAverageMinMaxObserver):
    def __init__(self, axis=0, averaging_constant=0.01, dtype="quint8", scheme="affine",
                 reduce_range=False):
        super().__init__(averaging_constant, dtype, scheme, reduce_range, axis=axis)


__all__ = ["qrange", "MinMaxObserver", "MovingAverageMinMaxObserver",
           "PerChannelMinMaxObserver", "MovingAveragePerChannelMinMaxObserver", "EPS"]
