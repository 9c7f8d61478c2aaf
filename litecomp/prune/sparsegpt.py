"""SparseGPT (Frantar & Alistarh 2023): prune a Linear weight in one shot, choosing each lazy
block's mask by w^2 / [H^-1]_jj^2 and updating the surviving weights to absorb the error
(optimal brain surgeon updates through the inverse-Hessian factor).  Same loop as GPTQ
(csrc/calib.c, litecomp/calib/obs.py); NumPy twin in litecomp/reference/calib.py.

One deliberate difference from the published code: an unstructured block prunes exactly
round(sparsity * entries) of its entries (lowest scores first, ties to the lower flat
index, litecomp's exact-k rule), where sparsegpt.py prunes every score <= the k-th
smallest (k + 1 entries, more on ties).

>>> import numpy as np, litecomp
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((512, 64)).astype(np.float32)
>>> w = rng.standard_normal((32, 64)).astype(np.float32)
>>> h = litecomp.calib.Hessian(64); h.update(x)
>>> new_w, keep = litecomp.prune.sparsegpt(w, h, 0.5)
>>> float(keep.mean()), bool((new_w[~keep] == 0).all())
(0.5, True)
"""

import numbers
from typing import NamedTuple

import numpy as np

from .._check import check_choice, check_float, check_int
from ..errors import ArgumentError, ShapeError

__all__ = ["sparsegpt"]


def _as_dtype(W, dtype):
    from .. import dtypes as _dt
    if dtype in (np.float32, np.float64):
        return W.astype(dtype, copy=False)
    from ..quant import cast
    return cast(W, _dt.name_of(dtype))


def sparsegpt(w, H, sparsity=None, *, n=None, m=None, block_size=128, damp=0.01, bits=None,
              group_size=None, scheme="symmetric", mask=None):
    """SparseGPT-prune a [out, in] weight with the Hessian ``H`` of its inputs.

    Give ``sparsity`` (a fraction in [0, 1): unstructured, per lazy block), or ``n`` and
    ``m`` (N:M: n of every m consecutive input columns are pruned; m divides block_size
    and the columns), or ``mask`` (a fixed bool keep mask, True = keep: only the update of
    the survivors runs).  With ``bits`` it is SparseGPT's joint mode: survivors are also
    quantized (``group_size`` columns per scale, None: one per row; ``scheme``).

    Returns ``(new_w, keep)`` -- new_w in w's dtype with pruned entries exactly 0, keep a
    bool mask -- or ``(new_w, keep, qtensor)`` with ``bits``.
    """
    r = sparsegpt_run(w, H, sparsity, n=n, m=m, block_size=block_size, damp=damp, bits=bits,
                      group_size=group_size, scheme=scheme, mask=mask)
    return r[:2] if r.qtensor is None else r[:3]


class SparseGPTResult(NamedTuple):
    """:func:`sparsegpt`'s result with what its loop leaves (``litecomp.calib`` reports
    from it): ``loss`` per row tr(E H_d E^T), H_d = H + lam I; ``dead`` inputs."""
    new_w: np.ndarray
    keep: np.ndarray
    qtensor: object
    loss: np.ndarray
    lam: float
    dead: np.ndarray


def sparsegpt_run(w, H, sparsity=None, *, n=None, m=None, block_size=128, damp=0.01,
                  bits=None, group_size=None, scheme="symmetric",
                  mask=None) -> SparseGPTResult:
    """:func:`sparsegpt` returning a ``SparseGPTResult``."""
    from ..calib import obs
    from ..quant.core import SCHEMES, _check_bits
    from ..quant.gptq import _qtensor, _row_qparams, check_group_size
    block_size = check_int(block_size, "block_size", 1)
    damp = check_float(damp, "damp", 0.0)
    given = [sparsity is not None, n is not None or m is not None, mask is not None]
    if sum(given) != 1:
        raise ArgumentError("sparsity: give exactly one of sparsity, n and m, or mask")
    W = obs.check_weight(w)
    dtype = np.asarray(w).dtype
    rows, cols = W.shape
    nm = keep = None
    if sparsity is not None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or \
                not 0.0 <= float(sparsity) < 1.0:
            raise ArgumentError(f"sparsity: expected a fraction in [0, 1), got {sparsity!r}")
        sparsity = float(sparsity)
    elif mask is not None:
        keep = np.asarray(mask)
        if keep.shape != W.shape:
            raise ShapeError(f"mask: shape {keep.shape} does not match w's {W.shape}")
        keep = keep.astype(np.bool_)
    else:
        if n is None or m is None:
            raise ArgumentError("n: N:M pruning needs both n and m")
        m = check_int(m, "m", 1, 128)
        n = check_int(n, "n", 0, m)
        if cols % m or block_size % m:
            raise ShapeError(f"m: {m} must divide the {cols} input columns and block_size "
                             f"{block_size}")
        nm = (n, m)
    qz = None
    if bits is not None:
        bits = _check_bits(bits)
        check_choice(scheme, "scheme", SCHEMES)
        group_size = check_group_size(group_size, cols)
        if group_size is None:
            s, z = _row_qparams(W, bits, scheme)
            qz = obs.Quantizer(rows, cols, bits, scheme, None, dynamic=False, scales=s,
                               zero_points=z)
        else:
            qz = obs.Quantizer(rows, cols, bits, scheme, group_size, dynamic=True)
    elif group_size is not None:
        raise ArgumentError("group_size: only with bits (the joint quantized mode)")
    f = obs.check_factor(H, cols) if isinstance(H, obs.Factor) else \
        obs.factor(H, cols, damp)
    dead = f.dead
    if dead.any():
        W[:, dead] = 0
    U, lam = f.U, f.lam
    del f
    loss = np.zeros(rows, np.float64)
    keep_out = obs.run(W, U, block_size, quantizer=qz, sparsity=sparsity, nm=nm, keep=keep,
                       loss=loss)
    del U
    new_w = _as_dtype(W, dtype)
    q = None if qz is None else _qtensor(qz.codes, qz.scales, qz.zero_points, bits,
                                         (rows, cols), scheme, group_size)
    return SparseGPTResult(new_w, keep_out, q, loss, lam, dead)
