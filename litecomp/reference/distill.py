"""NumPy float64 twins of csrc/distill.c: every loss per row, and its gradient with respect
to the student from the closed forms (softmax chain rule dL/da = q (g - sum q g) for
g = dL/dq).  Slow and obvious on purpose; the tests compare the C kernels with these."""

import numpy as np

_T2 = ("kl", "soft_cross_entropy")


def log_softmax(x):
    """Row-wise log-softmax in float64; -inf entries stay -inf."""
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        lse = m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))
        return x - lse


def _xlog(p, d):
    """p * d with 0 wherever p == 0 (never 0 * inf)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(p > 0, p * np.where(p > 0, d, 0.0), 0.0)


def _chain(q, g):
    """dL/da from g = dL/dq for q = softmax(a), with q = 0 entries 0."""
    g = np.where(q > 0, g, 0.0)
    c = np.sum(q * g, axis=-1, keepdims=True)
    return q * (g - c)


def row_losses(kind, s, t, *, temperature=1.0, beta=None):
    """(row loss [N], d row loss / d s [N, V]) of the divergence alone, before T^2 scaling."""
    s = np.asarray(s, np.float64)
    t = np.asarray(t, np.float64)
    T = float(temperature)
    if kind == "mse":
        d = s - t
        return np.mean(d * d, axis=-1), 2.0 * d / s.shape[-1]
    if kind == "cosine":
        eps = 1e-8
        ns = np.linalg.norm(s, axis=-1, keepdims=True)
        nt = np.linalg.norm(t, axis=-1, keepdims=True)
        ns_, nt_ = np.maximum(ns, eps), np.maximum(nt, eps)
        cos = np.sum(s * t, axis=-1, keepdims=True) / (ns_ * nt_)
        g = -(t / (ns_ * nt_) - np.where(ns > eps, cos * s / (ns_ * np.maximum(ns, 1e-300)), 0))
        return 1.0 - cos[..., 0], g
    lq, lp = log_softmax(s / T), log_softmax(t / T)
    q, p = np.exp(lq), np.exp(lp)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if kind == "kl":
            loss = np.sum(_xlog(p, lp - lq), -1)
            da = q - p
        elif kind == "soft_cross_entropy":
            loss = np.sum(_xlog(p, -lq), -1)
            da = q - p
        elif kind == "reverse_kl":
            loss = np.sum(_xlog(q, lq - lp), -1)
            da = _chain(q, lq - lp)
        elif kind == "jsd":
            b = 0.5 if beta is None else beta
            lm = np.log(b * p + (1 - b) * q)
            loss = b * np.sum(_xlog(p, lp - lm), -1) + (1 - b) * np.sum(_xlog(q, lq - lm), -1)
            da = _chain(q, (1 - b) * (lq - lm))
        elif kind == "skew_kl":
            lam = 0.1 if beta is None else beta
            m = lam * p + (1 - lam) * q
            loss = np.sum(_xlog(p, lp - np.log(m)), -1)
            da = _chain(q, -(1 - lam) * np.where(p > 0, p / m, 0.0))
        elif kind == "skew_reverse_kl":
            lam = 0.1 if beta is None else beta
            m = lam * q + (1 - lam) * p
            loss = np.sum(_xlog(q, lq - np.log(m)), -1)
            da = _chain(q, lq - np.log(m) - lam * q / m)
        elif kind == "tvd":
            loss = 0.5 * np.sum(np.abs(p - q), -1)
            da = _chain(q, 0.5 * np.sign(q - p))
        else:
            raise ValueError(kind)
    return loss, da / T


def loss(kind, student, teacher, *, temperature=1.0, reduction="mean", ignore_index=-100,
         labels=None, alpha=0.0, beta=None):
    """The definition of litecomp.distill.loss: (loss, grad) in float64."""
    s = np.asarray(student, np.float64)
    t = np.asarray(teacher, np.float64)
    shape = s.shape
    s2, t2 = s.reshape(-1, shape[-1]), t.reshape(-1, shape[-1])
    n = s2.shape[0]
    T = float(temperature)
    tfac = T * T if kind in _T2 else 1.0
    rl, g = row_losses(kind, s2, t2, temperature=T, beta=beta)
    rl, g = tfac * rl, tfac * g
    valid = np.ones(n, bool)
    if labels is not None:
        lab = np.asarray(labels).reshape(-1)
        valid = lab != ignore_index
        if alpha:
            lz = log_softmax(s2)
            safe = np.where(valid, lab, 0)
            ce = -lz[np.arange(n), safe]
            gce = np.exp(lz)
            gce[np.arange(n), safe] -= 1.0
            rl = alpha * ce + (1 - alpha) * rl
            g = alpha * gce + (1 - alpha) * g
    rl = np.where(valid, rl, 0.0)
    g = np.where(valid[:, None], g, 0.0)
    if reduction == "none":
        return rl.reshape(shape[:-1]), g.reshape(shape)
    d = {"mean": int(valid.sum()), "sum": 1,
         "batchmean": shape[0] if len(shape) > 1 else 1}[reduction]
    if d == 0:
        return 0.0, np.zeros(shape)
    return float(rl.sum()) / d, (g / d).reshape(shape)


def topk(logits, k, *, temperature=1.0):
    """Top-k ids (ties: smaller id first) and their full-softmax log-probabilities."""
    x = np.asarray(logits, np.float64)
    x2 = x.reshape(-1, x.shape[-1])
    order = np.lexsort((np.broadcast_to(np.arange(x2.shape[1]), x2.shape), -x2), axis=-1)
    ids = order[:, :k]
    lp = np.take_along_axis(log_softmax(x2 / temperature), ids, -1)
    return ids.reshape(x.shape[:-1] + (k,)), lp.reshape(x.shape[:-1] + (k,))


def kl_div_topk(student, ids, logprobs, *, mode="renormalize", temperature=1.0):
    """Row losses and gradients (before reduction) against a sparse teacher."""
    s = np.asarray(student, np.float64)
    s2 = s.reshape(-1, s.shape[-1])
    ids = np.asarray(ids).reshape(s2.shape[0], -1)
    lps = np.asarray(logprobs, np.float64).reshape(s2.shape[0], -1)
    T = float(temperature)
    lq = log_softmax(s2 / T)
    q = np.exp(lq)
    losses, grads = [], []
    for r in range(s2.shape[0]):
        keep = ids[r] >= 0
        idr, lpr = ids[r][keep], lps[r][keep]
        p = np.zeros(s2.shape[1])
        tot = np.exp(lpr).sum()
        if mode == "tail":
            p[idr] = np.exp(lpr)
            ptail = max(0.0, 1.0 - tot) if idr.size < s2.shape[1] else 0.0
            qtail = max(0.0, 1.0 - q[r][idr].sum())
            kl = np.sum(_xlog(p[idr], np.log(p[idr]) - lq[r][idr]))
            if ptail > 0:
                kl += ptail * (np.log(ptail) - np.log(qtail))
            g = np.full(s2.shape[1], -ptail / qtail if ptail > 0 else 0.0)
            g[idr] = -p[idr] / q[r][idr]
            da = _chain(q[r], g)
        else:
            p[idr] = np.exp(lpr) / tot
            kl = np.sum(_xlog(p[idr], np.log(p[idr]) - lq[r][idr]))
            da = q[r] - p
        losses.append(T * T * kl)
        grads.append(T * da)
    return np.array(losses), np.array(grads).reshape(s.shape)


def fused_linear(student_hidden, student_weight, teacher, *, student_bias=None, **kw):
    """The definition of litecomp.distill.fused_linear, the unfused way: materialise the
    [N, V] logits in float64, take :func:`loss`, and chain the matmuls back.
    Returns (loss, grad_hidden, grad_weight, grad_bias)."""
    h = np.asarray(student_hidden, np.float64)
    w = np.asarray(student_weight, np.float64)
    s = h @ w.T
    if student_bias is not None:
        s = s + np.asarray(student_bias, np.float64)
    if isinstance(teacher, (tuple, list)):
        t = np.asarray(teacher[0], np.float64) @ np.asarray(teacher[1], np.float64).T
        if len(teacher) == 3:
            t = t + np.asarray(teacher[2], np.float64)
    else:
        t = np.asarray(teacher, np.float64)
    value, g = loss(kw.pop("kind", "kl"), s, t, **kw)
    g2, h2 = g.reshape(-1, w.shape[0]), h.reshape(-1, w.shape[1])
    gb = None if student_bias is None else g2.sum(axis=0)
    return value, (g2 @ w).reshape(h.shape), g2.T @ h2, gb
