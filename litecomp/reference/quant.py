"""NumPy twins of csrc/quant.c."""

import numpy as np

from ..quant.core import VIEW


def minmax(x, view):
    a, c, b, mode = view
    v = np.asarray(x, np.float32).reshape(a, c, b)
    if mode == VIEW["tensor"]:
        return np.array([v.min()]) + np.float32(0), np.array([v.max()]) + np.float32(0)
    if mode == VIEW["channel"]:
        return v.min(axis=(0, 2)) + np.float32(0), v.max(axis=(0, 2)) + np.float32(0)
    return v.min(axis=(1, 2)) + np.float32(0), v.max(axis=(1, 2)) + np.float32(0)


def calc_qparams(min_val, max_val, qmin, qmax, scheme, zero_point_symmetric=0):
    """torch.ao's ``_calculate_qparams`` (observer.py), one slot at a time in float32 scalars,
    written from its definition rather than from litecomp.quant.calc_qparams:
    min_n = min(min, 0), max_p = max(max, 0), eps = finfo(float32).eps;
    symmetric: s = max(max(-min_n, max_p) / ((qmax - qmin) / 2), eps), zp fixed;
    affine: s = max((max_p - min_n) / (qmax - qmin), eps),
    zp = clamp(qmin - round_half_even(min_n / s), qmin, qmax).
    Returns (scales float32, zero_points int64), one per slot."""
    f = np.float32
    eps = np.finfo(np.float32).eps
    scales, zps = [], []
    for lo, hi in zip(np.atleast_1d(np.asarray(min_val, f)).tolist(),
                      np.atleast_1d(np.asarray(max_val, f)).tolist()):
        min_n, max_p = f(min(lo, 0.0)), f(max(hi, 0.0))
        if scheme == "symmetric":
            s = max(f(max(-min_n, max_p) / f((qmax - qmin) / 2)), eps)
            z = zero_point_symmetric
        else:
            s = max(f(f(max_p - min_n) / f(qmax - qmin)), eps)
            z = min(max(qmin - int(np.rint(f(min_n / f(s)))), qmin), qmax)
        scales.append(s)
        zps.append(z)
    return np.array(scales, f), np.array(zps, np.int64)


def _expand(p, view):
    a, c, b, mode = view
    p = np.asarray(p)
    if mode == VIEW["tensor"]:
        return p.reshape(1, 1, 1)
    return p.reshape(1, c, 1) if mode == VIEW["channel"] else p.reshape(a, 1, 1)


def quantize_affine(x, view, scales, zps, qmin, qmax):
    """clamp(zp + round_half_even(x * (1/s)), qmin, qmax) with the product in float32."""
    a, c, b, _ = view
    v = np.asarray(x, np.float32).reshape(a, c, b)
    inv = (np.float32(1) / np.asarray(scales, np.float32))
    r = np.rint(v * _expand(inv, view).astype(np.float32))
    q = np.clip(r + _expand(zps, view), qmin, qmax)
    return q.astype(np.int64).reshape(np.shape(x))


def dequantize_affine(q, view, scales, zps):
    a, c, b, _ = view
    v = np.asarray(q, np.int64).reshape(a, c, b)
    d = (v - _expand(zps, view)).astype(np.float32) * _expand(scales, view).astype(np.float32)
    return d.reshape(np.shape(q))


def pack_codes(codes, bits):
    """Per row, code i occupies bits [i*bits, (i+1)*bits) of an LSB-first stream."""
    codes = np.asarray(codes, np.uint8)
    rows, cols = codes.shape
    bitplanes = (codes[..., None] >> np.arange(bits, dtype=np.uint8)) & 1  # (rows, cols, bits)
    stream = bitplanes.reshape(rows, cols * bits)
    pad = (-stream.shape[1]) % 8
    stream = np.concatenate([stream, np.zeros((rows, pad), np.uint8)], axis=1)
    return np.packbits(stream, axis=1, bitorder="little")


def fake_quantize(x, scale, zp, qmin, qmax, view):
    a, c, b, _ = view
    v = np.asarray(x, np.float32).reshape(a, c, b)
    s = _expand(scale, view).astype(np.float32)
    z = _expand(zp, view).astype(np.float32)
    r = np.rint(v * (np.float32(1) / s)) + z
    y = (np.clip(r, qmin, qmax) - z) * s
    inside = (r >= qmin) & (r <= qmax)
    return y.reshape(np.shape(x)), inside.reshape(np.shape(x))


def histc(x, bins, lo, hi):
    """torch.histc's CPU binning: (int)((v - lo) * bins / (hi - lo)) in float32."""
    v = np.asarray(x, np.float32).ravel()
    lo, hi = np.float32(lo), np.float32(hi)
    if lo == hi:
        lo, hi = lo - np.float32(1), hi + np.float32(1)
    v = v[(v >= lo) & (v <= hi)]
    pos = np.minimum(((v - lo) * np.float32(bins) / (hi - lo)).astype(np.int64), bins - 1)
    return np.bincount(pos, minlength=bins)


def error_stats(x, y):
    """(sum x^2, sum y^2, sum xy, sum (x-y)^2, max |x-y|) in float64."""
    a = np.asarray(x, np.float64).ravel()
    b = np.asarray(y, np.float64).ravel()
    return a @ a, b @ b, a @ b, (a - b) @ (a - b), float(np.abs(a - b).max()) if a.size else 0.0
