"""GGUF (ggml) block formats: quantize / dequantize byte-identical to the ``gguf``
package's ``gguf.quants`` (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), the K-quants Q2_K, Q3_K, Q4_K,
Q5_K and Q6_K byte-identical to llama.cpp's reference quantizers (with an optional
importance matrix; gguf.quants can only dequantize these), and export of a state dict to a
``.gguf`` file through gguf's GGUFWriter (the optional dependency).

Arrays keep gguf.quants' shapes: quantizing (..., n) gives uint8 (..., n / block * bytes).
"""

import os

import numpy as np

from .. import _C
from .._check import as_array, as_kernel_input
from ..errors import ArgumentError, DTypeError, FormatError, ShapeError
from ..select import select as select_names

#: name: (ggml type id, values per block, bytes per block), from the block structs in
#: csrc/gguf.h (LC_GGUF_TYPES), the one place they are written down.
FORMATS = _C.gguf_formats()
#: the K-quants (256-value super-blocks; quantize takes an importance matrix)
K_QUANTS = tuple(n for n, (_t, blk, _b) in FORMATS.items() if blk == 256)


def _format(qtype):
    name = getattr(qtype, "name", qtype)
    if name not in FORMATS:
        raise ArgumentError(f"qtype: {qtype!r} is not one of {', '.join(FORMATS)}")
    return name, FORMATS[name]


def quantize(x, qtype, *, imatrix=None, out=None) -> np.ndarray:
    """ggml blocks of ``x`` along its last axis (whose size must be a multiple of the block
    size); NaN/inf raise NonFiniteError.

    ``imatrix`` (K-quants only): importance weights, one non-negative value per column of
    ``x`` (llama.cpp's importance matrix: the mean of x^2 of the layer's input, see
    ``litecomp.export.imatrix``); the fit then minimises the weighted error as llama.cpp's
    quantizer does with ``--imatrix``.  ``out`` (uint8, C-contiguous, of the result's
    shape) is written instead of a new array -- reusing a buffer avoids the page faults of
    fresh memory, which can cost more than the quantization itself."""
    name, (tid, blk, nbytes) = _format(qtype)
    qw = None
    if imatrix is not None:
        if name not in K_QUANTS:
            raise ArgumentError(f"imatrix: only the K-quants ({', '.join(K_QUANTS)}) take an "
                                f"importance matrix, not {name}")
        qw = np.ascontiguousarray(as_array(imatrix, "imatrix"), np.float32)
        cols = np.shape(x)[-1] if np.ndim(x) else 1
        if qw.ndim != 1 or qw.size != cols:
            raise ShapeError(f"imatrix: expected {cols} weights (one per column of x), got "
                             f"shape {qw.shape}")
        if not np.all(np.isfinite(qw)) or np.any(qw < 0):
            raise ArgumentError("imatrix: weights must be finite and non-negative")
    k = as_kernel_input(x, "x")
    shape = k.array.shape or (1,)
    if k.array.size == 0 or shape[-1] % blk:
        raise ShapeError(f"x: last axis of shape {k.array.shape} is not a non-zero multiple "
                         f"of {name}'s block size {blk}")
    want = shape[:-1] + (shape[-1] // blk * nbytes,)
    if out is None:
        out = np.empty(want, np.uint8)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == want
              and out.flags.c_contiguous and out.flags.writeable):
        raise ArgumentError(f"out: expected a writeable C-contiguous uint8 array of shape {want}")
    _C.gguf_quantize(k.raw, k.code, tid, out, qw)
    return out


def dequantize(data, qtype) -> np.ndarray:
    """float32 values of ggml blocks (the inverse shape rule of ``quantize``)."""
    name, (tid, blk, nbytes) = _format(qtype)
    a = as_array(data, "data")
    if a.dtype != np.uint8:
        raise DTypeError(f"data: expected uint8 blocks, got {a.dtype}")
    a = np.ascontiguousarray(a)
    shape = a.shape or (1,)
    if shape[-1] % nbytes:
        raise FormatError(f"data: last axis of {shape[-1]} bytes is not whole {nbytes}-byte "
                          f"{name} blocks")
    out = np.empty(shape[:-1] + (shape[-1] // nbytes * blk,), np.float32)
    _C.gguf_dequantize(a, tid, out)
    return out


def write_gguf(path, state_dict, qtype="Q8_0", *, arch="litecomp", min_elements=1024,
               targets=None, ignore=None, select=None):
    """Write a state dict to a .gguf file with gguf's GGUFWriter.

    Tensors whose last axis divides into ``qtype`` blocks and that have at least
    ``min_elements`` values are stored quantized; the rest as float32 (as llama.cpp's
    converters keep norms and biases in float); int8/16/32/64 tensors are stored as they
    are, other dtypes raise DTypeError.  ``targets`` / ``ignore`` (``litecomp.select``
    patterns) narrow the quantized set further; ``select(name) -> bool`` is the older way to
    say the same.  The file is written to a temporary name and renamed, so a failure leaves no
    half-written file.  Returns {name: stored type name}.
    """
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - gguf is installed in CI
        raise ImportError("write_gguf needs the gguf package: pip install gguf") from exc
    name, (_tid, blk, _nb) = _format(qtype)
    if targets is not None or ignore is not None:
        if select is not None:
            raise ArgumentError("select: give targets/ignore or select, not both")
        names = [k for k in state_dict]
        chosen = set(select_names(names, targets, ignore, what="tensors"))
        select = chosen.__contains__
    gtype = getattr(gguf.GGMLQuantizationType, name)
    path = os.fspath(path)
    tmp = f"{path}.litecomp-tmp"
    writer = gguf.GGUFWriter(tmp, arch)
    kinds, done = {}, False
    try:
        for key, value in state_dict.items():
            a = as_array(value, key)
            if (a.dtype.kind in "fV" and a.ndim >= 1 and a.size >= min_elements
                    and a.shape[-1] % blk == 0 and (select is None or select(key))):
                writer.add_tensor(key, quantize(a, name), raw_dtype=gtype)
                kinds[key] = name
            elif a.dtype.kind in "fV":
                writer.add_tensor(key, np.ascontiguousarray(a, np.float32))
                kinds[key] = "F32"
            elif a.dtype in (np.int8, np.int16, np.int32, np.int64):
                writer.add_tensor(key, np.ascontiguousarray(a))
                kinds[key] = a.dtype.name.upper().replace("INT", "I")
            else:
                raise DTypeError(f"{key}: dtype {a.dtype} cannot be stored in GGUF")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        done = True
    finally:
        writer.close()
        if done:
            os.replace(tmp, path)
        elif os.path.exists(tmp):
            os.remove(tmp)
    return kinds
