"""float8 (e4m3fn) weights with float32 scales: ``quantize_fp8`` -> ``FP8Tensor``, one scale
per output channel (axis 0) or per tensor, scale = amax / 448 (e4m3fn's largest finite
value), values x / scale rounded to nearest even and saturated -- the float-quantized
scheme of compressed-tensors and llm-compressor's FP8 weights.

>>> import numpy as np
>>> q = quantize_fp8(np.array([[1.0, -2.0], [0.5, 0.25]], np.float32))
>>> q.dequantize().tolist()
[[1.0, -2.0], [0.5, 0.25]]
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import dtypes as _dt
from .._check import as_kernel_input
from ..errors import ArgumentError, FormatError, ShapeError

E4M3_MAX = np.float32(448.0)
_KIND = 4


@dataclass
class FP8Tensor:
    """float8_e4m3fn ``data`` (the tensor's shape), float32 ``scales`` ((C,) for axis 0,
    (1,) per tensor); the value is ``data * scale``."""
    data: np.ndarray
    scales: np.ndarray
    axis: Optional[int] = 0
    bits: int = 8

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scales.nbytes

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        from .core import cast
        s = self.scales.reshape((-1,) + (1,) * (self.data.ndim - 1)) if self.axis == 0 \
            else self.scales.reshape(())
        v = self.data.astype(np.float32) * s
        return v.astype(dtype, copy=False) if np.dtype(dtype) in (np.float32, np.float64) \
            else cast(v, dtype)

    def to_state_dict(self, prefix):
        meta = np.asarray([_KIND, 1, -1 if self.axis is None else self.axis], np.int64)
        return {f"{prefix}.qdata": self.data, f"{prefix}.scales": self.scales,
                f"{prefix}.qmeta": meta}

    @classmethod
    def from_state_dict(cls, sd, prefix):
        try:
            meta = [int(v) for v in np.asarray(sd[f"{prefix}.qmeta"]).ravel()]
            data, scales = np.asarray(sd[f"{prefix}.qdata"]), np.asarray(sd[f"{prefix}.scales"])
        except KeyError as exc:
            raise FormatError(f"{prefix}: missing fp8 tensor part {exc}") from None
        if len(meta) != 3 or meta[0] != _KIND or _dt.name_of(data.dtype) != "float8_e4m3fn":
            raise FormatError(f"{prefix}.qmeta: malformed fp8 tensor ({meta}, {data.dtype})")
        return cls(data, scales.astype(np.float32), None if meta[2] < 0 else meta[2])


def quantize_fp8(x, *, axis=0, scale_dtype="float32") -> FP8Tensor:
    """float8_e4m3fn codes of ``x`` with one scale per index of axis 0 (``axis=0``) or one
    for the tensor (``axis=None``); ``scale_dtype`` rounds the scales first (the dtype a
    checkpoint stores them in), so the codes are computed against the stored scales."""
    from .core import cast
    if axis not in (0, None):
        raise ArgumentError(f"axis: fp8 scales are per output channel (0) or per tensor "
                            f"(None), not {axis!r}")
    k = as_kernel_input(x, "x", dtypes=_dt.WEIGHT_DTYPES)
    a = np.asarray(k.array, np.float32) if k.array.dtype != np.float32 else k.array
    if a.size == 0 or (axis == 0 and a.ndim < 1):
        raise ShapeError(f"x: shape {a.shape} has nothing to quantize per channel")
    if not np.all(np.isfinite(a)):
        from ..errors import NonFiniteError
        raise NonFiniteError("x: contains NaN or inf")
    amax = np.abs(a).reshape(a.shape[0], -1).max(1) if axis == 0 else np.abs(a).max(keepdims=True)
    s = np.maximum(amax.astype(np.float32) / E4M3_MAX, np.float32(np.finfo(np.float32).eps))
    if scale_dtype != "float32":
        s = cast(s, _dt.dtype_of(scale_dtype)).astype(np.float32)
    bs = s.reshape((-1,) + (1,) * (a.ndim - 1)) if axis == 0 else s.reshape(())
    data = cast(a / bs, "float8_e4m3fn", saturate=True)
    return FP8Tensor(data, s.astype(np.float32), axis)
