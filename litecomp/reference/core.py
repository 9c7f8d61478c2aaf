"""NumPy twins of csrc/core.c."""

import numpy as np

LANES = 16
BLOCK = 1 << 16


def _fold(lanes):
    t = list(lanes)
    w = LANES // 2
    while w >= 1:
        t = [t[j] + t[j + w] for j in range(w)] + t[2 * w:]
        w //= 2
    return t[0]


def tensor_stats(x):
    """The definition of tensor_stats, including the fixed summation order."""
    v = np.asarray(x).astype(np.float64).ravel()
    fin = np.isfinite(v)
    f = np.where(fin, v, 0.0)
    total = 0.0
    totalsq = 0.0
    for s in range(0, v.size, BLOCK):
        blk = f[s:s + BLOCK]
        pad = (-blk.size) % LANES
        lanes_in = np.concatenate([blk, np.zeros(pad)]).reshape(-1, LANES)
        ls = np.zeros(LANES)
        lq = np.zeros(LANES)
        for row in lanes_in:  # sequential per lane, as the kernel does
            ls = ls + row
            lq = lq + row * row
        total += _fold(ls)
        totalsq += _fold(lq)
    notnan = v[~np.isnan(v)]
    mn = float(notnan.min()) if notnan.size else float("inf")
    mx = float(notnan.max()) if notnan.size else float("-inf")
    return {
        "numel": v.size,
        "nonzero": int(np.count_nonzero(v)),
        "nan": int(np.isnan(v).sum()),
        "posinf": int(np.isposinf(v).sum()),
        "neginf": int(np.isneginf(v).sum()),
        "sum": total,
        "sumsq": totalsq,
        "min": mn + 0.0,
        "max": mx + 0.0,
        "absmax": float(np.abs(f).max()) if v.size else 0.0,
    }
