"""Quantized Linear layers that run: ``y = x @ W.T + b`` with W kept packed.

Three weight kinds, each an object that packs its weight once and is called like a layer:

- ``Int8Linear``: int8 weights, symmetric per output channel; activations quantized per row
  (token) to int8 at run time; exact int32 accumulation (AVX-512 VNNI, AVX-VNNI, AVX2 and
  scalar paths, chosen at run time; identical results on every path).
- ``BlockLinear``: 4- or 8-bit codes in groups along K (``w = s * (q - z) + m``): litecomp's
  int4/int8 group quantization (symmetric or affine) and GGUF Q4_0, Q4_1 and Q8_0 blocks.
  Activations are quantized per 32-block to int8, as llama.cpp does, and the codes are
  unpacked inside the dot product: no float copy of W is ever made.
- ``NF4Linear``: bitsandbytes NF4 (blockwise absmax, 16-entry table), float activations.

``linear(x, w, bias=None)`` calls any of them; x is [..., K] float32 (float16, bfloat16 and
float64 are converted).  See csrc/qmatmul.c for the exact definitions and docs/qmatmul.md.
"""

import numpy as np

from . import _C
from . import dtypes as _dt
from ._check import as_kernel_input, check_choice, check_int
from .core import to_float32
from .errors import ArgumentError, FormatError, NonFiniteError, ShapeError

NT = 16
_SELF = object()  # "use the layer's own bias"
MAX_K = 65536
_PATHS = {"auto": -1, "scalar": 0, "avx2": 1, "avxvnni": 2, "avx512vnni": 3}

#: bitsandbytes' NF4 code table.
NF4_TABLE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)


def available_paths() -> list:
    """The kernel paths this CPU can run, scalar first (tests force each one)."""
    p = _C.qmm_paths()
    return [name for name in ("scalar", "avx2", "avxvnni", "avx512vnni") if p[name]]


def _path_code(path) -> int:
    return _PATHS[check_choice(path or "auto", "path", tuple(_PATHS))]


def _tiles(n):
    return (n + NT - 1) // NT


def _as_weight(w, name="weight"):
    k = as_kernel_input(w, name, ndim=2)
    w32 = k.array if k.code == 0 else to_float32(k.array)
    if not np.isfinite(w32).all():
        raise NonFiniteError(f"{name}: contains NaN or infinity")
    if w32.shape[0] < 1 or w32.shape[1] < 1:
        raise ShapeError(f"{name}: empty weight of shape {w32.shape}")
    if w32.shape[1] > MAX_K:
        raise ShapeError(f"{name}: in_features {w32.shape[1]} exceeds {MAX_K}")
    return w32


def _as_bias(bias, n):
    if bias is None:
        return None
    b = as_kernel_input(bias, "bias", ndim=1).array.astype(np.float32, copy=False)
    if b.shape != (n,):
        raise ShapeError(f"bias: expected shape ({n},), got {b.shape}")
    return np.ascontiguousarray(b)


def _as_input(x, k):
    a = as_kernel_input(x, "x").array
    if a.ndim < 1 or a.shape[-1] != k:
        raise ShapeError(f"x: last dimension must be in_features={k}, got shape {a.shape}")
    # as_kernel_input already made it contiguous; other float dtypes go through the
    # parallel C conversion rather than a single-threaded astype.
    return a if a.dtype == np.float32 else to_float32(a)


def _pad_rows(a, rows, fill=0):
    out = np.full((rows,) + a.shape[1:], fill, a.dtype)
    out[: a.shape[0]] = a
    return out


class _Layer:
    in_features: int
    out_features: int
    bias = None

    def __call__(self, x, *, path=None):
        return self.forward(x, path=path, bias=_SELF)

    def __repr__(self):
        return (f"{type(self).__name__}(in_features={self.in_features}, "
                f"out_features={self.out_features}, {self._desc()}, "
                f"bias={self.bias is not None}, nbytes={self.nbytes})")


class Int8Linear(_Layer):
    """int8 weight [N, K] with float32 scales [N]: ``W ~= qweight * scales[:, None]``."""

    def __init__(self, qweight, scales, bias=None):
        q = np.ascontiguousarray(qweight)
        if q.dtype != np.int8 or q.ndim != 2:
            raise ArgumentError(f"qweight: expected a 2-D int8 array, got {q.dtype} {q.shape}")
        n, k = q.shape
        if k > MAX_K or n < 1 or k < 1:
            raise ShapeError(f"qweight: shape {q.shape} not supported (1 <= K <= {MAX_K})")
        s = np.asarray(scales, np.float32).reshape(-1)
        if s.shape != (n,):
            raise ShapeError(f"scales: expected shape ({n},), got {s.shape}")
        if not np.isfinite(s).all():
            raise NonFiniteError("scales: contains NaN or infinity")
        self.out_features, self.in_features = n, k
        self.scales = s
        self.bias = _as_bias(bias, n)
        t = _tiles(n)
        self._packed = np.empty(t * ((k + 3) // 4) * 64, np.int8)
        self._rowsum = np.empty(t * NT, np.int32)
        _C.qmm_i8_pack(q, self._packed, self._rowsum)
        self._sw = _pad_rows(s, t * NT)

    @classmethod
    def from_float(cls, weight, bias=None):
        """Symmetric per-channel int8: s = amax/127, q = rint(w/s) (the fbgemm convention)."""
        w = _as_weight(weight)
        amax = np.abs(w).max(axis=1)
        s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
        q = np.clip(np.rint(w / s[:, None]), -127, 127).astype(np.int8)
        return cls(q, s, bias)

    @property
    def qweight(self) -> np.ndarray:
        """The int8 weight [N, K], unpacked from the kernel layout."""
        n, k = self.out_features, self.in_features
        t = _tiles(n)
        p = self._packed.reshape(t, -1, NT, 4).transpose(0, 2, 1, 3).reshape(t * NT, -1)
        return np.ascontiguousarray(p[:n, :k])

    def dequantize(self):
        return self.qweight.astype(np.float32) * self.scales[:, None]

    @property
    def nbytes(self):
        return self.out_features * self.in_features + self.scales.nbytes + (self.bias.nbytes if self.bias is not None else 0)

    def _desc(self):
        return "int8 per-channel"

    def forward(self, x, *, path=None, bias=None):
        xa = _as_input(x, self.in_features)
        out = np.empty(xa.shape[:-1] + (self.out_features,), np.float32)
        if out.size:
            _C.qmm_i8_linear(xa, self._packed, self._rowsum, self._sw, self.bias if bias is _SELF else bias, out,
                             self.out_features, self.in_features, _path_code(path))
        return out


class BlockLinear(_Layer):
    """4- or 8-bit codes [N, K] in groups of ``group_size`` along K:
    ``W[n, k] = scales[n, g] * (codes[n, k] - zeros[n, g]) + offsets[n, g]`` (g = k // group_size;
    offsets optional)."""

    def __init__(self, codes, scales, zeros, offsets=None, *, bits, group_size, bias=None,
                 kind="int"):
        bits = check_choice(bits, "bits", (4, 8))
        gs = check_int(group_size, "group_size", 32)
        if gs % 32:
            raise ArgumentError(f"group_size: must be a multiple of 32, got {gs}")
        q = np.ascontiguousarray(codes)
        if q.dtype != np.uint8 or q.ndim != 2:
            raise ArgumentError(f"codes: expected a 2-D uint8 array, got {q.dtype} {q.shape}")
        if bits == 4 and q.size and q.max() > 15:
            raise ArgumentError("codes: 4-bit codes must be in [0, 15]")
        n, k = q.shape
        if k > MAX_K or n < 1 or k < 1:
            raise ShapeError(f"codes: shape {q.shape} not supported (1 <= K <= {MAX_K})")
        g = (k + gs - 1) // gs
        s = np.asarray(scales, np.float32).reshape(n, -1) if np.size(scales) == n * g else None
        if s is None:
            raise ShapeError(f"scales: expected shape ({n}, {g}), got {np.shape(scales)}")
        z = np.asarray(zeros)
        if z.size != n * g:
            raise ShapeError(f"zeros: expected shape ({n}, {g}), got {z.shape}")
        z = z.reshape(n, g).astype(np.int32)
        m = None
        if offsets is not None:
            m = np.asarray(offsets, np.float32)
            if m.size != n * g:
                raise ShapeError(f"offsets: expected shape ({n}, {g}), got {m.shape}")
            m = m.reshape(n, g)
        for name, a in (("scales", s), ("offsets", m)):
            if a is not None and not np.isfinite(a).all():
                raise NonFiniteError(f"{name}: contains NaN or infinity")
        self.out_features, self.in_features = n, k
        self.bits, self.group_size, self.kind = bits, gs, kind
        self.scales, self.zeros, self.offsets = s, z, m
        self.bias = _as_bias(bias, n)
        t = _tiles(n)
        kb = (k + 31) // 32
        self._packed = np.empty(t * kb * (256 if bits == 4 else 512), np.uint8)
        _C.qmm_blk_pack(q, self._packed, bits)
        self._s = self._tile_params(s, t)
        # one zero point for every group (symmetric codes): the kernel reads no z stream
        self._z = z.reshape(-1)[:1].copy() if (z == z.flat[0]).all() else self._tile_params(z, t)
        self._m = self._tile_params(m, t) if m is not None else None

    @staticmethod
    def _tile_params(a, t):
        """[N, G] -> [T, G, 16] flattened, channels padded with zeros."""
        n, g = a.shape
        p = np.zeros((t * NT, g), a.dtype)
        p[:n] = a
        return np.ascontiguousarray(p.reshape(t, NT, g).transpose(0, 2, 1)).reshape(-1)

    @classmethod
    def from_float(cls, weight, *, bits=4, group_size=128, scheme="symmetric", bias=None):
        """Round-to-nearest group quantization.

        symmetric: s = amax/(2^(bits-1) - 1), signed q = clamp(rint(w/s), -2^(bits-1),
        2^(bits-1) - 1) stored as q + 2^(bits-1) with z = 2^(bits-1).
        affine: over [min(w, 0), max(w, 0)], s = range/(2^bits - 1), z = clamp(rint(-min/s)),
        q = clamp(rint(w/s) + z, 0, 2^bits - 1).
        """
        w = _as_weight(weight)
        bits = check_choice(bits, "bits", (4, 8))
        scheme = check_choice(scheme, "scheme", ("symmetric", "affine"))
        gs = check_int(group_size, "group_size", 32)
        if gs % 32:
            raise ArgumentError(f"group_size: must be a multiple of 32, got {gs}")
        n, k = w.shape
        g = (k + gs - 1) // gs
        wp = np.zeros((n, g * gs), np.float32)
        wp[:, :k] = w
        wg = wp.reshape(n, g, gs)
        if scheme == "symmetric":
            half = 1 << (bits - 1)
            amax = np.abs(wg).max(axis=2)
            s = np.where(amax > 0, amax / np.float32(half - 1), np.float32(1)).astype(np.float32)
            q = np.clip(np.rint(wg / s[..., None]), -half, half - 1) + half
            z = np.full((n, g), half, np.int32)
        else:
            qmax = (1 << bits) - 1
            lo = np.minimum(wg.min(axis=2), 0)
            hi = np.maximum(wg.max(axis=2), 0)
            s = np.where(hi > lo, (hi - lo) / np.float32(qmax), np.float32(1)).astype(np.float32)
            z = np.clip(np.rint(-lo / s), 0, qmax).astype(np.int32)
            q = np.clip(np.rint(wg / s[..., None]) + z[..., None], 0, qmax)
        codes = q.reshape(n, g * gs)[:, :k].astype(np.uint8)
        return cls(codes, s, z, bits=bits, group_size=gs, bias=bias, kind=scheme)

    @classmethod
    def from_gguf(cls, data, qtype, shape, bias=None):
        """GGUF Q4_0, Q4_1 or Q8_0 blocks (the bytes ``gguf.quants.quantize`` returns) of a
        weight of ``shape`` [N, K] (K a multiple of 32)."""
        qtype = check_choice(str(qtype).upper(), "qtype", ("Q4_0", "Q4_1", "Q8_0"))
        n, k = (check_int(v, "shape", 1) for v in shape)
        if k % 32:
            raise ShapeError(f"shape: GGUF blocks need in_features % 32 == 0, got {k}")
        size = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[qtype]
        raw = np.ascontiguousarray(np.asarray(data, np.uint8))
        if raw.size != n * (k // 32) * size:
            raise FormatError(f"data: {qtype} of shape ({n}, {k}) needs "
                              f"{n * (k // 32) * size} bytes, got {raw.size}")
        blocks = raw.reshape(n, k // 32, size)
        d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        if qtype == "Q8_0":
            qs = blocks[..., 2:].copy().view(np.int8).astype(np.int16) + 128
            codes = qs.astype(np.uint8).reshape(n, k)
            z = np.full(d.shape, 128, np.int32)
            return cls(codes, d, z, bits=8, group_size=32, bias=bias, kind="Q8_0")
        off = 2 if qtype == "Q4_0" else 4
        qs = blocks[..., off:off + 16]
        codes = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(n, k)
        if qtype == "Q4_0":
            z = np.full(d.shape, 8, np.int32)
            return cls(codes, d, z, bits=4, group_size=32, bias=bias, kind="Q4_0")
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        z = np.zeros(d.shape, np.int32)
        return cls(codes, d, z, m, bits=4, group_size=32, bias=bias, kind="Q4_1")

    @property
    def codes(self) -> np.ndarray:
        """The codes [N, K] (uint8), unpacked from the kernel layout."""
        n, k = self.out_features, self.in_features
        t = _tiles(n)
        if self.bits == 8:
            p = self._packed.reshape(t, -1, 8, NT, 4).transpose(0, 3, 1, 2, 4)
            full = p.reshape(t * NT, -1)
        else:
            p = self._packed.reshape(t, -1, 4, NT, 4).transpose(0, 3, 1, 2, 4)  # [T,16,KB,4,4]
            p = p.reshape(t, NT, -1, 16)
            full = np.concatenate([p & 15, p >> 4], axis=-1).reshape(t * NT, -1)
        return np.ascontiguousarray(full[:n, :k])

    def dequantize(self):
        n, k = self.out_features, self.in_features
        g = np.arange(k) // self.group_size
        w = self.scales[:, g] * (self.codes.astype(np.float32) - self.zeros[:, g])
        if self.offsets is not None:
            w = w + self.offsets[:, g]
        return w.astype(np.float32)

    @property
    def nbytes(self):
        """Bytes of the weight as stored: packed codes plus per-group parameters."""
        per = 4 + (0 if self.kind in ("symmetric", "Q4_0", "Q8_0") else 4)
        b = self.bias.nbytes if self.bias is not None else 0
        return (self.out_features * self.in_features * self.bits + 7) // 8 + self.scales.size * per + b

    def _desc(self):
        return f"{self.bits}-bit {self.kind}, group {self.group_size}"

    def forward(self, x, *, path=None, bias=None):
        xa = _as_input(x, self.in_features)
        out = np.empty(xa.shape[:-1] + (self.out_features,), np.float32)
        if out.size:
            _C.qmm_blk_linear(xa, self._packed, self._s, self._z, self._m, self.bias if bias is _SELF else bias, out,
                              self.out_features, self.in_features, self.group_size, self.bits,
                              _path_code(path))
        return out


class NF4Linear(_Layer):
    """NF4 codes [N, K] (indices into ``NF4_TABLE``, or another 16-entry ``table`` such as
    bitsandbytes' FP4) with one absmax per block of
    ``block_size`` along K: ``W[n, k] = absmax[n, k // block_size] * NF4_TABLE[codes[n, k]]``."""

    def __init__(self, codes, absmax, *, block_size=64, bias=None, table=None):
        bs = check_int(block_size, "block_size", 1)
        self.table = NF4_TABLE if table is None else np.ascontiguousarray(table, np.float32)
        if self.table.shape != (16,) or not np.isfinite(self.table).all():
            raise ArgumentError("table: expected 16 finite float32 code values")
        q = np.ascontiguousarray(codes)
        if q.dtype != np.uint8 or q.ndim != 2 or (q.size and q.max() > 15):
            raise ArgumentError("codes: expected a 2-D uint8 array of values 0..15")
        n, k = q.shape
        nb = (k + bs - 1) // bs
        a = np.asarray(absmax, np.float32)
        if a.size != n * nb:
            raise ShapeError(f"absmax: expected shape ({n}, {nb}), got {a.shape}")
        if not np.isfinite(a).all():
            raise NonFiniteError("absmax: contains NaN or infinity")
        self.out_features, self.in_features, self.block_size = n, k, bs
        self.absmax = a.reshape(n, nb)
        self.bias = _as_bias(bias, n)
        t = _tiles(n)
        qp = _pad_rows(q, t * NT).reshape(t, NT, k).transpose(0, 2, 1)  # [T, K, 16]
        self._packed = np.ascontiguousarray((qp[..., 0::2] | (qp[..., 1::2] << 4)).astype(np.uint8)).reshape(-1)
        self._absmax = BlockLinear._tile_params(self.absmax, t)

    @classmethod
    def from_float(cls, weight, *, block_size=64, bias=None):
        """Blockwise absmax along K, each value mapped to the nearest NF4 code."""
        w = _as_weight(weight)
        bs = check_int(block_size, "block_size", 1)
        n, k = w.shape
        nb = (k + bs - 1) // bs
        wp = np.zeros((n, nb * bs), np.float32)
        wp[:, :k] = w
        absmax = np.abs(wp.reshape(n, nb, bs)).max(axis=2)
        scaled = wp.reshape(n, nb, bs) / np.where(absmax > 0, absmax, 1)[..., None]
        mids = (NF4_TABLE[1:] + NF4_TABLE[:-1]) / 2
        codes = np.searchsorted(mids, scaled.reshape(n, -1)[:, :k]).astype(np.uint8)
        return cls(codes, absmax, block_size=bs, bias=bias)

    @classmethod
    def from_bitsandbytes(cls, packed, absmax, shape, *, block_size=64, bias=None, table=None):
        """bitsandbytes' flat NF4 layout (first element in the HIGH nibble, blocks over the
        flattened weight; K must be a multiple of block_size)."""
        n, k = shape
        if k % block_size:
            raise ShapeError(f"shape: in_features {k} must be a multiple of block_size")
        p = np.asarray(packed, np.uint8).reshape(-1)
        if p.size * 2 != n * k:
            raise FormatError(f"packed: expected {n * k // 2} bytes, got {p.size}")
        codes = np.empty(n * k, np.uint8)
        codes[0::2] = p >> 4
        codes[1::2] = p & 15
        return cls(codes.reshape(n, k), np.asarray(absmax, np.float32).reshape(n, -1),
                   block_size=block_size, bias=bias, table=table)

    @property
    def codes(self) -> np.ndarray:
        n, k = self.out_features, self.in_features
        p = self._packed.reshape(_tiles(n), k, NT // 2)
        full = np.stack([p & 15, p >> 4], axis=-1).reshape(-1, k, NT).transpose(0, 2, 1)
        return np.ascontiguousarray(full.reshape(-1, k)[:n])

    def dequantize(self):
        k = self.in_features
        return (self.table[self.codes] * self.absmax[:, np.arange(k) // self.block_size]).astype(np.float32)

    @property
    def nbytes(self):
        return (self.out_features * self.in_features + 1) // 2 + self.absmax.nbytes + (self.bias.nbytes if self.bias is not None else 0)

    def _desc(self):
        return f"nf4, block {self.block_size}"

    def forward(self, x, *, path=None, bias=None):
        xa = _as_input(x, self.in_features)
        out = np.empty(xa.shape[:-1] + (self.out_features,), np.float32)
        if out.size:
            _C.qmm_nf4_linear(xa, self._packed, self._absmax, self.table, self.bias if bias is _SELF else bias, out,
                              self.out_features, self.in_features, self.block_size,
                              _path_code(path))
        return out


def linear(x, w, bias=None, *, path=None):
    """``x @ W.T + bias`` for a quantized weight (Int8Linear, BlockLinear or NF4Linear).

    ``bias`` (float32 [N]) replaces the layer's own bias when given.
    """
    if not isinstance(w, _Layer):
        raise ArgumentError(f"w: expected Int8Linear, BlockLinear or NF4Linear, got "
                            f"{type(w).__name__}")
    b = _SELF if bias is None else _as_bias(bias, w.out_features)
    return w.forward(x, path=path, bias=b)
