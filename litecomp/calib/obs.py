"""The shared driver of the OBS methods (GPTQ, SparseGPT, their joint mode).

Both follow one loop (IST-DASLab gptq.py / sparsegpt.py): U = the upper Cholesky factor of
(H + damp)^-1, then for each lazy block of ``block_size`` columns the per-column loop
(csrc/calib.c: choose the kept value, spread its error over the block's later columns)
and the trailing update ``W[:, i2:] -= Err @ U[i1:i2, i2:]`` through NumPy's BLAS -- two
levels: up to the end of the block's 512-column super-block at once, past it once per
super-block (``_super_block``; float rounding only against the published order).

The dense linear algebra is NumPy's: ``np.linalg.cholesky`` of the reversed H and a blocked
triangular inverse built on ``np.matmul`` (NumPy has no trtri), which gives U directly:
if J reverses the order and L L^T = J H J, then U = J L^-1 J is upper triangular and
U^T U = H^-1.  That is n^3/3 + n^3/3 flops where the published chol -> cholesky_inverse ->
chol takes 4 n^3/3.
"""

import threading
import warnings
from typing import NamedTuple, Optional

import numpy as np

from .. import _C
from .._check import as_array
from .._runtime import blas_single_thread, threads
from ..errors import ArgumentError, NonFiniteError, ShapeError

#: How many times a failing Cholesky is retried, each with 10x the damping.
DAMP_RETRIES = 4


def _all_finite(A) -> bool:
    """np.isfinite(A).all() by row panels: no full-size bool temporary (31 MB for a
    5632^2 Hessian, at the moment its layer is compressed)."""
    if A.ndim != 2:
        return bool(np.isfinite(A).all())
    return all(bool(np.isfinite(A[r0:r0 + 512]).all()) for r0 in range(0, A.shape[0], 512))


def check_hessian(H, cols, name="H") -> np.ndarray:
    """H as a float32 (cols, cols) array: square, the weight's width, finite, symmetric.
    A one-element list ``[H]`` hands the caller's only reference over: a float32 array is
    then used (and later changed) in place, not copied.  A ``Hessian``, or ``[m]`` with m a
    ``SymmetricMatrix`` view (a Hessian's matrix), is symmetric by construction: only its
    values are checked."""
    from .hessian import Hessian
    symmetric = isinstance(H, Hessian) or (isinstance(H, list) and len(H) == 1 and
                                           isinstance(H[0], SymmetricMatrix))
    owned = isinstance(H, Hessian)
    if isinstance(H, list) and len(H) == 1:
        H = H.pop()
        owned = isinstance(H, np.ndarray)
    if isinstance(H, Hessian):
        owned = True
        H = H.matrix  # a fresh array: no second copy
    H = as_array(H, name)
    if H.dtype.kind not in "fV":
        raise ArgumentError(f"{name}: expected a float matrix, got dtype {H.dtype}")
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ShapeError(f"{name}: expected a square matrix, got shape {H.shape}")
    if H.shape[0] != cols:
        raise ShapeError(f"{name}: is {H.shape[0]}x{H.shape[1]} but the weight has {cols} "
                         "input columns")
    H = np.asarray(H, np.float32) if owned and H.dtype == np.float32 else np.array(H, np.float32)
    if symmetric:  # row panels: no n^2 bool temporary
        if not _all_finite(H):
            raise NonFiniteError(f"{name}: contains NaN or inf")
        return H
    asym = scale = 0.0
    for r0 in range(0, H.shape[0], 512):  # row panels: no full-size temporaries
        panel = H[r0:r0 + 512]
        if not np.isfinite(panel).all():
            raise NonFiniteError(f"{name}: contains NaN or inf")
        scale = max(scale, float(panel.max()), -float(panel.min()))
        asym = max(asym, float(np.abs(panel - H[:, r0:r0 + 512].T).max()))
    if scale and asym > 1e-4 * scale:
        raise ArgumentError(f"{name}: is not symmetric (max |H - H^T| = {asym:.3g}, "
                            f"max |H| = {scale:.3g})")
    if (np.diagonal(H) < 0).any():
        raise ArgumentError(f"{name}: has negative diagonal entries; a Hessian 2/n X^T X "
                            "has none")
    return H


def check_weight(w, name="w") -> np.ndarray:
    """A 2-D float weight as a fresh float32 working copy (NonFiniteError on NaN/inf)."""
    from ..core import to_float32
    w = as_array(w, name)
    if w.ndim != 2:
        raise ShapeError(f"{name}: expected a 2-D [out, in] weight, got shape {w.shape}")
    if w.size == 0:
        raise ShapeError(f"{name}: is empty")
    W = np.array(w, np.float32) if w.dtype in (np.float32, np.float64) else to_float32(w)
    if not _all_finite(W):
        raise NonFiniteError(f"{name}: contains NaN or inf")
    return W


class SymmetricMatrix(np.ndarray):
    """A float32 matrix known to be symmetric (a Hessian's x^T x sum): ``check_hessian``
    checks only that it is finite."""


_single = threading.local()  # .on: already inside a single-threaded BLAS block


def tri_inv_lower(L) -> np.ndarray:
    """Invert a lower-triangular matrix in place (and return it), blocked: the diagonal
    blocks by np.linalg.inv, the rest by two triangular products per level
    (inv([[A, 0], [B, C]]) = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]) computed in B's memory and
    skipping the zero halves (``_lower_mul``): about n^3 / 3 flops where two full GEMMs
    per level take 2 n^3 / 3.  Temporaries: at most an eighth-size panel."""
    n = L.shape[0]
    if n <= 512 and not getattr(_single, "on", False):  # small: one BLAS thread (see cholesky_lower)
        with blas_single_thread():
            _single.on = True
            try:
                return tri_inv_lower(L)
            finally:
                _single.on = False
    if n <= _INV_LEAF:
        L[...] = np.tril(np.linalg.inv(L))
        return L
    h = _half(n)
    Ai = tri_inv_lower(L[:h, :h])
    Ci = tri_inv_lower(L[h:, h:])
    B = L[h:, :h]
    _lower_mul(B, Ai, left=False)  # B <- B A^-1
    _lower_mul(B, Ci, left=True)   # B <- C^-1 B A^-1
    np.negative(B, out=B)
    return L


def _half(n):
    return (n // 2 + 63) // 64 * 64


_TRI_LEAF = 128  # below this a triangular product is one plain matmul


def _lower_mul(X, T, *, left):
    """X <- T @ X (``left``) or X @ T, in place, T lower triangular (its upper triangle
    ignored where it is split): recursively on halves of T so the zero block costs
    nothing.  The temporaries are products of at most half of X."""
    n = T.shape[0]
    if n <= _TRI_LEAF:
        X[...] = T @ X if left else X @ T
        return
    k = _half(n)
    if left:  # [T11 0; T21 T22] [X1; X2] = [T11 X1; T21 X1 + T22 X2]
        _lower_mul(X[k:], T[k:, k:], left=True)
        X[k:] += T[k:, :k] @ X[:k]
        _lower_mul(X[:k], T[:k, :k], left=True)
    else:     # [X1 X2] [T11 0; T21 T22] = [X1 T11 + X2 T21, X2 T22]
        _lower_mul(X[:, :k], T[:k, :k], left=False)
        X[:, :k] += X[:, k:] @ T[k:, :k]
        _lower_mul(X[:, k:], T[k:, k:], left=False)


# cholesky_lower's diagonal blocks, and the sizes tri_inv_lower and _lower_mul stop
# splitting at (np.linalg.inv and cholesky compute in float64: small leaves keep that part
# small).  Measured, the whole factor with act_order against 256 / 128 / 256: 512 wide
# 5.0 -> 3.8 ms, 1536 44 -> 40 ms (one thread), 2048 62 -> 57 ms, 5632 823 -> 762 ms.
_CHOL_BLOCK = 128
_INV_LEAF = 64


def _restore_lower(A, saved):
    """Undo a failed ``cholesky_lower(A)`` from what it leaves alone: the strict upper
    triangle outside the diagonal blocks, and the diagonal blocks ``saved`` before."""
    n = A.shape[0]
    for i, k0 in enumerate(range(0, n, _CHOL_BLOCK)):
        k1 = min(k0 + _CHOL_BLOCK, n)
        A[k0:k1, k0:k1] = saved[i]
        if k1 < n:
            A[k1:, k0:k1] = A[k0:k1, k1:].T


def cholesky_lower(A, block=_CHOL_BLOCK) -> np.ndarray:
    """The lower Cholesky factor of a float32 matrix, computed in place in A (returned):
    right-looking and blocked, each diagonal block by ``np.linalg.cholesky``, the panel by
    the block's triangular inverse and the trailing update by ``np.matmul`` in column
    panels -- float32 throughout.  The diagonal blocks run single-threaded
    (``litecomp._runtime.blas_single_thread``): small threaded LAPACK calls are slow
    whenever the cores are busy; the GEMMs keep every thread.  (``np.linalg.cholesky`` on the whole matrix computes in
    float64 and holds about six n^2 float32 copies; this holds one plus a panel.)
    Raises np.linalg.LinAlgError when A is not positive definite."""
    n = A.shape[0]
    for k0 in range(0, n, block):
        k1 = min(k0 + block, n)
        with blas_single_thread():
            Lkk = np.linalg.cholesky(A[k0:k1, k0:k1]).astype(np.float32)
        if not np.isfinite(Lkk).all():
            raise np.linalg.LinAlgError("not positive definite")
        A[k0:k1, k0:k1] = Lkk
        if k1 == n:
            break
        P = A[k1:, k0:k1] @ tri_inv_lower(Lkk).T  # L[k1:, k0:k1]
        A[k1:, k0:k1] = P
        for c0 in range(k1, n, block):  # lower part of A[k1:, k1:] -= P P^T
            c1 = min(c0 + block, n)
            A[c0:, c0:c1] -= P[c0 - k1:] @ P[c0 - k1:c1 - k1].T
    return _zero_upper(A)


def _zero_upper(A):
    n = A.shape[0]
    for r0 in range(0, n, 512):
        r1 = min(r0 + 512, n)
        A[r0:r1] = np.tril(A[r0:r1], r0)  # row panel r0..r1: keep columns <= row
    return A


def _flip(A):
    """A <- J A J (rows and columns reversed) in place, row by row: no n^2 temporary."""
    n = A.shape[0]
    for i in range(n // 2):
        top = A[i, ::-1].copy()
        A[i] = A[n - 1 - i, ::-1]
        A[n - 1 - i] = top
    if n % 2:
        A[n // 2] = A[n // 2, ::-1].copy()
    return A


def permuted(H, perm, *, flip=False) -> np.ndarray:
    """H[perm][:, perm] as a new array (H is left alone), by a row gather and then the
    columns in place one row panel at a time (NumPy's fancy indexing on two axes is twice
    as slow).  ``flip``: J P H P^T J instead (the order reversed as well), the form
    ``inverse_factor(..., flipped=True)`` takes, so it saves its own flip."""
    p = np.asarray(perm)[::-1] if flip else np.asarray(perm)
    out = H.take(p, axis=0)
    for r0 in range(0, out.shape[0], 256):
        out[r0:r0 + 256] = out[r0:r0 + 256].take(p, axis=1)
    return out


def permute_in_place(H, perm, *, flip=False) -> np.ndarray:
    """``permuted(H, perm, flip=flip)`` in H's own memory (``_C.permute_symmetric``: rows
    along the permutation's cycles, then each row's columns; copies only, exact).  No
    second n^2 array: NumPy's take allocates one, and at 5632 wide its first touch (127 MB
    of fresh pages) took 0.3 s in oneshot, five times the copies.  H must be a float32
    C-contiguous writeable matrix (else it gets ``permuted``'s copy)."""
    p = np.asarray(perm)[::-1] if flip else np.asarray(perm)
    if H.dtype != np.float32 or not H.flags.c_contiguous or not H.flags.writeable:
        return permuted(H, perm, flip=flip)
    _C.permute_symmetric(H, np.ascontiguousarray(p, np.int64))
    return H


def damp_value(diag, step) -> np.float32:
    """What ``inverse_factor`` adds to every diagonal entry: step * mean(diag H), dead
    entries (H_jj = 0) counted as 1."""
    d = np.asarray(diag)
    mean = float(np.mean(np.where(d == 0, 1, d), dtype=np.float64))
    return np.float32(step * mean)


def inverse_factor(H, damp=0.01, *, name="H", overwrite=False, flipped=False):
    """(U, damp used, lam): U upper triangular with U^T U = (H + lam I)^-1, lam = damp *
    mean(diag H) the value added to the diagonal


    ``H`` is a checked float32 matrix; its zero diagonal entries (dead inputs) are set to 1
    first.  A Cholesky that fails is retried with 10x the damping, up to DAMP_RETRIES
    times, with a warning each time; then NonFiniteError.  ``overwrite=True`` lets it use
    H's memory (the caller's H is then garbage); a one-element list ``[H]`` also lets it
    free H as soon as the factor exists.  ``flipped=True``: H is given as J H J (rows and
    columns reversed, e.g. by ``permuted(..., flip=True)``); the result is the same.
    """
    if isinstance(H, list):  # [H]: the caller hands its only reference over
        H = H.pop()
    elif not overwrite:
        H = H.copy()
    d = np.diagonal(H).copy()
    dead = d == 0
    if dead.any():
        idx = np.flatnonzero(dead)
        H[idx, idx] = 1
        d[idx] = 1
    step = damp
    n = H.shape[0]
    if not flipped:
        _flip(H)
        d = d[::-1].copy()
    idx = np.arange(n)
    for attempt in range(DAMP_RETRIES + 1):
        H[idx, idx] = d + damp_value(d, step)
        # cholesky_lower changes H's lower triangle and its diagonal blocks only: keep
        # those blocks, and a failed attempt is undone from the upper triangle (no second
        # n^2 copy of H)
        saved = [H[k0:k0 + _CHOL_BLOCK, k0:k0 + _CHOL_BLOCK].copy()
                 for k0 in range(0, n, _CHOL_BLOCK)] if attempt < DAMP_RETRIES else None
        try:
            L = cholesky_lower(H)
            if not _all_finite(L):
                raise np.linalg.LinAlgError("not finite")
        except np.linalg.LinAlgError:
            L = None
            if saved is not None:
                _restore_lower(H, saved)
        if L is not None:  # (finite: checked above)
            del H
            U = _flip(tri_inv_lower(L))  # in L's memory
            del L
            if _all_finite(U) and (np.diagonal(U) > 0).all():
                return U, step, float(damp_value(d, step))
            H = None
        if H is None:
            raise NonFiniteError(f"{name}: its inverse is not finite (damp={step:g}); "
                                 "check the calibration data")
        if attempt < DAMP_RETRIES:
            nxt = step * 10 if step > 0 else 0.01
            warnings.warn(f"{name}: Cholesky failed with damp={step:g}; retrying with "
                          f"damp={nxt:g}", RuntimeWarning, stacklevel=3)
            step = nxt
    raise NonFiniteError(f"{name}: is not positive definite even with damp={step:g} "
                         f"(times mean(diag H) = {float(np.mean(d, dtype=np.float64)):.3g}); "
                         "check the calibration data")


class Factor(NamedTuple):
    """H's inverse factor, made once (``factor``) and shared by every weight whose input has
    that H (q/k/v_proj, gate/up_proj read one tensor): ``gptq_run`` and ``sparsegpt_run``
    take it in place of H.  ``U``: upper, U^T U = (H_p + lam I)^-1 with H_p = H in ``perm``
    order (act_order) or as is; ``step``: the damping that worked; ``lam``: what it added to
    the diagonal; ``dead``: the inputs that never fire (H_jj = 0), in the original order."""
    U: np.ndarray
    step: float
    lam: float
    dead: np.ndarray
    perm: Optional[np.ndarray]


def factor(H, cols, damp=0.01, *, act_order=False, name="H") -> Factor:
    """The ``Factor`` of ``H`` (checked as ``check_hessian``; a one-element list ``[H]``
    hands it over, to be consumed).  ``act_order``: the columns in order of decreasing
    H_jj (stable), GPTQ's act_order."""
    Hm = check_hessian(H, cols, name)
    dead = np.diagonal(Hm) == 0
    if dead.any():
        idx = np.flatnonzero(dead)
        Hm[idx, idx] = 1
    perm = None
    if act_order:
        perm = np.argsort(-np.diagonal(Hm), kind="stable")
        Hm = permute_in_place(Hm, perm, flip=True)  # and the flip inverse_factor would do
    box = [Hm]
    del Hm
    U, step, lam = inverse_factor(box, damp, name=name, flipped=act_order)  # frees H
    return Factor(U, step, lam, dead, perm)


def check_factor(f, cols, act_order=False, name="H") -> Factor:
    """A ``Factor`` given in place of H: its width and column order must fit."""
    if f.U.shape != (cols, cols):
        raise ShapeError(f"{name}: the factor is {f.U.shape[0]}x{f.U.shape[1]} but the weight "
                         f"has {cols} input columns")
    if (f.perm is not None) != bool(act_order):
        raise ArgumentError(f"{name}: the factor was made with act_order={f.perm is not None}"
                            f", the call asks for act_order={bool(act_order)}")
    return f


class Quantizer:
    """What the column loop needs to quantize: bits, scheme, group layout and the
    (rows, groups) scales / zero points (filled in when ``dynamic``)."""

    def __init__(self, rows, cols, bits, scheme, group_size, *, dynamic, scales=None,
                 zero_points=None, gidx=None):
        self.bits, self.scheme = bits, scheme
        self.group_size = cols if group_size is None else group_size
        ng = -(-cols // self.group_size) if gidx is None else int(gidx.max()) + 1
        self.dynamic = dynamic
        self.scales = np.zeros((rows, ng), np.float32) if scales is None else \
            np.ascontiguousarray(scales, np.float32).reshape(rows, -1)
        self.zero_points = np.zeros((rows, ng), np.int32) if zero_points is None else \
            np.ascontiguousarray(zero_points, np.int32).reshape(rows, -1)
        self.gidx = None if gidx is None else np.ascontiguousarray(gidx, np.int64)
        self.codes = np.empty((rows, cols), np.uint8)


def run(W, U, block_size, *, quantizer=None, sparsity=None, nm=None, keep=None,
        loss=None):
    """The OBS loop over ``W`` (float32, changed in place into the result) with factor U.

    Pruning: ``sparsity`` (each block prunes exactly round(sparsity * rows * count) of its
    entries, lowest w^2 / U_jj^2 first, ties to the lower flat index), ``nm=(n, m)``, or
    ``keep`` (a fixed bool mask, True = keep).  Returns the keep mask (or None).
    ``loss``: a float64 [rows] array that receives each row's sum of err^2 -- the output
    error energy tr(E H_d E^T) of that row exactly (E = Err U), H_d the damped Hessian.
    """
    rows, cols = W.shape
    pmode = 0 if (sparsity is None and nm is None and keep is None) else (2 if nm else 1)
    n, m = nm if nm else (0, 0)
    keep_out = np.ones((rows, cols), np.bool_) if pmode else None
    q = quantizer
    sb = _super_block(block_size, q)
    two = sb > block_size and cols > block_size
    # columns per trailing-update GEMM: bounds the temporary; with two levels the
    # super-block's errors take their share, so the two stay at rows x 1024 as before
    panel = 1024 - sb if two else 1024
    buf = np.empty(rows * min(panel, max(cols - min(block_size, cols), 1)), np.float32)
    errs = np.empty((rows, min(sb, cols)), np.float32) if two else None
    for s1 in range(0, cols, sb):
        s2 = min(s1 + sb, cols)
        for i1 in range(s1, s2, block_size):
            i2 = min(i1 + block_size, s2)
            err = _block(W, U, i1, i2, q, pmode, keep, sparsity, n, m, keep_out, loss)
            if errs is None:  # one level: the block's update reaches every later column
                _trailing(W, err, U[i1:i2], i2, cols, buf, panel)
            else:             # near columns now, the rest once per super-block
                errs[:, i1 - s1:i2 - s1] = err
                _trailing(W, err, U[i1:i2], i2, s2, buf, panel)
        if errs is not None:
            _trailing(W, errs[:, :s2 - s1], U[s1:s2], s2, cols, buf, panel)
    return keep_out


_SUPER_BLOCK = 512  # columns whose errors reach the far columns in one GEMM


def _super_block(block_size, q):
    """Columns per outer block of the two-level lazy update: the errors of a super-block's
    blocks update its own later columns block by block, and every column past it in one
    GEMM with K = the super-block's width (a quarter of the passes over W[:, far]; on 2
    cores the per-block GEMM is bound by that traffic).  The far columns then hold
    W - Err_S U_S instead of W - Err_1 U_1 - Err_2 U_2 ...: float rounding only.  A
    dynamic group reads W past its block as it stands (the published code does), so a
    group must not reach past its super-block: else one level."""
    sb = block_size * max(1, _SUPER_BLOCK // block_size)
    if q is not None and q.dynamic and sb % q.group_size and q.group_size % sb:
        return block_size
    return sb


def _block(W, U, i1, i2, q, pmode, keep, sparsity, n, m, keep_out, loss):
    """The per-column loop of columns i1:i2 (csrc/calib.c); returns the block's errors."""
    from ..prune import l1_unstructured
    rows, cnt = W.shape[0], i2 - i1
    U1 = np.ascontiguousarray(U[i1:i2, i1:i2])
    err = np.empty((rows, cnt), np.float32)
    pm = None
    if pmode == 1:
        if keep is not None:
            pm = np.ascontiguousarray(~keep[:, i1:i2], np.uint8)
        else:
            d = np.diagonal(U1)
            scores = W[:, i1:i2] ** 2 / (d * d)[None, :]
            # one thread: a block's selection is small, and a thread team woken next to
            # the trailing GEMM's still-spinning BLAS pool waits a scheduler slice
            # (measured on 2 cores: 8 ms a block for 2048 rows, 0.5 ms on one)
            with threads(1):
                pm = (~l1_unstructured(scores, float(sparsity))).astype(np.uint8)
    elif pmode == 2:
        pm = np.zeros((rows, cnt), np.uint8)
    _C.obs_block(W, U1, err, i1, cnt,
                 1 if q else 0, q.bits if q else 0,
                 int(q.scheme == "symmetric") if q else 0, int(q.dynamic) if q else 0,
                 q.group_size if q else 1, q.gidx if q else None,
                 q.scales if q else None, q.zero_points if q else None,
                 q.codes if q else None, pmode, pm, n, m)
    if pmode:
        keep_out[:, i1:i2] = pm == 0
    if loss is not None:
        loss += row_sq(err)
    return err


def _trailing(W, err, Urows, c_start, c_end, buf, panel):
    """W[:, c_start:c_end] -= err @ Urows[:, c_start:c_end], ``panel`` columns at a time
    (the product in ``buf``)."""
    rows = W.shape[0]
    for c0 in range(c_start, c_end, panel):
        c1 = min(c0 + panel, c_end)
        t = buf[:rows * (c1 - c0)].reshape(rows, c1 - c0)
        np.matmul(err, Urows[:, c0:c1], out=t)
        np.subtract(W[:, c0:c1], t, out=W[:, c0:c1])


def row_sq(a, minus=None, dead=None) -> np.ndarray:
    """Per row, the float64 sum of squares of ``a`` (of ``a - minus`` when given, columns
    ``dead`` left out), 256 rows at a time: no float64 or full-size difference array."""
    out = np.empty(a.shape[0], np.float64)
    for r0 in range(0, a.shape[0], 256):
        e = a[r0:r0 + 256] if minus is None else a[r0:r0 + 256] - minus[r0:r0 + 256]
        if dead is not None and dead.any():
            e = np.where(dead, np.float32(0), e)
        out[r0:r0 + 256] = np.sum(np.square(e), axis=1, dtype=np.float64)
    return out


def damped_error(loss, lam, E, minus=None, dead=None) -> np.ndarray:
    """Per row, tr(E H E^T) from a run's ``loss`` (tr(E H_d E^T), H_d = H + lam I, exact for
    E = Err U): loss - lam ||E_r||^2 -- the output error without a [rows, cols] x H product.
    E: the final weight minus the (dead-column-zeroed) input weight; or give the final
    weight as E, the input weight as ``minus`` and the dead columns as ``dead``."""
    return np.maximum(loss - lam * row_sq(np.asarray(E), minus, dead), 0.0)


def output_error(W, Wq, H) -> float:
    """Relative output error on the calibration inputs, from H alone:
    ||X (Wq - W)^T||^2 / ||X W^T||^2 = tr(E H E^T) / tr(W H W^T)."""
    W = np.asarray(W, np.float32)
    E = np.asarray(Wq, np.float32) - W
    num = float(np.sum((E @ H) * E, dtype=np.float64))
    den = float(np.sum((W @ H) * W, dtype=np.float64))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))
