"""NumPy twins of csrc/codebook.c."""

import numpy as np


def _nearest_sorted(v, codes):
    """Index (into ``codes``) of the nearest code; ties go to the lower value."""
    order = np.argsort(codes, kind="stable")
    s = codes[order]
    mids = ((s[:-1].astype(np.float64) + s[1:]) / 2).astype(np.float32)
    return order[np.searchsorted(mids, np.asarray(v, np.float32), side="left")]


def blockwise4(x, block, codes):
    """bitsandbytes' 4-bit definition: absmax per block, x * (1/absmax), nearest code,
    first element of each pair in the high nibble.  Returns (packed bytes, absmax)."""
    v = np.asarray(x, np.float32).reshape(-1)
    pad = (-v.size) % block
    b = np.concatenate([v, np.zeros(pad, np.float32)]).reshape(-1, block)
    am = np.abs(b).max(1)
    inv = np.where(am > 0, np.float32(1) / np.where(am > 0, am, 1), 0).astype(np.float32)
    scaled = (b * inv[:, None]).astype(np.float32).reshape(-1)[:v.size]
    q = _nearest_sorted(scaled, np.asarray(codes, np.float32)).astype(np.uint8)
    if q.size % 2:
        q = np.concatenate([q, [0]]).astype(np.uint8)
    return (q[0::2] << 4) | q[1::2], am


def kmeans_assign(x, centroids):
    """Nearest of sorted ``centroids`` per value, plus per-cluster sums and counts."""
    c = np.asarray(centroids, np.float32)
    mids = ((c[:-1].astype(np.float64) + c[1:]) / 2).astype(np.float32)
    idx = np.searchsorted(mids, np.asarray(x, np.float32), side="left")
    sums = np.bincount(idx, weights=np.asarray(x, np.float64), minlength=c.size)
    return idx.astype(np.uint8), sums, np.bincount(idx, minlength=c.size)
