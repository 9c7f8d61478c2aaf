"""``litecomp.quant.linear(x, q, bias=None)``: run a Linear layer on a quantized weight.

``q`` may be a ``QTensor`` (a 2-D [out, in] weight: per tensor, per output channel
(axis=0), or grouped along the input axis with a group size that is a multiple of 32), a
``Quant4`` (NF4/FP4 blockwise, block size dividing in_features), a GGUF block array with
``qtype="Q4_0" | "Q4_1" | "Q8_0"`` and ``shape=(out, in)``, or a layer from
``litecomp.qmatmul``.  The packed layer is built once and cached on the QTensor/Quant4.
8-bit symmetric per-channel weights take the int8 dynamic path (int8 activations per row);
everything else the block path (int8 activations per block of 32) or the NF4/FP4 path
(float activations).  See docs/qmatmul.md.
"""

import dataclasses

import numpy as np

from .. import qmatmul as _qm
from ..errors import ArgumentError, ShapeError
from .codebook import CODEBOOKS, Quant4
from .core import QTensor


def _from_qtensor(q: QTensor, bias):
    if len(q.shape) != 2:
        raise ShapeError(f"q: a Linear weight must be 2-D [out, in], got shape {q.shape}")
    n, k = q.shape
    codes = q.codes()
    s = np.asarray(q.scales, np.float32)
    z = np.asarray(q.zero_points).astype(np.int32)
    kind = 4 if q.bits <= 4 else 8
    whole = -(-k // 32) * 32  # one group spanning the row
    if q.group_size is None and q.axis in (None, 0):
        if q.axis is None:
            s = np.full((n, 1), s.ravel()[0], np.float32)
            z = np.full((n, 1), z.ravel()[0], np.int32)
        else:
            s, z = s.reshape(n, 1), z.reshape(n, 1)
        if q.bits == 8 and (z == 128).all():
            return _qm.Int8Linear((codes.astype(np.int16) - 128).astype(np.int8), s.ravel(), bias)
        return _qm.BlockLinear(codes, s, z, bits=kind, group_size=whole, bias=bias,
                               kind=q.scheme)
    if q.group_size is not None and q.axis in (None, 1):
        if q.group_size % 32:
            raise ArgumentError(f"q: group_size {q.group_size} is not a multiple of 32, which "
                                "the quantized matmul kernels need")
        g = k // q.group_size
        return _qm.BlockLinear(codes, s.reshape(n, g), z.reshape(n, g), bits=kind,
                               group_size=q.group_size, bias=bias, kind=q.scheme)
    raise ArgumentError(f"q: quantized along axis {q.axis} (group_size {q.group_size}); a "
                        "Linear weight needs per-tensor, per-output-channel (axis=0) or "
                        "groups along the input axis")


def _from_quant4(q: Quant4, bias):
    if len(q.shape) != 2:
        raise ShapeError(f"q: a Linear weight must be 2-D [out, in], got shape {q.shape}")
    n, k = q.shape
    if k % q.block_size:
        raise ShapeError(f"q: block_size {q.block_size} must divide in_features {k}")
    return _qm.NF4Linear.from_bitsandbytes(q.data, q.block_absmax(), q.shape,
                                           block_size=q.block_size, bias=bias,
                                           table=CODEBOOKS[q.format])


def prepare_linear(q, *, bias=None, qtype=None, shape=None):
    """The packed ``litecomp.qmatmul`` layer for a quantized weight (see the module doc)."""
    if isinstance(q, _qm._Layer):
        return q
    if qtype is not None:
        if shape is None:
            raise ArgumentError("shape: needed with qtype (the weight's (out, in))")
        return _qm.BlockLinear.from_gguf(q, qtype, shape, bias=bias)
    if isinstance(q, QTensor):
        return _from_qtensor(q, bias)
    if isinstance(q, Quant4):
        return _from_quant4(q, bias)
    raise ArgumentError(f"q: expected a QTensor, Quant4, GGUF blocks with qtype=, or a "
                        f"qmatmul layer; got {type(q).__name__}")


def _cache_key(q):
    return tuple(id(v) if isinstance(v, np.ndarray) else v
                 for v in (getattr(q, f.name) for f in dataclasses.fields(q)))


def linear(x, q, bias=None, *, qtype=None, shape=None, path=None):
    """``x @ W.T + bias`` where W is quantized (kept packed; never dequantized in full)."""
    if isinstance(q, (QTensor, Quant4)):
        key = _cache_key(q)
        cached = q.__dict__.get("_qmatmul_cache")
        if cached is None or cached[0] != key:
            cached = q.__dict__["_qmatmul_cache"] = (key, prepare_linear(q))
        layer = cached[1]
    else:
        layer = prepare_linear(q, qtype=qtype, shape=shape)
    return _qm.linear(x, layer, bias, path=path)
