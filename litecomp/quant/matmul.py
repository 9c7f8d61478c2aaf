"""Quantized Linear layers that run: ``y = x @ W.T + b`` with W kept packed (csrc/matmul.c).

A layer is built from a quantized weight -- a ``QTensor`` (``quantize``), a ``Quant4``
(``quantize_4bit``) or GGUF blocks -- by ``prepare_linear``, which packs it once for the
kernels; ``linear(x, q)`` packs on first use (cached on the tensor) and runs.  The kinds:

- ``Int8Linear``: int8 weights, symmetric per output channel; activations quantized per row
  (token) to int8 at run time; exact int32 accumulation (AVX-512 VNNI, AVX-VNNI, AVX2 and
  scalar paths, chosen at run time; identical results on every path).
- ``BlockLinear``: 4- or 8-bit codes in groups along K (``w = s * (q - z) + m``): litecomp's
  uniform group quantization (symmetric or affine, 2 to 8 bits) and GGUF Q4_0, Q4_1 and Q8_0
  blocks.  Activations are quantized per 32-block to int8, as llama.cpp does, and the codes
  are unpacked inside the dot product: no float copy of W is ever made.
- ``NF4Linear``: bitsandbytes NF4 / FP4 (blockwise absmax, 16-entry table), float activations.

x is [..., K] float32 (float16, bfloat16 and float64 are converted in C).  The packed
layouts, the kernel paths and the weight sources are defined once, in csrc/matmul.c, and
their codes come from there (``_C.matmul_paths``, ``_C.matmul_layouts``, ``_C.matmul_sources``).  See docs/quant-matmul.md.
"""

import dataclasses
import warnings

import numpy as np

from .. import _C
from .._check import as_kernel_input, check_choice, check_int
from ..core import to_float32
from ..errors import ArgumentError, FormatError, NonFiniteError, ShapeError
from .codebook import CODEBOOKS, NF4, Quant4, quantize_4bit
from .core import QTensor, quantize
from .gguf import FORMATS

#: Kernel path names and their codes ("auto" picks the best this CPU has).
PATHS = _C.matmul_paths
_LAYOUT = _C.matmul_layouts
_SOURCE = _C.matmul_sources
#: Old spellings of the path names, accepted with a DeprecationWarning for one release.
_OLD_PATHS = {"avxvnni": "avx_vnni", "avx512vnni": "avx512_vnni"}
NT = 16  # output channels per tile (csrc/matmul.c)
MAX_K = 65536  # keeps every int32 accumulation exact
_SELF = object()  # "use the layer's own bias"
GGUF_TYPES = ("Q4_0", "Q4_1", "Q8_0")


def available_paths() -> list:
    """The kernel paths this CPU can run, scalar first (tests force each one)."""
    have = _C.matmul_available()
    return [name for name in PATHS if name != "auto" and have[name]]


def _path_code(path) -> int:
    path = path or "auto"
    if path in _OLD_PATHS:
        warnings.warn(f"path: {path!r} is now spelled {_OLD_PATHS[path]!r}",
                      DeprecationWarning, stacklevel=4)
        path = _OLD_PATHS[path]
    return PATHS[check_choice(path, "path", tuple(PATHS))]


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


def _check_shape(name, n, k, max_k=MAX_K):
    if n < 1 or k < 1:
        raise ShapeError(f"{name}: empty weight of shape ({n}, {k})")
    if k > max_k:
        raise ShapeError(f"{name}: in_features {k} exceeds {max_k}")


def _finite(name, a):
    if a is not None and not np.isfinite(a).all():
        raise NonFiniteError(f"{name}: contains NaN or infinity")
    return a


def _params(name, a, n, g, dtype):
    """Per-group parameters as a C-contiguous [n, g] array of ``dtype``."""
    if np.size(a) != n * g:
        raise ShapeError(f"{name}: expected shape ({n}, {g}), got {np.shape(a)}")
    return np.ascontiguousarray(np.asarray(a).reshape(n, g), dtype)


def _codes_input(codes, name="codes", dtype=np.uint8):
    q = np.ascontiguousarray(codes)
    if q.dtype != dtype or q.ndim != 2:
        raise ArgumentError(f"{name}: expected a 2-D {np.dtype(dtype).name} array, got "
                            f"{q.dtype} {q.shape}")
    return q


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

    def _bias_bytes(self):
        return self.bias.nbytes if self.bias is not None else 0

    def _io(self, x, path, bias):
        """(x as float32, the output array, the bias to add, the path code)."""
        xa = _as_input(x, self.in_features)
        out = np.empty(xa.shape[:-1] + (self.out_features,), np.float32)
        return xa, out, self.bias if bias is _SELF else bias, _path_code(path)


class Int8Linear(_Layer):
    """int8 weight [N, K] with float32 scales [N]: ``W ~= qweight * scales[:, None]``."""

    def __init__(self, qweight, scales, bias=None):
        self._pack(_codes_input(qweight, "qweight", np.int8), scales, bias)

    def _pack(self, data, scales, bias):
        """data: int8 weights [N, K], or uint8 codes [N, K] with zero point 128."""
        n, k = data.shape
        _check_shape("qweight", n, k)
        s = np.asarray(scales, np.float32).reshape(-1)
        if s.shape != (n,):
            raise ShapeError(f"scales: expected shape ({n},), got {s.shape}")
        self.out_features, self.in_features = n, k
        self.scales = _finite("scales", s)
        self.bias = _as_bias(bias, n)
        self._packed, self._rowsum = _C.matmul_pack(_LAYOUT["i8"], data, _SOURCE["stream"],
                                                    n, k, k, 8)
        self._sw = _C.matmul_tile_params(np.ascontiguousarray(s.reshape(n, 1)))

    @classmethod
    def from_float(cls, weight, bias=None):
        """Deprecated: ``prepare_linear(quantize(weight, 8, axis=0), bias=bias)``."""
        _deprecated("Int8Linear.from_float(w)", "prepare_linear(quantize(w, 8, axis=0))")
        return prepare_linear(quantize(_as_weight(weight), 8, axis=0), bias=bias)

    @property
    def qweight(self) -> np.ndarray:
        """The int8 weight [N, K], read back from the kernel layout."""
        return _C.matmul_unpack(_LAYOUT["i8"], self._packed, self.out_features,
                                self.in_features)

    def dequantize(self):
        return self.qweight.astype(np.float32) * self.scales[:, None]

    @property
    def nbytes(self):
        return self.out_features * self.in_features + self.scales.nbytes + self._bias_bytes()

    def _desc(self):
        return "int8 per-channel"

    def forward(self, x, *, path=None, bias=None):
        xa, out, b, p = self._io(x, path, bias)
        if out.size:
            _C.matmul_i8_linear(xa, self._packed, self._rowsum, self._sw, b, out,
                                self.out_features, self.in_features, p)
        return out


class BlockLinear(_Layer):
    """4- or 8-bit codes [N, K] in groups of ``group_size`` along K:
    ``W[n, k] = scales[n, g] * (codes[n, k] - zeros[n, g]) + offsets[n, g]`` (g = k // group_size;
    offsets optional)."""

    def __init__(self, codes, scales, zeros, offsets=None, *, bits, group_size, bias=None,
                 kind="int"):
        q = _codes_input(codes)
        self._pack(q, _SOURCE["stream"], 8, q.shape[1], q.shape, scales, zeros, offsets,
                   bits=bits, group_size=group_size, bias=bias, kind=kind)

    def _pack(self, data, source, src_bits, row_codes, shape, scales, zeros, offsets, *,
              bits, group_size, bias, kind):
        bits = check_choice(bits, "bits", (4, 8))
        gs = check_int(group_size, "group_size", 32)
        if gs % 32:
            raise ArgumentError(f"group_size: must be a multiple of 32, got {gs}")
        n, k = shape
        _check_shape("codes", n, k)
        g = -(-k // gs)
        s = _finite("scales", _params("scales", scales, n, g, np.float32))
        z = _params("zeros", zeros, n, g, np.int32)
        m = None if offsets is None else _finite("offsets",
                                                 _params("offsets", offsets, n, g, np.float32))
        self.out_features, self.in_features = n, k
        self.bits, self.group_size, self.kind = bits, gs, kind
        self.scales, self.zeros, self.offsets = s, z, m
        self.bias = _as_bias(bias, n)
        self._packed = _C.matmul_pack(_LAYOUT[f"blk{bits}"], data, source, n, k, row_codes,
                                      src_bits)
        self._s = _C.matmul_tile_params(s)
        # one zero point for every group (symmetric codes): the kernel reads no z stream
        self._z = z.reshape(-1)[:1].copy() if (z == z.flat[0]).all() else _C.matmul_tile_params(z)
        self._m = None if m is None else _C.matmul_tile_params(m)

    @classmethod
    def from_rows(cls, data, bits, shape, scales, zeros, offsets=None, *, group_size,
                  bias=None, kind="int"):
        """From rows of densely packed ``bits``-bit codes, read in place: ``data`` uint8
        [N, ceil(C * bits / 8)] as ``litecomp.quant.pack_codes`` writes them (``QTensor.data``;
        8 bits is one byte per code), of which the first ``shape[1]`` codes of each row are
        the weight's (C >= shape[1]: a zero-padded weight, see ``quantize_rows``).  Codes of
        up to 4 bits run as 4-bit, wider ones as 8-bit."""
        code_bits = check_int(bits, "bits", 1, 8)
        a = _codes_input(data, "data")
        n, k = (check_int(v, "shape", 1) for v in shape)
        if a.shape[0] != n:
            raise ShapeError(f"data: {a.shape[0]} rows for a weight of shape {tuple(shape)}")
        row_codes = a.shape[1] * 8 // code_bits
        self = cls.__new__(cls)
        self._pack(a, _SOURCE["stream"], code_bits, row_codes, (n, k), scales, zeros, offsets,
                   bits=4 if code_bits <= 4 else 8, group_size=group_size, bias=bias,
                   kind=kind)
        return self

    @classmethod
    def _from_qtensor(cls, q: QTensor, bias, k=None):
        """From a 2-D QTensor whose rows are the output channels; ``k`` < its columns reads a
        zero-padded weight's first k."""
        n, kq = q.shape
        k = kq if k is None else k
        s = np.asarray(q.scales, np.float32)
        z = np.asarray(q.zero_points)
        if q.group_size is None:  # one group spanning the row
            s, z = (np.broadcast_to(a.reshape(-1, 1), (n, 1)) for a in (s, z))
            gs = -(-k // 32) * 32
        else:
            gs = q.group_size
        return cls.from_rows(q.data, q.bits, (n, k), s, z, group_size=gs, bias=bias,
                             kind=q.scheme)

    @classmethod
    def from_float(cls, weight, *, bits=4, group_size=128, scheme="symmetric", bias=None):
        """Deprecated: ``prepare_linear(quantize(weight, bits, scheme=scheme,
        group_size=group_size), bias=bias)`` (in_features need not be a multiple of
        group_size here: the last group is shorter)."""
        _deprecated("BlockLinear.from_float(w, bits=b, group_size=g)",
                    "prepare_linear(quantize(w, b, group_size=g))")
        w = _as_weight(weight)
        bits = check_choice(bits, "bits", (4, 8))
        gs = check_int(group_size, "group_size", 32)
        if gs % 32:
            raise ArgumentError(f"group_size: must be a multiple of 32, got {gs}")
        q, k = quantize_rows(w, bits, group_size=gs, scheme=scheme)
        return cls._from_qtensor(q, bias, k)

    @classmethod
    def from_gguf(cls, data, qtype, shape, bias=None):
        """GGUF Q4_0, Q4_1 or Q8_0 blocks (the bytes ``gguf.quants.quantize`` returns) of a
        weight of ``shape`` [N, K] (K a multiple of 32), read in place."""
        qtype = check_choice(str(qtype).upper(), "qtype", GGUF_TYPES)
        n, k = (check_int(v, "shape", 1) for v in shape)
        if k % 32:
            raise ShapeError(f"shape: GGUF blocks need in_features % 32 == 0, got {k}")
        raw = np.ascontiguousarray(np.asarray(data, np.uint8)).reshape(-1)
        size = FORMATS[qtype][2]
        if raw.size != n * (k // 32) * size:
            raise FormatError(f"data: {qtype} of shape ({n}, {k}) needs "
                              f"{n * (k // 32) * size} bytes, got {raw.size}")
        src = _SOURCE[qtype]
        d, m = _C.matmul_gguf_params(raw, src, n, k)
        zero = {"Q4_0": 8, "Q4_1": 0, "Q8_0": 128}[qtype]
        self = cls.__new__(cls)
        self._pack(raw, src, 8 if qtype == "Q8_0" else 4, k, (n, k), d,
                   np.full(d.shape, zero, np.int32), m, bits=8 if qtype == "Q8_0" else 4,
                   group_size=32, bias=bias, kind=qtype)
        return self

    @property
    def codes(self) -> np.ndarray:
        """The codes [N, K] (uint8), read back from the kernel layout."""
        return _C.matmul_unpack(_LAYOUT[f"blk{self.bits}"], self._packed, self.out_features,
                                self.in_features)

    def dequantize(self):
        k = self.in_features
        g = np.arange(k) // self.group_size
        w = self.scales[:, g] * (self.codes.astype(np.float32) - self.zeros[:, g])
        if self.offsets is not None:
            w = w + self.offsets[:, g]
        return w.astype(np.float32)

    @property
    def nbytes(self):
        """Bytes of the weight as stored: packed codes plus per-group parameters."""
        per = 4 + (0 if self.kind in ("symmetric", "Q4_0", "Q8_0") else 4)
        return ((self.out_features * self.in_features * self.bits + 7) // 8
                + self.scales.size * per + self._bias_bytes())

    def _desc(self):
        return f"{self.bits}-bit {self.kind}, group {self.group_size}"

    def forward(self, x, *, path=None, bias=None):
        xa, out, b, p = self._io(x, path, bias)
        if out.size:
            _C.matmul_blk_linear(xa, self._packed, self._s, self._z, self._m, b, out,
                                 self.out_features, self.in_features, self.group_size,
                                 self.bits, p)
        return out


class NF4Linear(_Layer):
    """NF4 codes [N, K] (indices into bitsandbytes' NF4 table ``litecomp.quant.codebook.NF4``,
    or another 16-entry ``table`` such as FP4) with one absmax per block of ``block_size``
    along K: ``W[n, k] = absmax[n, k // block_size] * table[codes[n, k]]``."""

    def __init__(self, codes, absmax, *, block_size=64, bias=None, table=None):
        q = _codes_input(codes)
        self._pack(q, _SOURCE["stream"], 8, q.shape[1], q.shape, absmax, block_size=block_size,
                   bias=bias, table=table)

    def _pack(self, data, source, src_bits, row_codes, shape, absmax, *, block_size, bias,
              table):
        bs = check_int(block_size, "block_size", 1)
        self.table = NF4 if table is None else np.ascontiguousarray(table, np.float32)
        if self.table.shape != (16,) or not np.isfinite(self.table).all():
            raise ArgumentError("table: expected 16 finite float32 code values")
        n, k = shape
        self.out_features, self.in_features, self.block_size = n, k, bs
        self.absmax = _finite("absmax", _params("absmax", absmax, n, -(-k // bs), np.float32))
        self.bias = _as_bias(bias, n)
        self._packed = _C.matmul_pack(_LAYOUT["nf4"], data, source, n, k, row_codes, src_bits)
        self._absmax = _C.matmul_tile_params(self.absmax)

    @classmethod
    def _from_quant4(cls, q: Quant4, bias, k=None):
        """From a 2-D Quant4, read in place (bitsandbytes' order); ``k`` < its columns reads a
        zero-padded weight's first k."""
        n, kq = q.shape
        k = kq if k is None else k
        if kq % q.block_size:
            raise ShapeError(f"q: block_size {q.block_size} must divide in_features {kq}")
        self = cls.__new__(cls)
        absmax = q.block_absmax().reshape(n, -1)[:, :-(-k // q.block_size)]
        self._pack(np.ascontiguousarray(q.data), _SOURCE["bitsandbytes"], 4, kq, (n, k), absmax,
                   block_size=q.block_size, bias=bias, table=CODEBOOKS[q.format])
        return self

    @classmethod
    def from_float(cls, weight, *, block_size=64, bias=None):
        """Deprecated: ``prepare_linear(quantize_4bit(weight, "nf4", block_size=block_size),
        bias=bias)`` (in_features need not be a multiple of block_size here)."""
        _deprecated("NF4Linear.from_float(w)", 'prepare_linear(quantize_4bit(w, "nf4"))')
        w = _as_weight(weight)
        bs = check_int(block_size, "block_size", 1)
        n, k = w.shape
        kp = -(-k // bs) * bs
        wp = w if kp == k else np.pad(w, ((0, 0), (0, kp - k)))
        return cls._from_quant4(quantize_4bit(wp, "nf4", block_size=bs), bias, k)

    @classmethod
    def from_bitsandbytes(cls, packed, absmax, shape, *, block_size=64, bias=None, table=None):
        """bitsandbytes' flat NF4 layout (first element in the HIGH nibble, blocks over the
        flattened weight; K must be a multiple of block_size), read in place."""
        n, k = (check_int(v, "shape", 1) for v in shape)
        bs = check_int(block_size, "block_size", 1)
        if k % bs:
            raise ShapeError(f"shape: in_features {k} must be a multiple of block_size")
        p = np.ascontiguousarray(np.asarray(packed, np.uint8)).reshape(-1)
        if p.size != (n * k + 1) // 2:
            raise FormatError(f"packed: expected {(n * k + 1) // 2} bytes, got {p.size}")
        self = cls.__new__(cls)
        self._pack(p, _SOURCE["bitsandbytes"], 4, k, (n, k), absmax, block_size=bs, bias=bias,
                   table=table)
        return self

    @property
    def codes(self) -> np.ndarray:
        """The codes [N, K] (uint8), read back from the kernel layout."""
        return _C.matmul_unpack(_LAYOUT["nf4"], self._packed, self.out_features,
                                self.in_features)

    def dequantize(self):
        k = self.in_features
        return (self.table[self.codes] * self.absmax[:, np.arange(k) // self.block_size]).astype(np.float32)

    @property
    def nbytes(self):
        return (self.out_features * self.in_features + 1) // 2 + self.absmax.nbytes + self._bias_bytes()

    def _desc(self):
        return f"nf4, block {self.block_size}"

    def forward(self, x, *, path=None, bias=None):
        xa, out, b, p = self._io(x, path, bias)
        if out.size:
            _C.matmul_nf4_linear(xa, self._packed, self._absmax, self.table, b, out,
                                 self.out_features, self.in_features, self.block_size, p)
        return out


# ------------------------------------------------------------------ building layers
def _as_weight(w, name="weight"):
    k = as_kernel_input(w, name, ndim=2)
    w32 = k.array if k.code == 0 else to_float32(k.array)
    if not np.isfinite(w32).all():
        raise NonFiniteError(f"{name}: contains NaN or infinity")
    _check_shape(name, *w32.shape)
    return w32


def quantize_rows(weight, bits, *, group_size, scheme="symmetric"):
    """``quantize(weight, bits, scheme=scheme, group_size=group_size)`` of a 2-D Linear weight
    whose in_features need not be a multiple of ``group_size``: the rows are padded with
    zeros to one (zeros change no scale or zero point: both schemes' ranges contain 0), and
    the real in_features is returned beside the QTensor of the padded weight.
    Returns (QTensor [N, K padded], K)."""
    w = as_kernel_input(weight, "weight", ndim=2).array
    k = w.shape[1]
    kp = -(-k // group_size) * group_size
    wp = w if kp == k else np.pad(w, ((0, 0), (0, kp - k)))
    return quantize(wp, bits, scheme=scheme, group_size=group_size), k


def _from_qtensor(q: QTensor, bias):
    if len(q.shape) != 2:
        raise ShapeError(f"q: a Linear weight must be 2-D [out, in], got shape {q.shape}")
    n, k = q.shape
    if q.group_size is None and q.axis in (None, 0):
        if q.bits == 8 and (np.asarray(q.zero_points) == 128).all():  # symmetric int8
            layer = Int8Linear.__new__(Int8Linear)
            layer._pack(q.data, np.broadcast_to(np.asarray(q.scales).reshape(-1), (n,)), bias)
            return layer
        return BlockLinear._from_qtensor(q, bias)
    if q.group_size is not None and q.axis in (None, 1):
        if q.group_size % 32:
            raise ArgumentError(f"q: group_size {q.group_size} is not a multiple of 32, which "
                                "the quantized matmul kernels need")
        return BlockLinear._from_qtensor(q, bias)
    raise ArgumentError(f"q: quantized along axis {q.axis} (group_size {q.group_size}); a "
                        "Linear weight needs per-tensor, per-output-channel (axis=0) or "
                        "groups along the input axis")


def _from_quant4(q: Quant4, bias):
    if len(q.shape) != 2:
        raise ShapeError(f"q: a Linear weight must be 2-D [out, in], got shape {q.shape}")
    return NF4Linear._from_quant4(q, bias)


def prepare_linear(q, *, bias=None, qtype=None, shape=None):
    """The packed layer (Int8Linear, BlockLinear or NF4Linear) for a quantized weight [out, in].

    ``q`` may be a ``QTensor`` (per tensor, per output channel ``axis=0``, or groups along the
    input axis whose size is a multiple of 32), a ``Quant4`` (NF4/FP4, block size dividing
    in_features), GGUF blocks with ``qtype="Q4_0" | "Q4_1" | "Q8_0"`` and ``shape=(out, in)``,
    or a layer (returned as it is).  8-bit symmetric per-channel (or per-tensor) weights take
    the int8 dynamic path (int8 activations per row); other QTensors and GGUF blocks the block
    path (int8 activations per block of 32); Quant4 the NF4/FP4 path (float activations).
    The codes are read where the tensor keeps them; nothing is unpacked in Python.
    """
    if isinstance(q, _Layer):
        return q
    if qtype is not None:
        if shape is None:
            raise ArgumentError("shape: needed with qtype (the weight's (out, in))")
        return BlockLinear.from_gguf(q, qtype, shape, bias=bias)
    if isinstance(q, QTensor):
        return _from_qtensor(q, bias)
    if isinstance(q, Quant4):
        return _from_quant4(q, bias)
    raise ArgumentError(f"q: expected a QTensor, Quant4, GGUF blocks with qtype=, or a "
                        f"quantized Linear layer; got {type(q).__name__}")


def _cache_key(q):
    return tuple(id(v) if isinstance(v, np.ndarray) else v
                 for v in (getattr(q, f.name) for f in dataclasses.fields(q)))


def linear(x, q, bias=None, *, qtype=None, shape=None, path=None):
    """``x @ W.T + bias`` where W is quantized (kept packed; never dequantized in full).

    ``q``: anything ``prepare_linear`` takes.  A QTensor or Quant4 is packed on first use and
    the layer cached on it (rebuilt if its arrays are replaced).  ``bias`` (float32 [N])
    replaces the layer's own bias when given.  ``path`` forces a kernel path (one of
    ``available_paths()``; default "auto").
    """
    if isinstance(q, (QTensor, Quant4)):
        key = _cache_key(q)
        cached = q.__dict__.get("_linear_cache")
        if cached is None or cached[0] != key:
            cached = q.__dict__["_linear_cache"] = (key, prepare_linear(q))
        layer = cached[1]
    else:
        layer = prepare_linear(q, qtype=qtype, shape=shape)
    b = _SELF if bias is None else _as_bias(bias, layer.out_features)
    return layer.forward(x, path=path, bias=b)


def _deprecated(old, new):
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use "
                  f"litecomp.quant.{new}", DeprecationWarning, stacklevel=3)
