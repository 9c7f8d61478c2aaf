"""GPTQ (Frantar et al. 2022): quantize a Linear weight column by column, spreading each
column's rounding error over the columns not yet quantized through the inverse Hessian of
the layer's inputs.  The loop is csrc/calib.c, the linear algebra NumPy's BLAS/LAPACK
(litecomp/calib/obs.py); the NumPy twin is litecomp/reference/calib.py.

>>> import numpy as np, litecomp
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((512, 64)).astype(np.float32) * np.linspace(0.1, 3, 64, dtype=np.float32)
>>> w = rng.standard_normal((32, 64)).astype(np.float32)
>>> h = litecomp.calib.Hessian(64); h.update(x)
>>> q = litecomp.quant.gptq(w, h, bits=4, group_size=32)
>>> rtn = litecomp.quant.quantize(w, 4, group_size=32)
>>> err = lambda v: float(np.sum((x @ (v - w).T) ** 2))
>>> err(q.dequantize()) < err(rtn.dequantize())
True
"""

from typing import NamedTuple

import numpy as np

from .._check import check_choice, check_float, check_int
from ..errors import ArgumentError, ShapeError
from .core import SCHEMES, QTensor, _check_bits, calc_qparams, pack_codes

__all__ = ["gptq"]


def _row_qparams(W, bits, scheme, group_size=None):
    """(scales, zero points) per row (group_size None) or per (row, group): torch.ao's
    formulas on min/max, as ``quantize`` computes them."""
    rows, cols = W.shape
    v = W if group_size is None else W.reshape(rows, cols // group_size, group_size)
    mn = v.min(axis=-1).astype(np.float32)
    mx = v.max(axis=-1).astype(np.float32)
    qmax = (1 << bits) - 1
    s, z = calc_qparams(mn, mx, 0, qmax, scheme, zero_point_symmetric=1 << (bits - 1))
    return s.reshape(rows, -1), z.reshape(rows, -1)


def check_group_size(group_size, cols):
    if group_size is None:
        return None
    group_size = check_int(group_size, "group_size", 1)
    if cols % group_size:
        raise ShapeError(f"group_size: {group_size} does not divide the {cols} input columns")
    return group_size


class GPTQResult(NamedTuple):
    """What the GPTQ loop leaves besides the QTensor (``litecomp.calib`` reports from it)."""
    qtensor: QTensor
    values: np.ndarray   # float32 [out, in]: qtensor.dequantize(), in the original order
    loss: np.ndarray     # float64 [out]: per row tr(E H_d E^T) (obs.run's loss)
    lam: float           # the value added to H's diagonal (H_d = H + lam I)
    dead: np.ndarray     # bool [in]: inputs that never fire (H_jj = 0), weight set to 0


def gptq(w, H, bits=4, group_size=128, *, scheme="symmetric", act_order=False, damp=0.01,
         block_size=128, static_groups=False) -> QTensor:
    """GPTQ-quantize a [out, in] weight with the Hessian ``H`` of its inputs.

    ``H``: a ``litecomp.calib.Hessian`` or the (in, in) matrix 2/n X^T X (or its
    ``litecomp.calib.obs.Factor``, shared by weights that read one input; ``damp`` is then
    the factor's).  ``group_size``:
    one scale per this many input columns (None: one per output row).  ``act_order``:
    quantize the columns in order of decreasing H_jj; the result then carries ``perm``
    (codes stored in that order, groups are runs of it) unless ``static_groups`` fixes the
    groups on the original column order first.  ``damp``: fraction of mean(diag H) added
    to the diagonal.  ``block_size``: columns per lazy update.  Inputs that never fire
    (H_jj = 0) get weight 0.  Returns a ``QTensor`` in ``quantize``'s layout.
    """
    return gptq_run(w, H, bits, group_size, scheme=scheme, act_order=act_order, damp=damp,
                    block_size=block_size, static_groups=static_groups).qtensor


def gptq_run(w, H, bits=4, group_size=128, *, scheme="symmetric", act_order=False,
             damp=0.01, block_size=128, static_groups=False) -> GPTQResult:
    """:func:`gptq` with what its loop leaves: the dequantized values (no second pass over
    the codes) and the per-row error energy (see ``GPTQResult``)."""
    from ..calib import obs
    bits = _check_bits(bits)
    check_choice(scheme, "scheme", SCHEMES)
    damp = check_float(damp, "damp", 0.0)
    block_size = check_int(block_size, "block_size", 1)
    if not isinstance(act_order, (bool, np.bool_)) or not isinstance(static_groups,
                                                                     (bool, np.bool_)):
        raise ArgumentError("act_order: act_order and static_groups are True or False")
    W = obs.check_weight(w)
    rows, cols = W.shape
    group_size = check_group_size(group_size, cols)
    f = obs.check_factor(H, cols, act_order) if isinstance(H, obs.Factor) else \
        obs.factor(H, cols, damp, act_order=act_order)
    static_groups = bool(static_groups) and group_size is not None

    if group_size is None:  # per row: the published code fixes these before anything else
        s, z = _row_qparams(W, bits, scheme)
    dead = f.dead
    if dead.any():
        W[:, dead] = 0
    if static_groups:
        s, z = _row_qparams(W, bits, scheme, group_size)
    perm = f.perm
    if perm is not None:
        W = W.take(perm, axis=1)  # (W[:, perm] is several times slower)
    U, lam = f.U, f.lam
    del f

    if group_size is None:
        qz = obs.Quantizer(rows, cols, bits, scheme, None, dynamic=False, scales=s,
                           zero_points=z)
    elif static_groups:
        gidx = (perm if perm is not None else np.arange(cols)) // group_size
        qz = obs.Quantizer(rows, cols, bits, scheme, group_size, dynamic=False, scales=s,
                           zero_points=z, gidx=gidx)
    else:
        qz = obs.Quantizer(rows, cols, bits, scheme, group_size, dynamic=True)
    loss = np.zeros(rows, np.float64)
    obs.run(W, U, block_size, quantizer=qz, loss=loss)  # reads U only (it may be shared)
    del U

    codes = qz.codes
    keep_perm = perm is not None and group_size is not None and not static_groups
    if perm is not None:
        inv = np.argsort(perm)
        W = W.take(inv, axis=1)
        if not keep_perm:
            codes = codes.take(inv, axis=1)
    q = _qtensor(codes, qz.scales, qz.zero_points, bits, (rows, cols), scheme, group_size,
                 perm if keep_perm else None)
    return GPTQResult(q, W, loss, lam, dead)


def _qtensor(codes, scales, zps, bits, shape, scheme, group_size, perm=None) -> QTensor:
    rows, cols = shape
    packed = codes if bits == 8 else pack_codes(codes, bits)
    if group_size is None:
        return QTensor(packed, scales.reshape(rows), zps.astype(np.uint8).reshape(rows), bits,
                       shape, scheme, 0, None)
    ng = cols // group_size
    return QTensor(packed, scales.reshape(rows, ng), zps.astype(np.uint8).reshape(rows, ng),
                   bits, shape, scheme, 1, group_size, perm)
