"""Uniform quantization: ``quantize`` -> ``QTensor``, torch-exact ``quantize_per_tensor`` /
``quantize_per_channel``, the qparams formulas of torch.ao, and float16/bfloat16/float8 casts.

Codes are unsigned: a ``bits``-bit tensor stores q in [0, 2**bits - 1] and represents
``(q - zero_point) * scale``.  ``scheme="symmetric"`` fixes zero_point = 2**(bits-1) and
scale = amax / ((2**bits - 1) / 2); ``"affine"`` uses the range [min(x, 0), max(x, 0)]
(torch.ao's formulas, so 0.0 is always exactly representable and pruned zeros stay zero).
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import _C
from .. import dtypes as _dt
from .._check import as_kernel_input, check_axis, check_choice, check_int
from ..errors import ArgumentError, DTypeError, FormatError, ShapeError

BITS = (2, 3, 4, 5, 6, 8)
SCHEMES = ("symmetric", "affine")
EPS = np.float32(np.finfo(np.float32).eps)
_QMETA_VERSION = 1

# torch quantized dtypes: (qmin, qmax, signed output, packed bits)
TORCH_QDTYPES = {"qint8": (-128, 127, True, 8), "quint8": (0, 255, False, 8),
                 "quint4x2": (0, 15, False, 4)}


# The codes csrc/quant.c takes, from its code tables.
#: View modes: which scale an element uses ("tensor", "channel" along an axis, or "group":
#: runs of group_size contiguous elements).
VIEW = _C.quant_views
#: Rounding rules: "round_then_add" clamp(rint(x / s) + zp) (litecomp, torch quint4x2),
#: "add_then_round" clamp(rint(x / s + zp)) (torch per channel), "fma_then_round" (torch per
#: tensor, fbgemm's fused multiply-add).
ROUNDING = _C.quant_roundings


# ------------------------------------------------------------------ views and params
def _view(shape, axis, group):
    """(A, C, B, mode) of the kernel view: per tensor, per channel ``axis``, or runs of
    ``group`` contiguous elements (groups along the last axis)."""
    n = int(np.prod(shape, dtype=np.int64))
    if group is not None:
        return n // group, 1, group, VIEW["group"]
    if axis is None:
        return 1, 1, n, VIEW["tensor"]
    a = int(np.prod(shape[:axis], dtype=np.int64))
    b = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return a, shape[axis], b, VIEW["channel"]


def _nslots(view):
    a, c, _b, mode = view
    return 1 if mode == VIEW["tensor"] else c if mode == VIEW["channel"] else a


def minmax(k, view):
    """Per-slot float32 (min, max) of a kernel input; NonFiniteError on NaN/inf."""
    ns = _nslots(view)
    mn = np.empty(ns, np.float32)
    mx = np.empty(ns, np.float32)
    _C.quant_minmax(k.raw, k.code, *view, mn, mx)
    return mn, mx


def calc_qparams(min_val, max_val, qmin, qmax, scheme, *, zero_point_symmetric=None):
    """torch.ao's ``_calculate_qparams`` in float32: (scales float32, zero_points int32).

    symmetric: s = max(-min_n, max_p) / ((qmax - qmin) / 2) floored at eps, zero point
    ``zero_point_symmetric`` (torch: 0 for qint8, 128 for quint8);
    affine: s = (max_p - min_n) / (qmax - qmin) floored at eps,
    zp = clamp(qmin - round_half_even(min_n / s), qmin, qmax).
    """
    mn = np.minimum(np.asarray(min_val, np.float32), np.float32(0))
    mx = np.maximum(np.asarray(max_val, np.float32), np.float32(0))
    with np.errstate(over="ignore", invalid="ignore"):
        if scheme == "symmetric":
            amax = np.maximum(-mn, mx)
            s = np.maximum(amax / np.float32((qmax - qmin) / 2), EPS).astype(np.float32)
            zp = np.full(s.shape, 0 if zero_point_symmetric is None else zero_point_symmetric,
                         np.int32)
        else:
            s = np.maximum((mx - mn) / np.float32(qmax - qmin), EPS).astype(np.float32)
            zp = (qmin - np.round(mn / s)).clip(qmin, qmax).astype(np.int32)
    return np.atleast_1d(s), np.atleast_1d(zp)


def _check_bits(bits):
    bits = check_int(bits, "bits")
    if bits not in BITS:
        raise ArgumentError(f"bits: {bits} is not supported; expected one of "
                            f"{', '.join(map(str, BITS))}")
    return bits


def _float_input(x, name="x"):
    k = as_kernel_input(x, name)
    if k.array.size == 0:
        raise ShapeError(f"{name}: is empty; there is nothing to quantize")
    return k


# ------------------------------------------------------------------ packing
def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes (rows, cols) densely: per row an LSB-first bit stream (see
    docs/quant.md); returns (rows, ceil(cols * bits / 8)) uint8."""
    codes = np.ascontiguousarray(codes, np.uint8)
    rows, cols = codes.shape
    out = np.empty((rows, (cols * bits + 7) // 8), np.uint8)
    _C.pack_bits(codes, rows, cols, bits, out, False)
    return out


def unpack_codes(packed: np.ndarray, cols: int, bits: int) -> np.ndarray:
    packed = np.ascontiguousarray(packed, np.uint8)
    rows = packed.shape[0]
    if packed.shape[1] != (cols * bits + 7) // 8:
        raise FormatError(f"packed: {packed.shape[1]} bytes per row do not hold {cols} "
                          f"{bits}-bit codes")
    out = np.empty((rows, cols), np.uint8)
    _C.pack_bits(packed, rows, cols, bits, out, True)
    return out


# ------------------------------------------------------------------ QTensor
@dataclass
class QTensor:
    """A quantized tensor: packed codes plus per-slot scales and zero points.

    data: uint8 (rows, rowbytes), each row of the (axis-moved) tensor packed LSB-first;
    scales: float32 and zero_points: uint8, shaped ``(1,)`` per tensor, ``(C,)`` per
    channel, or ``(*moved_shape[:-1], moved_shape[-1] // group_size)`` per group;
    shape: the original shape; axis: the channel axis (per channel) or the grouped axis
    (per group; that axis is moved last before packing), None per tensor.
    perm: for GPTQ with ``act_order``, the column order the codes are stored in: ``data``
    packs the codes of ``w[:, perm]`` (so groups are runs of that order) and ``dequantize``
    puts the columns back; ``g_idx`` gives each original column its group.  None otherwise.
    """
    data: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    bits: int
    shape: tuple
    scheme: str
    axis: Optional[int] = None
    group_size: Optional[int] = None
    perm: Optional[np.ndarray] = None

    @property
    def g_idx(self) -> Optional[np.ndarray]:
        """int32 group index of every original column (GPTQ / compressed-tensors'
        ``weight_g_idx``) for a grouped 2-D tensor; None otherwise."""
        if self.group_size is None or len(self.shape) != 2 or self.axis != 1:
            return None
        g = np.arange(self.shape[1], dtype=np.int32) // self.group_size
        if self.perm is None:
            return g
        out = np.empty_like(g)
        out[self.perm] = g
        return out

    @property
    def moved_shape(self):
        """The shape whose rows are packed: the grouped axis moved last."""
        if self.group_size is None or self.axis is None:
            return tuple(self.shape)
        s = list(self.shape)
        s.append(s.pop(self.axis))
        return tuple(s)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scales.nbytes + self.zero_points.nbytes

    def codes(self) -> np.ndarray:
        """Unpacked uint8 codes in ``moved_shape``."""
        ms = self.moved_shape
        cols = ms[-1] if ms else 1
        return unpack_codes(self.data, cols, self.bits).reshape(ms)

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """(code - zero_point) * scale in float32, cast to ``dtype``, in the original shape."""
        codes = self.codes()
        view = _view(self.moved_shape, self.axis if self.group_size is None else None,
                     self.group_size)
        out = np.empty(codes.shape, np.float32)
        _C.dequant_affine(codes, *view, np.ascontiguousarray(self.scales, np.float32).ravel(),
                          self.zero_points.astype(np.int32).ravel(), out)
        if self.group_size is not None and self.axis is not None:
            out = np.moveaxis(out, -1, self.axis)
        if self.perm is not None:
            restored = np.empty_like(out)
            restored[:, self.perm] = out
            out = restored
        out = np.ascontiguousarray(out)
        if np.dtype(dtype) in (np.float32, np.float64):
            return out.astype(dtype, copy=False)
        return cast(out, dtype)

    # -- plain-array form, so any state-dict writer can store it
    def to_state_dict(self, prefix: str) -> dict:
        """``{prefix.qdata, prefix.scales, prefix.zero_points, prefix.qmeta}`` as plain arrays.

        qmeta is int64: [version, bits, scheme (0 symmetric, 1 affine), axis (-1: none),
        group_size (0: none), ndim, *shape]."""
        meta = [_QMETA_VERSION, self.bits, SCHEMES.index(self.scheme),
                -1 if self.axis is None else self.axis, self.group_size or 0,
                len(self.shape), *self.shape]
        out = {f"{prefix}.qdata": self.data, f"{prefix}.scales": self.scales,
               f"{prefix}.zero_points": self.zero_points,
               f"{prefix}.qmeta": np.asarray(meta, np.int64)}
        if self.perm is not None:
            out[f"{prefix}.perm"] = np.asarray(self.perm, np.int64)
        return out

    @classmethod
    def from_state_dict(cls, sd, prefix: str) -> "QTensor":
        try:
            meta = [int(v) for v in np.asarray(sd[f"{prefix}.qmeta"]).ravel()]
            data, scales, zps = (np.asarray(sd[f"{prefix}.{k}"])
                                 for k in ("qdata", "scales", "zero_points"))
        except KeyError as exc:
            raise FormatError(f"{prefix}: missing quantized tensor part {exc}") from None
        if len(meta) < 6 or meta[0] != _QMETA_VERSION or len(meta) != 6 + meta[5]:
            raise FormatError(f"{prefix}.qmeta: malformed ({meta})")
        _v, bits, scheme, axis, group, ndim, *shape = meta
        if bits not in BITS or scheme not in (0, 1):
            raise FormatError(f"{prefix}.qmeta: bad bits {bits} or scheme {scheme}")
        perm = sd.get(f"{prefix}.perm") if hasattr(sd, "get") else None
        if perm is not None:
            perm = np.asarray(perm, np.int64).ravel()
            if len(shape) != 2 or not np.array_equal(np.sort(perm), np.arange(shape[-1])):
                raise FormatError(f"{prefix}.perm: is not a permutation of the columns")
        q = cls(np.ascontiguousarray(data, np.uint8), np.asarray(scales, np.float32),
                np.asarray(zps, np.uint8), bits, tuple(shape), SCHEMES[scheme],
                None if axis < 0 else axis, group or None, perm)
        rows = int(np.prod(q.moved_shape[:-1], dtype=np.int64)) if shape else 1
        cols = q.moved_shape[-1] if shape else 1
        if q.data.shape != (rows, (cols * bits + 7) // 8):
            raise FormatError(f"{prefix}.qdata: shape {q.data.shape} does not match qmeta")
        return q

    def __repr__(self):
        gran = ("per tensor" if self.axis is None and self.group_size is None else
                f"per channel (axis {self.axis})" if self.group_size is None else
                f"groups of {self.group_size} along axis {self.axis}")
        return (f"QTensor(shape={self.shape}, bits={self.bits}, {self.scheme}, {gran}, "
                f"{self.nbytes} bytes)")


def quantize(x, bits=8, *, scheme="symmetric", axis=None, group_size=None,
             qparams=None) -> QTensor:
    """Quantize a float array to ``bits`` (2, 3, 4, 5, 6 or 8) bits.

    axis=None, group_size=None: one scale for the tensor.  axis=k: one per index of axis k.
    group_size=g: one per run of g elements along the last axis (or along ``axis`` when
    given); g must divide that axis.  NaN/inf raise NonFiniteError.  ``qparams=(scales,
    zero_points)`` (e.g. from a calibrated observer's ``qparams(bits=...)``) replaces the
    min/max of ``x`` itself (static quantization).
    """
    bits = _check_bits(bits)
    check_choice(scheme, "scheme", SCHEMES)
    k = k0 = _float_input(x)
    a = k.array
    ndim = max(a.ndim, 1)
    if a.ndim == 0:
        a = a.reshape(1)
    if axis is not None:
        axis = check_axis(axis, ndim)
    gaxis = None
    if group_size is not None:
        group_size = check_int(group_size, "group_size", 1)
        gaxis = ndim - 1 if axis is None else axis
        if a.shape[gaxis] % group_size:
            raise ShapeError(f"group_size: {group_size} does not divide axis {gaxis} of "
                             f"size {a.shape[gaxis]} (shape {a.shape})")
        if gaxis != ndim - 1:
            a = np.ascontiguousarray(np.moveaxis(a, gaxis, -1))
            k = as_kernel_input(a, "x")
    view = _view(a.shape, axis, group_size)
    qmax = (1 << bits) - 1
    if qparams is None:
        mn, mx = minmax(k, view)
        s, zp = calc_qparams(mn, mx, 0, qmax, scheme, zero_point_symmetric=1 << (bits - 1))
    else:
        s = np.ascontiguousarray(np.asarray(qparams[0], np.float32).ravel())
        zp = np.ascontiguousarray(np.asarray(qparams[1]).ravel(), np.int32)
        if s.size != _nslots(view) or zp.size != s.size:
            raise ShapeError(f"qparams: expected {_nslots(view)} scales and zero points, got "
                             f"{s.size} and {zp.size}")
    codes = np.empty(a.shape, np.uint8)
    _C.quant_affine(k.raw, k.code, *view, s, zp, 0, qmax, codes, ROUNDING["round_then_add"])
    rows = int(np.prod(a.shape[:-1], dtype=np.int64))
    codes = codes.reshape(rows, a.shape[-1])
    packed = codes if bits == 8 else pack_codes(codes, bits)
    if group_size is not None:
        pshape, axis = a.shape[:-1] + (a.shape[-1] // group_size,), gaxis
    else:
        pshape = (s.size,)
    return QTensor(packed, s.reshape(pshape), zp.astype(np.uint8).reshape(pshape), bits,
                   tuple(a.shape) if gaxis is None else tuple(np.shape(k0.array)) or (1,),
                   scheme, axis, group_size)


# ------------------------------------------------------------------ torch-exact
def _qdtype(dtype):
    name = str(dtype).replace("torch.", "")
    if name not in TORCH_QDTYPES:
        raise ArgumentError(f"dtype: {dtype!r} is not one of qint8, quint8, quint4x2")
    return name


def _f32_input(x):
    k = _float_input(x)
    if k.code != 0:  # torch quantizes float32; other dtypes are converted the same way
        k = as_kernel_input(np.asarray(k.array, np.float32) if k.array.dtype != _dt.bfloat16
                            else k.array.astype(np.float32), "x")
    return k


# How torch rounds (see csrc/quant.c): per tensor through fbgemm's fused x * inv + zp, per
# channel x * inv + zp unfused, quint4x2 nearbyint(x * inv) + zp.
_TORCH_ROUNDING = {("tensor", "qint8"): "fma_then_round", ("tensor", "quint8"): "fma_then_round",
                   ("channel", "qint8"): "add_then_round", ("channel", "quint8"): "add_then_round"}


def _torch_codes(k, view, scales, zps, name):
    qmin, qmax, signed, bits = TORCH_QDTYPES[name]
    out = np.empty(k.array.shape, np.int8 if signed else np.uint8)
    per = "tensor" if view[3] == VIEW["tensor"] else "channel"
    rounding = ROUNDING[_TORCH_ROUNDING.get((per, name), "round_then_add")]
    _C.quant_affine(k.raw, k.code, *view, scales, zps, qmin, qmax, out, rounding)
    if bits == 4:
        return pack_codes(out.reshape(1, -1), 4).reshape(-1)
    return out


def quantize_per_tensor(x, scale, zero_point, dtype) -> np.ndarray:
    """Exactly ``torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr()``:
    int8 for qint8, uint8 for quint8, and for quint4x2 the flat packed bytes (element i in
    the low nibble when i is even)."""
    name = _qdtype(dtype)
    k = _f32_input(x)
    s = np.asarray([scale], np.float32)  # torch takes the double scale as float
    zp = np.asarray([check_int(zero_point, "zero_point")], np.int32)
    return _torch_codes(k, _view(k.array.shape, None, None), s, zp, name)


def quantize_per_channel(x, scales, zero_points, axis, dtype) -> np.ndarray:
    """Exactly ``torch.quantize_per_channel(...).int_repr()`` for qint8 and quint8 (quint4x2,
    which torch does not implement per channel, packs like quantize_per_tensor)."""
    name = _qdtype(dtype)
    k = _f32_input(x)
    axis = check_axis(axis, max(k.array.ndim, 1))
    s = np.ascontiguousarray(np.asarray(scales).ravel(), np.float32)
    zp = np.asarray(zero_points).ravel()
    if s.size != k.array.shape[axis] or zp.size != s.size:
        raise ShapeError(f"scales: expected {k.array.shape[axis]} scales and zero points for "
                         f"axis {axis}, got {s.size} and {zp.size}")
    return _torch_codes(k, _view(k.array.shape, axis, None), s, zp.astype(np.int32), name)


# ------------------------------------------------------------------ float casts
CAST_DTYPES = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float32")


def cast(x, dtype, *, saturate=False) -> np.ndarray:
    """Round-to-nearest-even cast of a float array to float16, bfloat16, float8_e4m3fn or
    float8_e5m2 (or float32), the same bits as ml_dtypes' ``astype``.

    NaN stays NaN.  Overflow: float16/bfloat16/e5m2 give inf, e4m3fn (no inf) gives NaN;
    with ``saturate=True`` finite values clamp to the largest finite value instead; an
    infinite input stays inf (NaN for e4m3fn).
    """
    name = _dt.name_of(np.dtype(dtype))
    if name not in CAST_DTYPES:
        raise DTypeError(f"dtype: {np.dtype(dtype)} is not one of {', '.join(CAST_DTYPES)}")
    k = as_kernel_input(x, "x", dtypes=_dt.FLOAT_DTYPES)
    out = np.empty(k.array.shape, _dt.dtype_of(name))
    _C.cast_float(k.raw, k.code, _dt.raw_view(out), _dt.code_of(out.dtype), bool(saturate))
    return out
