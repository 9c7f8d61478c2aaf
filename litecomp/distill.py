"""Distillation losses with their gradients, fused in C (csrc/distill.c).

Every function takes student and teacher arrays of one shape ``[..., V]`` (the last axis is
the vocabulary / class / feature axis; every leading index is one row, so ``[B, S, V]`` is
``B*S`` rows) and returns ``(loss, grad)``: the loss (a float, or an array of row losses for
``reduction="none"``) and its gradient with respect to ``student`` (float32, or float64 for
float64 input; ``None`` when ``grad=False``).  With q = softmax(student / T) and
p = softmax(teacher / T):

==========================  ==================================================  =========
function                    row loss                                            T^2 scale
==========================  ==================================================  =========
``kl_div``                  KL(p || q)   (Hinton; torch ``F.kl_div`` * T^2)     yes
``soft_cross_entropy``      H(p, q) = -sum p log q                              yes
``reverse_kl``              KL(q || p)                                          no
``jsd``                     beta KL(p||M) + (1-beta) KL(q||M), M = beta p +     no
                            (1-beta) q; beta=0 is ``kl_div``, beta=1 ``reverse_kl``
``skew_kl``                 KL(p || lam p + (1-lam) q)  (DistiLLM, lam=0.1)     no
``skew_reverse_kl``         KL(q || lam q + (1-lam) p)                          no
``tvd``                     0.5 sum |p - q|                                     no
``mse``                     mean over the last axis of (student - teacher)^2    (no T)
``cosine``                  1 - cos(student, teacher)  (hidden states)          (no T)
==========================  ==================================================  =========

``labels`` with ``alpha > 0`` adds the hard-label term: row loss =
``alpha * CE(labels, softmax(student)) + (1 - alpha) * divergence``.  Rows whose label is
``ignore_index`` (default -100, as torch) are skipped: loss 0, gradient 0, and not counted.

Reductions, side by side (``n_valid`` = rows not ignored, ``shape[0]`` = the first axis):

- ``"mean"`` (default): sum of row losses / n_valid -- the true per-row divergence; equal to
  torch's ``"batchmean"`` for 2-D input.  0.0 when every row is ignored.
- ``"batchmean"``: sum / shape[0], exactly torch's ``F.kl_div(..., reduction="batchmean")``
  (for [B, S, V] that divides by B, not B*S).
- ``"sum"``: the sum of row losses.
- ``"none"``: the row losses, shape ``student.shape[:-1]``; the gradient is that of their sum.

``-inf`` logits (masked vocabulary) are fine and never make NaN; a row with NaN or +inf
logits, or only -inf ones, raises NonFiniteError.  Results are identical for any thread count
and SIMD level.
"""


from typing import NamedTuple

import numpy as np

from . import _C
from ._check import (
    as_array, as_kernel_input, check_choice, check_float, check_int, renamed,
)
from .errors import ArgumentError, ShapeError

#: The losses the row kernels compute, {name: code}: csrc/distill.c's table (DISTILL_KINDS).
KINDS = _C.distill_kinds
_ALIASES = {"kl_div": "kl", "forward_kl": "kl", "ce": "soft_cross_entropy",
            "soft_ce": "soft_cross_entropy", "rkl": "reverse_kl", "skl": "skew_kl",
            "srkl": "skew_reverse_kl", "cos": "cosine"}
REDUCTIONS = ("mean", "sum", "none", "batchmean")
_T2_KINDS = ("kl", "soft_cross_entropy")
_SKEW_KINDS = ("skew_kl", "skew_reverse_kl")
_DTYPES = ("float32", "float64", "float16", "bfloat16")


def _rows(name, a):
    if a.ndim == 0:
        raise ShapeError(f"{name}: expected an array with a last (vocabulary) axis, got a scalar")
    return a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a


def _prepare(student, teacher):
    s = as_array(student, "student")
    t = as_array(teacher, "teacher")
    sk = as_kernel_input(s, "student", dtypes=_DTYPES)
    tk = as_kernel_input(t, "teacher", dtypes=_DTYPES)
    if sk.array.shape != tk.array.shape:
        raise ShapeError(f"teacher: shape {tk.array.shape} does not match student's "
                         f"{sk.array.shape}")
    if sk.array.ndim == 0:
        raise ShapeError("student: expected an array with a last (vocabulary) axis, "
                         "got a scalar")
    # float64 takes the double-precision path, which needs both sides in float64
    if (sk.array.dtype == np.float64) != (tk.array.dtype == np.float64):
        if sk.array.dtype != np.float64:
            sk = as_kernel_input(sk.array.astype(np.float64), "student")
        else:
            tk = as_kernel_input(tk.array.astype(np.float64), "teacher")
    return sk, tk


def _labels(labels, lead_shape, ignore_index):
    if labels is None:
        return None
    lab = as_array(labels, "labels")
    if lab.dtype.kind not in "iu":
        raise ArgumentError(f"labels: expected integer class ids, got dtype {lab.dtype}")
    if lab.shape != lead_shape:
        raise ShapeError(f"labels: shape {lab.shape} does not match the student's rows "
                         f"{lead_shape}")
    return np.ascontiguousarray(lab.reshape(-1), dtype=np.int64)


def _reduce_setup(reduction, n_valid, first_dim):
    """(weight per row for the gradient, divisor for the loss)."""
    if reduction == "mean":
        d = n_valid
    elif reduction == "batchmean":
        d = first_dim
    else:
        d = 1
    return (1.0 / d if d else 0.0), d


def _grad_buffer(out, shape, f64):
    dt = np.float64 if f64 else np.float32
    if out is None:
        return np.empty(shape, dt)
    if not (isinstance(out, np.ndarray) and out.dtype == dt and out.shape == shape
            and out.flags.c_contiguous and out.flags.writeable):
        raise ArgumentError(f"out: expected a writeable C-contiguous {np.dtype(dt).name} array "
                            f"of shape {shape}")
    return out


class _Settings(NamedTuple):
    kind: str           # the kernel's kind (jsd/skew at their limits become kl/reverse_kl)
    temperature: float
    beta: float         # JSD's beta or the skew losses' lambda, as the kernel takes it
    alpha: float
    tfac: float         # T^2 for kl and soft_cross_entropy, else 1


def _settings(kind, temperature, alpha, beta, lam, labels) -> _Settings:
    """Check the loss options shared by :func:`loss` and :func:`fused_linear`."""
    name = _ALIASES.get(kind, kind)
    check_choice(name, "kind", tuple(KINDS))
    temperature = check_float(temperature, "temperature", lo=0.0)
    if temperature == 0.0:
        raise ArgumentError("temperature: must be positive, got 0.0")
    alpha = check_float(alpha, "alpha", 0.0, 1.0)
    if name in ("mse", "cosine"):
        if temperature != 1.0:
            raise ArgumentError(f"temperature: {name} compares raw values; leave it at 1.0")
        if alpha:
            raise ArgumentError(f"alpha: the hard-label term needs a distribution loss, "
                                f"not {name}")
    if alpha and labels is None:
        raise ArgumentError("labels: alpha > 0 needs hard labels")
    tfac = temperature * temperature if name in _T2_KINDS else 1.0
    b = 0.0
    if lam is not None and name not in _SKEW_KINDS:
        raise ArgumentError(f"lam: only skew_kl and skew_reverse_kl take lam, not {name}")
    if name == "jsd":
        b = check_float(0.5 if beta is None else beta, "beta", 0.0, 1.0)
        if b == 0.0:
            name = "kl"
        elif b == 1.0:
            name = "reverse_kl"
    elif name in _SKEW_KINDS:
        lam = renamed(lam, beta, "lam", "beta")
        b = check_float(0.1 if lam is None else lam, "lam", 0.0, 1.0)
        if b == 0.0:
            name = "kl" if name == "skew_kl" else "reverse_kl"
    elif beta is not None:
        raise ArgumentError(f"beta: only jsd takes beta (the skew losses take lam), "
                            f"not {name}")
    return _Settings(name, temperature, b, alpha, tfac)


def _row_kernel(cfg, s2, scode, t2, tcode, lab, ignore, weight, grad, row_loss):
    """One call of the row kernel over [n, V] rows: fills row_loss (and grad, which may be
    ``s2`` itself: every element is read before it is written); returns the loss sum."""
    return _C.distill_rows(KINDS[cfg.kind], s2, scode, t2, tcode, lab, ignore,
                           cfg.temperature, cfg.beta, cfg.alpha, cfg.tfac, weight, grad,
                           row_loss)


def loss(kind, student, teacher, *, temperature=1.0, reduction="mean", ignore_index=None,
         labels=None, alpha=0.0, beta=None, lam=None, grad=True, out=None):
    """The loss ``kind`` (see the module table) and its gradient: ``(loss, grad)``.

    beta: JSD's beta (default 0.5).  lam: the skew losses' lambda (default 0.1); ``beta=``
    still sets it, with a DeprecationWarning.
    out: an optional float32 (float64 for float64 input) array of the student's shape that
    receives the gradient (it is also returned; it may be ``student`` itself, a float32
    (float64) C-contiguous array, which is then overwritten with its gradient).
    """
    cfg = _settings(kind, temperature, alpha, beta, lam, labels)
    check_choice(reduction, "reduction", REDUCTIONS)
    ignore = -100 if ignore_index is None else check_int(ignore_index, "ignore_index")

    sk, tk = _prepare(student, teacher)
    shape = sk.array.shape
    lab = _labels(labels, shape[:-1], ignore)
    s2, t2 = _rows("student", sk.raw), _rows("teacher", tk.raw)
    n = s2.shape[0]
    n_valid = n if lab is None else int(np.count_nonzero(lab != ignore))
    weight, div = _reduce_setup(reduction, n_valid, shape[0] if len(shape) > 1 else 1)
    f64 = sk.array.dtype == np.float64
    g = _grad_buffer(out, shape, f64) if grad else None
    row_loss = np.empty(n, np.float64)
    total = _row_kernel(cfg, s2, sk.code, t2, tk.code, lab, ignore, weight,
                        None if g is None else g.reshape(n, shape[-1]), row_loss)
    if reduction == "none":
        value = row_loss.reshape(shape[:-1])
    else:
        value = total / div if div else 0.0
    return value, g


def _same_shape(kind):
    def fn(student, teacher, *, temperature=1.0, reduction="mean", ignore_index=None,
           labels=None, alpha=0.0, grad=True, out=None, **kw):
        return loss(kind, student, teacher, temperature=temperature, reduction=reduction,
                    ignore_index=ignore_index, labels=labels, alpha=alpha, grad=grad,
                    out=out, **kw)
    fn.__name__ = fn.__qualname__ = kind if kind != "kl" else "kl_div"
    return fn


kl_div = _same_shape("kl")
kl_div.__doc__ = """T^2 KL(p || q): Hinton's distillation loss; gradient T (q - p) (per row,
before the reduction).  With labels and alpha: alpha CE(labels) + (1 - alpha) T^2 KL."""
soft_cross_entropy = _same_shape("soft_cross_entropy")
soft_cross_entropy.__doc__ = "T^2 H(p, q) = -T^2 sum p log q (soft-target cross entropy)."
reverse_kl = _same_shape("reverse_kl")
reverse_kl.__doc__ = "KL(q || p), mode seeking; gradient (1/T) q (log q - log p - KL)."
tvd = _same_shape("tvd")
tvd.__doc__ = "Total variation distance 0.5 sum |p - q|."
mse = _same_shape("mse")
mse.__doc__ = "Mean squared error over the last axis (logits or hidden states), no temperature."
cosine = _same_shape("cosine")
cosine.__doc__ = "1 - cosine similarity over the last axis (hidden states), torch's eps=1e-8."


def jsd(student, teacher, *, beta=0.5, **kw):
    """Generalized Jensen-Shannon divergence beta KL(p||M) + (1-beta) KL(q||M),
    M = beta p + (1-beta) q; beta=0 is forward KL(p||q), beta=1 reverse KL(q||p) (TRL)."""
    return loss("jsd", student, teacher, beta=beta, **kw)


def skew_kl(student, teacher, *, lam=0.1, **kw):
    """Skew KL(p || lam p + (1-lam) q) (DistiLLM); lam=0 is forward KL."""
    return loss("skew_kl", student, teacher, lam=lam, **kw)


def skew_reverse_kl(student, teacher, *, lam=0.1, **kw):
    """Skew reverse KL(q || lam q + (1-lam) p) (DistiLLM); lam=0 is reverse KL."""
    return loss("skew_reverse_kl", student, teacher, lam=lam, **kw)


def attention_kl(student_scores, teacher_scores, *, reduction="mean", grad=True, out=None):
    """KL(teacher attention || student attention) over the last axis of attention *scores*
    (pre-softmax, ``[B, H, S, S]``; masked positions -inf), MiniLM style: every (b, h, query)
    is one row.  For attention probabilities pass their log (zeros become -inf).  The
    gradient is with respect to the student scores."""
    return loss("kl", student_scores, teacher_scores, reduction=reduction, grad=grad, out=out)


# ------------------------------------------------------------------ sparse (top-k) teachers
def topk(logits, k, *, temperature=1.0):
    """The k largest logits of each row and their log-probabilities under the FULL softmax
    of logits / temperature: ``(ids int64 [..., k], logprobs float32 [..., k])``, best
    first (ties: the smaller id first).  ``1 - exp(logprobs).sum(-1)`` is the mass outside
    the cache, which the ``"tail"`` mode of :func:`kl_div_topk` keeps."""
    x = as_kernel_input(logits, "logits", dtypes=_DTYPES)
    if x.array.ndim == 0:
        raise ShapeError("logits: expected an array with a last (vocabulary) axis")
    v = x.array.shape[-1]
    k = check_int(k, "k", 0, v)
    temperature = check_float(temperature, "temperature", lo=0.0)
    if temperature == 0.0:
        raise ArgumentError("temperature: must be positive, got 0.0")
    rows = _rows("logits", x.raw)
    ids = np.empty((rows.shape[0], k), np.int64)
    lps = np.empty((rows.shape[0], k), np.float32)
    _C.distill_topk(rows, x.code, temperature, ids, lps)
    lead = x.array.shape[:-1]
    return ids.reshape(lead + (k,)), lps.reshape(lead + (k,))


def kl_div_topk(student, ids, logprobs, *, mode="renormalize", temperature=1.0,
                reduction="mean", ignore_index=None, labels=None, grad=True, out=None):
    """T^2 KL(p || q) against a sparse teacher cache from :func:`topk` (use the same
    temperature for both).

    mode="renormalize" (REFERENCE's "zero"): p is the cached probabilities renormalised to
    sum to 1 within the k ids, 0 elsewhere.  mode="tail": the teacher's missing mass
    1 - sum p is one extra bucket compared with the student's mass outside the k ids.
    Negative ids mark unused slots; the other ids of a row must be distinct.
    """
    mode = {"zero": "renormalize", "renorm": "renormalize"}.get(mode, mode)
    check_choice(mode, "mode", tuple(_C.topk_modes))
    check_choice(reduction, "reduction", REDUCTIONS)
    temperature = check_float(temperature, "temperature", lo=0.0)
    if temperature == 0.0:
        raise ArgumentError("temperature: must be positive, got 0.0")
    ignore = -100 if ignore_index is None else check_int(ignore_index, "ignore_index")
    sk = as_kernel_input(student, "student", dtypes=_DTYPES)
    shape = sk.array.shape
    if sk.array.ndim == 0:
        raise ShapeError("student: expected an array with a last (vocabulary) axis")
    idx = as_array(ids, "ids")
    if idx.dtype.kind not in "iu":
        raise ArgumentError(f"ids: expected integer token ids, got dtype {idx.dtype}")
    lp = as_array(logprobs, "logprobs")
    if idx.shape != lp.shape or idx.shape[:-1] != shape[:-1]:
        raise ShapeError(f"ids/logprobs: shapes {idx.shape} and {lp.shape} must both be "
                         f"{shape[:-1]} + (k,)")
    k = idx.shape[-1]
    idx = np.ascontiguousarray(idx.reshape(-1, k), dtype=np.int64)
    lp = np.ascontiguousarray(lp.reshape(-1, k), dtype=np.float32)
    if np.any(lp > 0) or np.isnan(lp).any():
        raise ArgumentError("logprobs: log-probabilities must be <= 0 and not NaN")
    if k > 1:
        srt = np.sort(idx, axis=1)
        if np.any((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)):
            raise ArgumentError("ids: a row lists the same token id twice")
    lab = _labels(labels, shape[:-1], ignore)
    s2 = _rows("student", sk.raw)
    n = s2.shape[0]
    n_valid = n if lab is None else int(np.count_nonzero(lab != ignore))
    weight, div = _reduce_setup(reduction, n_valid, shape[0] if len(shape) > 1 else 1)
    g = _grad_buffer(out, shape, sk.array.dtype == np.float64) if grad else None
    row_loss = np.empty(n, np.float64)
    total = _C.distill_sparse(s2, sk.code, idx, lp, _C.topk_modes[mode], lab, ignore,
                              temperature, temperature * temperature, weight,
                              None if g is None else g.reshape(n, shape[-1]), row_loss)
    value = row_loss.reshape(shape[:-1]) if reduction == "none" else (total / div if div else 0.0)
    return value, g


__all__ = ["loss", "kl_div", "soft_cross_entropy", "reverse_kl", "jsd", "skew_kl",
           "skew_reverse_kl", "tvd", "mse", "cosine", "attention_kl", "topk", "kl_div_topk",
           "fused_linear", "FusedLinearResult", "default_chunk", "KINDS", "REDUCTIONS"]

# the lm_head matmul fused with these losses (it uses the helpers above)
from ._distill_linear import FusedLinearResult, default_chunk, fused_linear  # noqa: E402
