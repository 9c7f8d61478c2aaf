"""Low-rank factorization of Linear weights (truncated SVD): W [out, in] ~= A @ B with
A [out, r] and B [r, in], so one Linear becomes two smaller ones.

- The rank: ``rank`` (an int, or a float fraction of min(out, in)), ``energy`` (the smallest
  rank keeping that fraction of sum(sigma^2)) or ``budget`` (the fraction of the layer's
  parameters the two factors may have).
- ``algorithm="randomized"`` (Halko, Martinsson & Tropp 2011: a Gaussian sketch with
  ``oversample`` extra columns and ``power_iters`` subspace iterations, re-orthonormalized
  each time) for large matrices; ``"full"`` is ``numpy.linalg.svd``; ``"auto"`` picks
  randomized when the rank is known up front and at most a quarter of min(out, in) >= 512.
- Activation-aware: with ``hessian`` (X^T X / n of the layer's inputs, [in, in]) the SVD is
  taken of W L (H = L L^T, damped) and B = V^T L^-1, which minimizes ||(W - AB) X^T||; with
  ``activations`` (a per-input scale such as sqrt(mean x^2), or an ActivationStats) the
  same with a diagonal L (ASVD).

All dense linear algebra is NumPy's LAPACK/BLAS; results for float32 input are computed in
float32 (float64 for float64 input) and depend on the BLAS build to rounding.

>>> import numpy as np
>>> from litecomp import lowrank
>>> w = np.outer(np.arange(1.0, 5.0), np.ones(3)) + 0.01 * np.eye(4, 3)
>>> f = lowrank.svd(w, 1)
>>> f.a.shape, f.b.shape, f.rank, round(f.error, 4)
((4, 1), (1, 3), 1, 0.0015)
"""

import math
from dataclasses import dataclass

import numpy as np

from . import dtypes as _dt
from ._check import as_array, check_int
from .errors import ArgumentError, DTypeError, ShapeError

__all__ = ["Factors", "svd", "randomized_svd", "choose_rank", "lowrank_state_dict",
           "ALGORITHMS"]

ALGORITHMS = ("auto", "full", "randomized")


@dataclass
class Factors:
    """W ~= a @ b.  ``error``: the relative Frobenius error ||W - ab|| / ||W|| (in the
    activation-weighted norm when the factorization was activation-aware)."""
    a: np.ndarray
    b: np.ndarray
    rank: int
    error: float
    singular_values: np.ndarray


def _work_dtype(w):
    return np.float64 if w.dtype == np.float64 else np.float32


def _matrix(w, name="w"):
    w = as_array(w, name)
    if _dt.name_of(w.dtype) not in _dt.WEIGHT_DTYPES:
        raise DTypeError(f"{name}: dtype {w.dtype} is not a float weight dtype")
    if w.ndim != 2 or 0 in w.shape:
        raise ShapeError(f"{name}: expected a non-empty 2-D [out, in] matrix, got shape "
                         f"{w.shape}")
    x = w.astype(_work_dtype(w), copy=False)
    if not np.isfinite(x).all():
        from .errors import NonFiniteError
        raise NonFiniteError(f"{name}: contains NaN or inf")
    return w, x


def choose_rank(shape, *, rank=None, energy=None, budget=None, singular_values=None) -> int:
    """The rank that exactly one of ``rank`` / ``energy`` / ``budget`` asks for."""
    given = [k for k, v in (("rank", rank), ("energy", energy), ("budget", budget))
             if v is not None]
    if len(given) != 1:
        raise ArgumentError(f"rank: give exactly one of rank, energy or budget (got "
                            f"{', '.join(given) or 'none'})")
    m, n = shape
    full = min(m, n)
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, (int, float, np.integer, np.floating)):
            raise ArgumentError(f"rank: expected an int or a fraction, got {rank!r}")
        if isinstance(rank, (float, np.floating)):
            if not 0.0 < rank <= 1.0:
                raise ArgumentError(f"rank: a fraction must be in (0, 1], got {rank}")
            return max(1, int(round(rank * full)))
        return check_int(int(rank), "rank", 1, full)
    if budget is not None:
        if not isinstance(budget, (int, float)) or not 0.0 < budget <= 1.0:
            raise ArgumentError(f"budget: expected a fraction in (0, 1], got {budget!r}")
        return max(1, min(full, int(math.floor(budget * m * n / (m + n)))))
    if not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0:
        raise ArgumentError(f"energy: expected a fraction in (0, 1], got {energy!r}")
    if singular_values is None:
        raise ArgumentError("energy: needs the singular values (a full SVD)")
    e = np.cumsum(np.asarray(singular_values, np.float64) ** 2)
    if e[-1] == 0:
        return 1
    return int(min(full, np.searchsorted(e / e[-1], energy - 1e-12) + 1))


def _orthonormal(y):
    """An orthonormal basis of y's columns by Cholesky QR, twice (CholeskyQR2): two GEMMs
    and a small Cholesky each time, where Householder QR spends most of its time in
    level-2 BLAS."""
    for _ in range(2):
        g = (y.T @ y).astype(np.float64)
        g += (1e-12 * np.trace(g) / len(g) + 1e-300) * np.eye(len(g))
        try:
            L = np.linalg.cholesky(g)
        except np.linalg.LinAlgError:  # numerically rank-deficient sketch
            return np.linalg.qr(y)[0]
        y = y @ np.linalg.inv(L).T.astype(y.dtype)
    return y


def randomized_svd(w, rank, *, oversample=16, power_iters=4, seed=0):
    """(U [m, r], S [r], Vt [r, n]) of a rank-``rank`` approximation by randomized subspace
    iteration; the sketch is litecomp.random.normal(seed), so results are reproducible."""
    from . import random as _random
    _, x = _matrix(w)
    m, n = x.shape
    rank = check_int(rank, "rank", 1, min(m, n))
    oversample = check_int(oversample, "oversample", 0)
    power_iters = check_int(power_iters, "power_iters", 0)
    k = min(min(m, n), rank + oversample)
    omega = _random.normal((n, k), seed=seed).astype(x.dtype, copy=False)
    q = _orthonormal(x @ omega)
    for _ in range(power_iters):
        q = _orthonormal(x @ _orthonormal(x.T @ q))
    b = q.T @ x                                  # [k, n]
    # SVD of the small b through the eigenvectors of b b^T (k x k, in float64)
    evals, ub = np.linalg.eigh((b @ b.T).astype(np.float64))
    order = np.argsort(evals)[::-1][:rank]
    s = np.sqrt(np.maximum(evals[order], 0.0))
    ub = ub[:, order]
    safe = np.where(s > 0, s, 1.0)
    vt = ((ub.T.astype(x.dtype) @ b) / safe[:, None].astype(x.dtype))
    return (q @ ub.astype(x.dtype)), s.astype(x.dtype), vt


def _whitener(hessian, activations, n, damp):
    """(L, solve) with H = L L^T (or L diagonal) for activation-aware SVD; None if neither."""
    if hessian is not None and activations is not None:
        raise ArgumentError("hessian: give hessian or activations, not both")
    if hessian is not None:
        h = np.asarray(hessian, np.float64)
        if h.shape != (n, n):
            raise ShapeError(f"hessian: expected [{n}, {n}] (the layer's inputs), got {h.shape}")
        if not np.isfinite(h).all():
            raise ArgumentError("hessian: contains NaN or inf")
        d = float(np.mean(np.diag(h)))
        h = h + (damp * d if d > 0 else 1e-6) * np.eye(n)
        try:
            L = np.linalg.cholesky(h)
        except np.linalg.LinAlgError:
            raise ArgumentError("hessian: is not positive definite even after damping "
                                f"{damp} * mean(diag); raise damp") from None
        return ("full", L)
    if activations is not None:
        from .prune.scores import ActivationStats
        s = activations.norm if isinstance(activations, ActivationStats) else activations
        s = np.asarray(s, np.float64)
        if s.shape != (n,):
            raise ShapeError(f"activations: expected {n} per-input values, got shape {s.shape}")
        if not np.isfinite(s).all() or (s < 0).any():
            raise ArgumentError("activations: expected finite non-negative scales")
        mean = float(s.mean())
        return ("diag", s + damp * (mean if mean > 0 else 1.0))
    return None


def svd(w, rank=None, *, energy=None, budget=None, algorithm="auto", oversample=16,
        power_iters=4, seed=0, hessian=None, activations=None, damp=0.01) -> Factors:
    """Truncated SVD of a [out, in] weight: ``Factors(a, b, rank, error)`` with w ~= a @ b,
    ``a = U_r S_r``, ``b = V_r^T`` (see the module docstring for the options)."""
    w0, x = _matrix(w)
    m, n = x.shape
    if algorithm not in ALGORITHMS:
        raise ArgumentError(f"algorithm: {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    white = _whitener(hessian, activations, n, damp)
    y = x
    if white is not None:
        kind, L = white
        y = (x @ L.astype(x.dtype)) if kind == "full" else x * L.astype(x.dtype)
    r_known = None if energy is not None else choose_rank((m, n), rank=rank, budget=budget)
    algo = algorithm
    if algo == "auto":
        algo = "randomized" if (r_known is not None and min(m, n) >= 512
                                and r_known <= min(m, n) // 4) else "full"
    if algo == "randomized":
        if r_known is None:
            raise ArgumentError("algorithm: 'randomized' needs the rank up front (rank or "
                                "budget), not energy")
        u, s, vt = randomized_svd(y, r_known, oversample=oversample, power_iters=power_iters,
                                  seed=seed)
        r = r_known
    else:
        u, s, vt = np.linalg.svd(y, full_matrices=False)
        r = r_known if r_known is not None else choose_rank((m, n), energy=energy,
                                                            singular_values=s)
        u, s, vt = u[:, :r], s[:r], vt[:r]
    a = u * s
    b = vt
    if white is not None:
        kind, L = white
        b = np.linalg.solve(L.T, vt.T.astype(np.float64)).T if kind == "full" else \
            vt / L
        b = b.astype(x.dtype)
    total = float(np.linalg.norm(y.astype(np.float64)))
    resid = float(np.linalg.norm((y - (a @ vt)).astype(np.float64)))
    err = resid / total if total else 0.0
    out_dt = w0.dtype
    return Factors(a.astype(out_dt), b.astype(out_dt), int(r), err, s.astype(np.float64))


# ------------------------------------------------------------------ state-dict pass
@dataclass
class LowRankRow:
    name: str
    shape: tuple
    rank: int
    params_before: int
    params_after: int
    error: float
    note: str = ""


def lowrank_state_dict(state_dict, *, targets=None, ignore=None, rank=None, energy=None,
                       budget=None, algorithm="auto", oversample=16, power_iters=4, seed=0,
                       hessians=None, activations=None, damp=0.01):
    """Factorize the 2-D ``*.weight`` tensors ``targets`` / ``ignore`` select (default all):
    ``X.weight`` becomes ``X.first.weight`` [r, in] and ``X.second.weight`` [out, r], and
    ``X.bias`` becomes ``X.second.bias`` -- ``litecomp.torch.LowRankLinear``'s names (load
    with ``litecomp.torch.apply_lowrank``).  A weight whose factors would not be smaller
    stays dense.  hessians / activations: {module or tensor name: statistic} for
    activation-aware SVD.  Returns ``(state dict, [LowRankRow])``; the input is not changed.
    """
    from .select import select
    if not isinstance(state_dict, dict):
        raise ArgumentError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
    cands = [k for k, v in state_dict.items() if (k.endswith(".weight") or k == "weight") and
             isinstance(v, np.ndarray) and v.ndim == 2 and
             _dt.name_of(v.dtype) in _dt.WEIGHT_DTYPES]
    names = select(cands, targets, ignore, what="2-D float weights")
    if not names:
        raise ArgumentError("targets: select no 2-D weight to factorize")
    hessians, activations = hessians or {}, activations or {}

    def stat(d, key):
        mod = key[:-len(".weight")] if key.endswith(".weight") else key
        return d.get(mod, d.get(key))

    done, rows = {}, []
    for k in names:
        w = state_dict[k]
        m, n = w.shape
        f = svd(w, rank, energy=energy, budget=budget, algorithm=algorithm,
                oversample=oversample, power_iters=power_iters, seed=seed,
                hessian=stat(hessians, k), activations=stat(activations, k), damp=damp)
        after = f.rank * (m + n)
        if after >= m * n:
            rows.append(LowRankRow(k, (m, n), f.rank, m * n, m * n, 0.0,
                                   f"dense (rank {f.rank} saves nothing)"))
            continue
        done[k] = f
        rows.append(LowRankRow(k, (m, n), f.rank, m * n, after, f.error))
    out = {}
    for key, v in state_dict.items():
        base = key[:-len("weight")]
        if key in done:
            out[base + "first.weight"] = done[key].b
            out[base + "second.weight"] = done[key].a
        elif key.endswith("bias") and key[:-len("bias")] + "weight" in done:
            out[key[:-len("bias")] + "second.bias"] = v
        else:
            out[key] = v
    return out, rows
