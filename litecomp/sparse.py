"""Sparse storage that makes pruned files really smaller, and masks as packed bits.

``compress(state_dict)`` replaces every tensor of 2 or more dimensions that gets smaller by
it with the compressed-tensors "sparse-bitmask" layout:

    <name>.shape        int64 [ndim]     the dense shape
    <name>.compressed   dtype [nnz]      the non-zero values in row-major order
    <name>.bitmask      uint8 [rows, ceil(cols/8)]   numpy.packbits(W != 0, axis=-1,
                                                     bitorder="little"), rows = shape[0]
    <name>.row_offsets  int64 [rows]     exclusive prefix sum of per-row non-zero counts

(a tensor of more than 2 dimensions is taken as [shape[0], rest]).  ``decompress`` is the
exact inverse: the same bits come back, except that -0.0 (which compares equal to zero and
is stored as zero, as compressed-tensors does) comes back as +0.0.  A 50%-sparse float32
tensor takes about 53% of its dense size (half the values plus one bit per entry).

``compress(sd, format="nm", n=2, m=4)`` stores N:M-pruned tensors compactly instead: the
m - n kept values of every group of m along the last axis plus their positions in the
group, ceil(log2 m) bits each (a 2:4 float32 tensor takes about 53%).

``pack_bits`` / ``unpack_bits`` / ``count_bits`` keep bool masks as bits at rest (C kernels).
"""

import numpy as np

from . import _C
from . import dtypes as _dt
from ._check import as_array, check_choice, check_int
from .errors import ArgumentError, FormatError, ShapeError

BITMASK_KEYS = ("shape", "compressed", "bitmask", "row_offsets")
NM_KEYS = ("shape", "nm", "nm_values", "nm_index")


def _rows_cols(shape):
    """A mask/tensor as [rows, cols] over its last axis (a scalar is 1 x 1)."""
    if len(shape) == 0:
        return 1, 1
    cols = int(shape[-1])
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows, cols


# ------------------------------------------------------------------ packed masks
def pack_bits(mask) -> np.ndarray:
    """A bool mask as packed bits along its last axis, little bit order: the same bytes as
    ``numpy.packbits(mask, axis=-1, bitorder="little")``, made in parallel C.

    >>> pack_bits(np.array([True, False, True, True, False, False, False, False, True]))
    array([13,  1], dtype=uint8)
    """
    m = as_array(mask, "mask")
    if m.dtype != np.bool_:
        raise ArgumentError(f"mask: expected a bool array, got {m.dtype}")
    m = np.ascontiguousarray(m)
    rows, cols = _rows_cols(m.shape)
    out = np.empty(m.shape[:-1] + (-(-cols // 8),) if m.ndim else (1,), np.uint8)
    _C.mask_pack_bits(m.reshape(-1), out.reshape(-1), rows, cols)
    return out


def _check_packed(packed, shape):
    p = np.ascontiguousarray(as_array(packed, "packed"))
    if p.dtype != np.uint8:
        raise ArgumentError(f"packed: expected uint8, got {p.dtype}")
    shape = tuple(int(s) for s in shape)
    rows, cols = _rows_cols(shape)
    if p.size != rows * (-(-cols // 8)):
        raise ShapeError(f"packed: has {p.size} bytes, shape {shape} needs "
                         f"{rows * (-(-cols // 8))}")
    return p, shape, rows, cols


def unpack_bits(packed, shape) -> np.ndarray:
    """The bool mask of ``shape`` that ``pack_bits`` packed."""
    p, shape, rows, cols = _check_packed(packed, shape)
    out = np.empty(shape, np.bool_)
    _C.mask_unpack_bits(p.reshape(-1), out.reshape(-1), rows, cols)
    return out


def count_bits(packed, shape) -> int:
    """The number of True entries of a packed mask of ``shape`` (FormatError if padding bits
    are set)."""
    p, shape, rows, cols = _check_packed(packed, shape)
    counts = np.empty(rows, np.int64)
    _C.mask_count_bits(p.reshape(-1), rows, cols, counts)
    return int(counts.sum())


# ------------------------------------------------------------------ sparse-bitmask
def _bitmask_encode(a):
    """(compressed, bitmask, row_offsets) of one dense tensor."""
    rows = a.shape[0]
    cols = a.size // rows if rows else 0
    raw = _dt.raw_view(np.ascontiguousarray(a)).reshape(-1)
    bitmask = np.empty((rows, -(-cols // 8)), np.uint8)
    counts = np.empty(rows, np.int64)
    is_float = _dt.name_of(a.dtype) in _dt.FLOAT_DTYPES
    _C.bitmask_encode(raw, rows, cols, is_float, bitmask.reshape(-1), counts)
    offsets = np.zeros(rows, np.int64)
    if rows > 1:
        np.cumsum(counts[:-1], out=offsets[1:])
    compressed = np.empty(int(counts.sum()), a.dtype)
    _C.bitmask_gather(raw, rows, cols, bitmask.reshape(-1), offsets,
                      _dt.raw_view(compressed))
    return compressed, bitmask, offsets


def _compressible(a):
    return (isinstance(a, np.ndarray) and a.ndim >= 2 and a.dtype.itemsize in (1, 2, 4, 8)
            and (a.dtype.kind in "biuf" or _dt.name_of(a.dtype) in _dt.FLOAT_DTYPES))


def _dense_is_smaller(a) -> bool:
    """A cheap look (one parallel counting pass) before encoding: would the bitmask form
    be at least as big as the dense tensor?"""
    if _dt.name_of(a.dtype) in _dt.FLOAT_DTYPES:
        from .core import tensor_stats
        nnz = tensor_stats(a).nonzero
    else:
        nnz = int(np.count_nonzero(a))
    rows = a.shape[0]
    cols = a.size // rows if rows else 0
    return nnz * a.dtype.itemsize + rows * (-(-cols // 8) + 8) >= a.nbytes


def compress(state_dict, *, format="bitmask", n=2, m=4, only_if_smaller=True) -> dict:
    """The state dict with sparse tensors in compressed form (see the module docstring).

    format: "bitmask" (any sparsity pattern) or "nm" (N:M along the last axis: ``n`` of
    every ``m`` pruned).  Tensors with fewer than 2 dimensions, tensors that would not get
    smaller (``only_if_smaller``) and, for "nm", tensors that are not N:M sparse stay
    dense under their own names.  Save the result with ``litecomp.save(..., "x.safetensors")``.
    """
    if not isinstance(state_dict, dict):
        raise ArgumentError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
    check_choice(format, "format", ("bitmask", "nm"))
    if format == "nm":
        m = check_int(m, "m", 2, 256)
        n = check_int(n, "n", 0, m - 1)
    out = {}
    for name, a in state_dict.items():
        for suffix in BITMASK_KEYS + NM_KEYS:
            if name + "." + suffix in state_dict:
                raise ArgumentError(f"state_dict: {name!r} clashes with {name}.{suffix}")
        if not _compressible(a):
            out[name] = a
            continue
        if format == "bitmask":
            if only_if_smaller and _dense_is_smaller(a):
                out[name] = a
                continue
            parts = _bitmask_encode(a)
            size = sum(p.nbytes for p in parts) + 8 * a.ndim
            if only_if_smaller and size >= a.nbytes:
                out[name] = a
                continue
            compressed, bitmask, offsets = parts
            out[name + ".shape"] = np.array(a.shape, np.int64)
            out[name + ".compressed"] = compressed
            out[name + ".bitmask"] = bitmask
            out[name + ".row_offsets"] = offsets
        else:
            packed = _nm_encode(a, n, m)
            if packed is None:
                out[name] = a
                continue
            out[name + ".shape"] = np.array(a.shape, np.int64)
            out[name + ".nm"] = np.array([n, m], np.int64)
            out[name + ".nm_values"], out[name + ".nm_index"] = packed
    return out


def decompress(state_dict) -> dict:
    """The inverse of ``compress``: dense tensors under their original names, in order."""
    if not isinstance(state_dict, dict):
        raise ArgumentError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
    out = {}
    done = set()
    for key in state_dict:
        if key in done:
            continue
        base, _, suffix = key.rpartition(".")
        if suffix in BITMASK_KEYS + NM_KEYS and base + ".shape" in state_dict and (
                base + ".bitmask" in state_dict or base + ".nm_values" in state_dict):
            if base + ".bitmask" in state_dict:
                keys = [base + "." + s for s in BITMASK_KEYS]
                out[base] = _bitmask_decode(base, *(_get(state_dict, k) for k in keys))
            else:
                keys = [base + "." + s for s in NM_KEYS]
                out[base] = _nm_decode(base, *(_get(state_dict, k) for k in keys))
            done.update(keys)
        else:
            out[key] = state_dict[key]
    return out


def _get(sd, key):
    if key not in sd:
        raise FormatError(f"{key}: missing (the other parts of this compressed tensor exist)")
    return as_array(sd[key], key)


def _shape_of(base, shape):
    if shape.ndim != 1 or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise FormatError(f"{base}.shape: expected a 1-D array of non-negative integers")
    return tuple(int(s) for s in shape)


def _bitmask_decode(base, shape, compressed, bitmask, offsets):
    shape = _shape_of(base, shape)
    if len(shape) < 1:
        raise FormatError(f"{base}.shape: a compressed tensor has at least one dimension")
    rows = shape[0]
    cols = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    if bitmask.dtype != np.uint8 or bitmask.size != rows * (-(-cols // 8)):
        raise FormatError(f"{base}.bitmask: expected {rows} x {-(-cols // 8)} uint8, got "
                          f"{bitmask.shape} {bitmask.dtype}")
    if offsets.dtype.kind not in "iu" or offsets.shape != (rows,):
        raise FormatError(f"{base}.row_offsets: expected {rows} integers, got "
                          f"{offsets.shape} {offsets.dtype}")
    if compressed.ndim != 1 or compressed.dtype.itemsize not in (1, 2, 4, 8):
        raise FormatError(f"{base}.compressed: expected a 1-D array")
    out = np.empty(shape, compressed.dtype)
    _C.bitmask_scatter(_dt.raw_view(np.ascontiguousarray(compressed)), rows, cols,
                       np.ascontiguousarray(bitmask).reshape(-1),
                       np.ascontiguousarray(offsets, np.int64), _dt.raw_view(out).reshape(-1))
    return out


# ------------------------------------------------------------------ N:M compact form
def _index_bits(m):
    return max(1, int(m - 1).bit_length())


def _nm_encode(a, n, m):
    """(values [..., groups * (m - n)], packed positions) or None when a is not N:M sparse
    along its last axis (more than m - n non-zeros in some group)."""
    L = a.shape[-1]
    if L % m:
        return None
    keep = m - n
    g = np.ascontiguousarray(a).reshape(-1, m)
    zero = _is_zero(g)
    if ((~zero).sum(axis=1) > keep).any():
        return None
    # non-zeros first (then zeros), each in position order; keep the first m - n, sorted
    order = np.argsort(zero, axis=1, kind="stable")[:, :keep]
    pos = np.sort(order, axis=1).astype(np.uint8)
    values = np.take_along_axis(g, pos.astype(np.intp), axis=1)
    values = values.reshape(a.shape[:-1] + (L // m * keep,))
    return values, _pack_positions(pos.reshape(-1), _index_bits(m))


def _is_zero(g):
    """== 0 (for floats on the bits, so -0.0 is zero and NaN is not)."""
    if g.dtype.kind in "biu":
        return g == 0
    u = g.view(np.dtype(f"u{g.dtype.itemsize}"))
    return (u & np.array((1 << (8 * g.dtype.itemsize - 1)) - 1, u.dtype)) == 0


def _pack_positions(pos, bits):
    """Little-endian bit stream of ``bits``-bit unsigned values."""
    b = ((pos[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.bool_)
    return np.packbits(b.reshape(-1), bitorder="little")


def _nm_decode(base, shape, nm, values, index):
    shape = _shape_of(base, shape)
    if nm.shape != (2,):
        raise FormatError(f"{base}.nm: expected [n, m]")
    n, m = int(nm[0]), int(nm[1])
    if not (2 <= m <= 256 and 0 <= n < m) or not shape or shape[-1] % m:
        raise FormatError(f"{base}.nm: [{n}, {m}] does not fit shape {shape}")
    keep = m - n
    groups = int(np.prod(shape, dtype=np.int64)) // m
    bits = _index_bits(m)
    if values.size != groups * keep or index.dtype != np.uint8 or \
            index.size != -(-groups * keep * bits // 8):
        raise FormatError(f"{base}.nm_values / nm_index: sizes do not match shape {shape}")
    b = np.unpackbits(np.ascontiguousarray(index), bitorder="little")[:groups * keep * bits]
    pos = (b.reshape(-1, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)
    pos = pos.reshape(groups, keep)
    if (pos >= m).any() or (keep > 1 and (np.diff(pos, axis=1) <= 0).any()):
        raise FormatError(f"{base}.nm_index: positions out of order or out of range")
    out = np.zeros((groups, m), values.dtype)
    np.put_along_axis(out, pos, values.reshape(groups, keep), axis=1)
    return out.reshape(shape)


def nbytes(state_dict) -> int:
    """Total bytes of the arrays in a state dict (what a file's data section holds)."""
    return int(sum(np.asarray(a).nbytes for a in state_dict.values()))
