"""Codebook quantization: bitsandbytes NF4 / FP4 (blockwise absmax, optional double
quantization of the absmax values) and 1-D k-means weight sharing (Deep Compression),
with pruned zeros kept exactly zero and, optionally, not stored at all."""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import _C
from .._check import as_kernel_input, check_axis, check_choice, check_int
from ..errors import ArgumentError, FormatError, ShapeError
from .core import pack_codes, unpack_codes

#: bitsandbytes' NF4 code values (index = stored 4-bit code).
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
#: bitsandbytes' FP4 (e2m1, sign bit 3) code values, normalised by 12.
FP4 = (np.array([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                 -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]) / 12.0).astype(np.float32)
CODEBOOKS = {"nf4": NF4, "fp4": FP4}
_KIND_4BIT, _KIND_KMEANS = 2, 3


def _torch_linspace(start, end, steps):
    from .calibrate import _linspace
    return _linspace(start, end, steps)


def dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) -> np.ndarray:
    """bitsandbytes' ``create_dynamic_map``: the 256-value dynamic 8-bit code used to
    double-quantize absmax values (sorted ascending)."""
    data = []
    non_sign = total_bits - (1 if signed else 0)
    for i in range(max_exponent_bits):
        n = 2 ** (i + non_sign - max_exponent_bits) + (1 if signed else 2)
        bounds = _torch_linspace(0.1, 1, n)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2)
        scale = np.float32(10.0 ** (-(max_exponent_bits - 1) + i))  # torch: float32 product
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2 ** total_bits - len(data))
    return np.sort(np.asarray(data, np.float32))


def _sorted_table(codes):
    order = np.argsort(codes, kind="stable")
    s = codes[order].astype(np.float32)
    mids = ((s[:-1].astype(np.float64) + s[1:]) / 2).astype(np.float32)
    return mids, order.astype(np.uint8)


def _nearest(v, table):
    """Index into the sorted ``table`` of the nearest value (ties to the lower one)."""
    mids = ((table[:-1].astype(np.float64) + table[1:]) / 2).astype(np.float32)
    return np.searchsorted(mids, np.asarray(v, np.float32), side="left").astype(np.uint8)


@dataclass
class Quant4:
    """A bitsandbytes-style 4-bit tensor: ``data`` uint8 ((numel + 1) // 2), first element
    of each pair in the HIGH nibble; ``absmax`` float32 per block of ``block_size`` values
    (or, with double quantization, ``absmax_q`` uint8 codes of the dynamic map, one float32
    ``absmax_scale`` per 256 absmax values and the float32 ``absmax_offset``)."""
    data: np.ndarray
    absmax: Optional[np.ndarray]
    shape: tuple
    format: str = "nf4"
    block_size: int = 64
    absmax_q: Optional[np.ndarray] = None
    absmax_scale: Optional[np.ndarray] = None
    absmax_offset: Optional[np.ndarray] = None
    bits = 4

    @property
    def nbytes(self):
        parts = [self.data, self.absmax, self.absmax_q, self.absmax_scale, self.absmax_offset]
        return sum(p.nbytes for p in parts if p is not None)

    def block_absmax(self) -> np.ndarray:
        if self.absmax_q is None:
            return self.absmax
        code = dynamic_map()
        v = code[self.absmax_q].reshape(-1)
        scale = np.repeat(self.absmax_scale, 256)[:v.size]
        return (v * scale + self.absmax_offset[0]).astype(np.float32)

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        n = int(np.prod(self.shape, dtype=np.int64))
        out = np.empty(n, np.float32)
        _C.blockwise4_dequant(self.data, self.block_size, CODEBOOKS[self.format],
                              np.ascontiguousarray(self.block_absmax(), np.float32), out)
        return out.reshape(self.shape).astype(dtype, copy=False)

    def to_state_dict(self, prefix):
        dq = self.absmax_q is not None
        meta = [_KIND_4BIT, ("nf4", "fp4").index(self.format), self.block_size, int(dq),
                len(self.shape), *self.shape]
        sd = {f"{prefix}.qdata": self.data, f"{prefix}.qmeta": np.asarray(meta, np.int64)}
        if dq:
            sd.update({f"{prefix}.absmax_q": self.absmax_q,
                       f"{prefix}.absmax_scale": self.absmax_scale,
                       f"{prefix}.absmax_offset": self.absmax_offset})
        else:
            sd[f"{prefix}.absmax"] = self.absmax
        return sd

    @classmethod
    def from_state_dict(cls, sd, prefix):
        meta = [int(v) for v in np.asarray(sd[f"{prefix}.qmeta"]).ravel()]
        if len(meta) < 5 or meta[0] != _KIND_4BIT or len(meta) != 5 + meta[4]:
            raise FormatError(f"{prefix}.qmeta: malformed ({meta})")
        fmt, block, dq = ("nf4", "fp4")[meta[1]], meta[2], meta[3]
        shape = tuple(meta[5:])
        try:
            data = np.asarray(sd[f"{prefix}.qdata"], np.uint8)
            if dq:
                q = cls(data, None, shape, fmt, block,
                        *(np.asarray(sd[f"{prefix}.{k}"]) for k in
                          ("absmax_q", "absmax_scale", "absmax_offset")))
            else:
                q = cls(data, np.asarray(sd[f"{prefix}.absmax"], np.float32), shape, fmt, block)
        except KeyError as exc:
            raise FormatError(f"{prefix}: missing 4-bit tensor part {exc}") from None
        n = int(np.prod(shape, dtype=np.int64))
        if data.size != (n + 1) // 2 or q.block_absmax().size != -(-n // block):
            raise FormatError(f"{prefix}: data sizes do not match qmeta")
        return q


def quantize_4bit(x, format="nf4", *, block_size=64, double_quant=False) -> Quant4:
    """NF4 or FP4 as bitsandbytes defines them: the flattened tensor in blocks of
    ``block_size`` (even; default 64) scaled by 1/absmax, each value to the nearest code
    (ties to the lower code, as bitsandbytes' threshold tree).  ``double_quant`` stores the
    absmax values as (absmax - mean) in the 8-bit dynamic map, blocks of 256."""
    fmt = check_choice(format, "format", tuple(CODEBOOKS))
    block_size = check_int(block_size, "block_size", 2)
    if block_size % 2:
        raise ArgumentError(f"block_size: {block_size} must be even (two codes per byte)")
    k = as_kernel_input(x, "x")
    n = k.array.size
    if n == 0:
        raise ShapeError("x: is empty; there is nothing to quantize")
    mids, perm = _sorted_table(CODEBOOKS[fmt])
    data = np.empty((n + 1) // 2, np.uint8)
    absmax = np.empty(-(-n // block_size), np.float32)
    _C.blockwise4(k.raw.reshape(-1), k.code, block_size, mids, perm, data, absmax)
    q = Quant4(data, absmax, tuple(k.array.shape), fmt, block_size)
    if double_quant:
        offset = np.float32(absmax.mean(dtype=np.float64))
        centered = absmax - offset
        pad = (-centered.size) % 256
        blocks = np.concatenate([centered, np.zeros(pad, np.float32)]).reshape(-1, 256)
        scale = np.abs(blocks).max(1).astype(np.float32)
        inv = np.where(scale > 0, np.float32(1) / np.where(scale > 0, scale, 1), 0)
        codes = _nearest((blocks * inv[:, None]).astype(np.float32), dynamic_map())
        q.absmax, q.absmax_q = None, codes.reshape(-1)[:centered.size].copy()
        q.absmax_scale, q.absmax_offset = scale, np.asarray([offset], np.float32)
    return q


# ------------------------------------------------------------------ k-means weight sharing
@dataclass
class CodebookTensor:
    """Weight sharing: ``indices`` packed with ``pack_codes`` (LSB first, rows of the last
    axis; or, with ``mask``, only the nonzero values as one row), ``codebook`` float32
    (k,) per tensor or (C, k) per channel (axis 0); with ``keep_zeros`` code 0 is exactly
    0.0.  ``mask`` when zeros are not stored: compressed-tensors' sparse-bitmask bitmask,
    ``np.packbits(x != 0, axis=-1, bitorder="little")`` over (rows, last axis); the codes
    then cover the nonzero values in row-major order."""
    indices: np.ndarray
    codebook: np.ndarray
    bits: int
    shape: tuple
    mask: Optional[np.ndarray] = None

    @property
    def nbytes(self):
        return self.indices.nbytes + self.codebook.nbytes + (
            self.mask.nbytes if self.mask is not None else 0)

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        n = int(np.prod(self.shape, dtype=np.int64))
        if self.mask is not None:
            cols = self.shape[-1] if self.shape else 1
            keep = np.unpackbits(self.mask.reshape(-1, self.mask.shape[-1]), axis=-1,
                                 count=cols, bitorder="little").astype(bool).reshape(-1)
            idx = unpack_codes(self.indices.reshape(1, -1), int(keep.sum()), self.bits)[0]
            out = np.zeros(n, np.float32)
            out[keep] = self.codebook.reshape(-1)[idx]  # masks are per tensor only
            return out.reshape(self.shape).astype(dtype, copy=False)
        cols = self.shape[-1] if self.shape else 1
        idx = unpack_codes(self.indices, cols, self.bits).reshape(self.shape)
        if self.codebook.ndim == 1:
            out = self.codebook[idx]
        else:
            rows = idx.reshape(self.shape[0], -1)
            out = np.take_along_axis(self.codebook, rows.astype(np.int64), 1)
        return out.reshape(self.shape).astype(dtype, copy=False)

    def to_state_dict(self, prefix):
        meta = [_KIND_KMEANS, self.bits, int(self.mask is not None), len(self.shape),
                *self.shape]
        sd = {f"{prefix}.qdata": self.indices, f"{prefix}.codebook": self.codebook,
              f"{prefix}.qmeta": np.asarray(meta, np.int64)}
        if self.mask is not None:
            sd[f"{prefix}.mask"] = self.mask
        return sd

    @classmethod
    def from_state_dict(cls, sd, prefix):
        meta = [int(v) for v in np.asarray(sd[f"{prefix}.qmeta"]).ravel()]
        if len(meta) < 4 or meta[0] != _KIND_KMEANS or len(meta) != 4 + meta[3]:
            raise FormatError(f"{prefix}.qmeta: malformed ({meta})")
        try:
            return cls(np.asarray(sd[f"{prefix}.qdata"], np.uint8),
                       np.asarray(sd[f"{prefix}.codebook"], np.float32), meta[1],
                       tuple(meta[4:]), np.asarray(sd[f"{prefix}.mask"], np.uint8)
                       if meta[2] else None)
        except KeyError as exc:
            raise FormatError(f"{prefix}: missing codebook tensor part {exc}") from None


def kmeans_1d(values, k, *, iters=30, fixed_zero=False):
    """Deterministic 1-D k-means: centroids start evenly spaced over [min, max] (Deep
    Compression's linear initialisation), then Lloyd steps (C assignment, sums reduced in a
    fixed order) until nothing moves.  ``fixed_zero`` pins centroid 0 at exactly 0.0.
    Returns (sorted centroids float32, index of each value)."""
    v = np.ascontiguousarray(values, np.float32).reshape(-1)
    free = k - 1 if fixed_zero else k
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    cent = np.linspace(lo, hi, free).astype(np.float32) if free > 1 else \
        np.asarray([(lo + hi) / 2] * free, np.float32)
    if fixed_zero:
        cent = np.concatenate([[np.float32(0)], cent])
    idx = np.empty(v.size, np.uint8)
    sums = np.empty(k, np.float64)
    counts = np.empty(k, np.int64)
    for _ in range(iters):
        order = np.argsort(cent, kind="stable")
        cs = cent[order]
        mids = ((cs[:-1].astype(np.float64) + cs[1:]) / 2).astype(np.float32)
        _C.kmeans_assign(v, mids, idx, sums, counts)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), cs).astype(np.float32)
        if fixed_zero:
            new[cs == 0] = 0  # the pinned zero stays
        cent = new
        if np.array_equal(new, cs):
            break
    order = np.argsort(cent, kind="stable")
    cs = cent[order]
    mids = ((cs[:-1].astype(np.float64) + cs[1:]) / 2).astype(np.float32)
    _C.kmeans_assign(v, mids, idx, sums, counts)
    return cs, idx


def codebook_quantize(x, bits=4, *, axis=None, keep_zeros=True, sparse=False,
                      iters=30) -> CodebookTensor:
    """Weight sharing with k = 2**bits shared values (bits 1-8) found by 1-D k-means, per
    tensor or per channel (``axis=0``).  ``keep_zeros``: exact zeros (pruned weights) are
    left out of the clustering and map to a code that is exactly 0.0.  ``sparse=True``
    (per tensor) stores only the nonzero values' codes plus a bitmask of x != 0, so pruned
    zeros cost one bit each."""
    bits = check_int(bits, "bits", 1, 8)
    k = as_kernel_input(x, "x")
    a = np.asarray(k.array, np.float32)
    if a.size == 0:
        raise ShapeError("x: is empty; there is nothing to quantize")
    if not np.isfinite(a).all():
        from ..errors import NonFiniteError
        raise NonFiniteError("x contains NaN or infinity")
    if axis is not None and check_axis(axis, max(a.ndim, 1)) != 0:
        raise ArgumentError(f"axis: only 0 (one codebook per output row) is supported, got {axis}")
    if sparse and axis is not None:
        raise ArgumentError("sparse: is per tensor only (axis=None)")
    kk = 1 << bits
    shape = a.shape or (1,)
    if sparse:
        nz = a.reshape(-1, shape[-1]) != 0
        cb, idx = kmeans_1d(a.reshape(-1)[nz.reshape(-1)], kk, iters=iters)
        packed = pack_codes(idx.reshape(1, -1), bits) if idx.size else np.zeros((1, 0), np.uint8)
        # the bitmask of compressed-tensors' sparse-bitmask format (rows x ceil(cols / 8))
        return CodebookTensor(packed.reshape(-1), cb, bits, shape,
                              np.packbits(nz, axis=-1, bitorder="little"))
    rows = a.reshape(1, -1) if axis is None else a.reshape(shape[0], -1)
    books, codes = [], np.empty(rows.shape, np.uint8)
    for r in range(rows.shape[0]):
        row = rows[r]
        if keep_zeros:
            cb, idx = kmeans_1d(row[row != 0], kk, iters=iters, fixed_zero=True)
            full = np.searchsorted(cb, 0.0)  # position of the pinned zero
            codes[r] = full
            codes[r, row != 0] = idx
        else:
            cb, idx = kmeans_1d(row, kk, iters=iters)
            codes[r] = idx
        books.append(cb)
    codes = codes.reshape(-1, shape[-1])
    book = books[0] if axis is None else np.stack(books)
    return CodebookTensor(pack_codes(codes, bits), book, bits, shape)
