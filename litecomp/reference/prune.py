"""NumPy twins of csrc/prune.c.  Slow and obvious: a stable sort defines the selection."""

import numpy as np


def _as_f64(x):
    """Scores as float64 (exact for every weight dtype); uint64 stays integer."""
    x = np.asarray(x)
    return x if x.dtype == np.uint64 else x.astype(np.float64)


def select_lowest(scores, k, *, mask=None, absolute=False):
    """Keep-mask with the k lowest eligible scores pruned.

    Order: real-number order (-0.0 == +0.0), ties broken by lower flat index first, which
    is what a stable sort gives.  ``scores`` may be a list (one concatenated vector).
    """
    parts = scores if isinstance(scores, (list, tuple)) else [scores]
    masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(parts)
    flat = np.concatenate([_as_f64(p).ravel() for p in parts])
    if absolute and flat.dtype != np.uint64:
        flat = np.abs(flat)
    elig = np.concatenate([np.ones(np.size(p), bool) if m is None else np.asarray(m, bool).ravel()
                           for p, m in zip(parts, masks)])
    if flat.dtype != np.uint64 and np.isnan(flat[elig]).any():
        raise ValueError("scores contain NaN")
    idx = np.flatnonzero(elig)
    order = idx[np.argsort(flat[idx], kind="stable")]
    keep = elig.copy()
    keep[order[:k]] = False
    out, pos = [], 0
    for p in parts:
        out.append(keep[pos:pos + np.size(p)].reshape(np.shape(p)))
        pos += np.size(p)
    return out if isinstance(scores, (list, tuple)) else out[0]


def select_rows(scores, k, *, mask=None, absolute=False):
    """Each row of a 2-D score array prunes its own k lowest (ties: lower column first)."""
    s = np.asarray(scores)
    return np.stack([select_lowest(s[r], k, mask=None if mask is None else mask[r],
                                   absolute=absolute) for r in range(s.shape[0])]) \
        if s.shape[0] else np.zeros(s.shape, bool)


def nm_mask(scores, n, m, axis=-1, absolute=True):
    """Prune the n lowest of every m consecutive entries along ``axis``."""
    s = _as_f64(scores)
    if absolute:
        s = np.abs(s)
    s = np.moveaxis(s, axis, -1)
    g = s.reshape(*s.shape[:-1], s.shape[-1] // m, m)
    order = np.argsort(g, axis=-1, kind="stable")
    rank = np.argsort(order, axis=-1, kind="stable")
    keep = (rank >= n).reshape(s.shape)
    return np.moveaxis(keep, -1, axis)


def _norm(a, p, axis):
    a = np.abs(a)
    if p == np.inf:         # an empty slice: the identities, as the C kernel (torch raises)
        return a.max(axis=axis, initial=0.0)
    if p == -np.inf:
        return a.min(axis=axis, initial=np.inf)
    if p == 1:
        return a.sum(axis=axis)
    if p == 2:
        return np.sqrt((a * a).sum(axis=axis))
    return (a ** p).sum(axis=axis) ** (1.0 / p)


def channel_norms(x, norm, axis):
    """The order-``norm`` norm of every slice x[..., c, ...] along ``axis`` (float64)."""
    x = _as_f64(x)
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    return _norm(x, norm, axes) if axes else np.abs(x)


def block_norms(x, block_shape, norm=2):
    """Norms of [br, bc] blocks of a 2-D array (edge blocks partial)."""
    x = _as_f64(x)
    br, bc = block_shape
    R, C = x.shape
    out = np.empty((-(-R // br), -(-C // bc)))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = _norm(x[i * br:(i + 1) * br, j * bc:(j + 1) * bc].ravel(), norm, 0)
    return out


def sumsq(batches):
    """Per-column sum of squares over the rows of all batches ([rows, cols] each)."""
    return sum((_as_f64(b) ** 2).sum(axis=0) for b in batches)


def apply(w, mask):
    """w where mask, else +0."""
    w = np.asarray(w)
    return np.where(np.asarray(mask, bool), w, np.zeros((), w.dtype))


def bake(orig, mask):
    """orig * mask in orig's dtype (what torch.nn.utils.prune.remove stores)."""
    orig = np.asarray(orig)
    with np.errstate(invalid="ignore"):  # inf * 0 -> NaN, as torch gives
        return _bake(orig, mask)


def _bake(orig, mask):
    return (orig.astype(np.float64) * np.asarray(mask).astype(np.float64)).astype(orig.dtype) \
        if orig.dtype != np.float64 else orig * np.asarray(mask).astype(np.float64)
