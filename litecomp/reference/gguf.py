"""NumPy twins of csrc/gguf.c for the legacy block formats (the definition gguf.quants
also ports from ggml-quants.c)."""

import numpy as np


def _u8(v):  # float -> uint8 through int32, as NumPy's astype does on x86
    v = np.asarray(v, np.float32)
    ok = np.abs(v) < 2.0 ** 31
    return np.where(ok, np.where(ok, v, 0).astype(np.int64) & 0xFF, 0).astype(np.uint8)


def _inv(d):
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _nibbles(q, hi_mask=0x0F):
    return (q[:, :16] & hi_mask) | (q[:, 16:] << np.uint8(4))


def _qh(q):
    return np.packbits((q >> np.uint8(4)) & 1, axis=1, bitorder="little")


def quantize(x, name):
    b = np.asarray(x, np.float32).reshape(-1, 32)
    with np.errstate(all="ignore"):
        if name == "Q8_0":
            d = np.abs(b).max(1, keepdims=True) / np.float32(127)
            v = b * _inv(d)
            a = np.abs(v)
            f = np.floor(a)
            q = np.sign(v) * (f + np.floor(np.float32(2) * (a - f)))  # roundf
            return np.concatenate([d.astype(np.float16).view(np.uint8), _u8(q)], 1)
        if name in ("Q4_0", "Q5_0"):
            nl = 8 if name == "Q4_0" else 16
            m = np.take_along_axis(b, np.abs(b).argmax(1)[:, None], 1)
            d = (m / np.float32(-nl)).astype(np.float32)
            q = np.minimum(_u8(b * _inv(d) + np.float32(nl + 0.5)), 2 * nl - 1)
            parts = [d.astype(np.float16).view(np.uint8)]
            parts += [_qh(q)] if name == "Q5_0" else []
            return np.concatenate(parts + [_nibbles(q)], 1)
        nl = 15 if name == "Q4_1" else 31
        mn, mx = b.min(1, keepdims=True), b.max(1, keepdims=True)
        d = ((mx - mn) / np.float32(nl)).astype(np.float32)
        q = np.minimum(_u8((b - mn) * _inv(d) + np.float32(0.5)), nl)
        parts = [d.astype(np.float16).view(np.uint8), mn.astype(np.float16).view(np.uint8)]
        parts += [_qh(q)] if name == "Q5_1" else []
        return np.concatenate(parts + [_nibbles(q)], 1)


def dequantize(data, name):
    sizes = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24}
    b = np.asarray(data, np.uint8).reshape(-1, sizes[name])
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    if name == "Q8_0":
        return (b[:, 2:].view(np.int8).astype(np.float32) * d).ravel()
    affine = name in ("Q4_1", "Q5_1")
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32) if affine else None
    rest = b[:, 4:] if affine else b[:, 2:]
    if name in ("Q5_0", "Q5_1"):
        qh = np.unpackbits(rest[:, :4], axis=1, bitorder="little")
        rest = rest[:, 4:]
    else:
        qh = np.zeros((b.shape[0], 32), np.uint8)
    q = np.concatenate([rest & 0x0F, rest >> 4], 1) | (qh << 4)
    if affine:
        return (d * q.astype(np.float32) + m).ravel()
    off = 8 if name == "Q4_0" else 16
    return (d * (q.astype(np.float32) - np.float32(off))).ravel()


# ---------------------------------------------------------------------------- K-quants
# A NumPy port of llama.cpp's K-quant reference quantizers (ggml-quants.c:
# quantize_row_q{2,3,4,5,6}_K_ref, and quantize_row_*_impl when an importance matrix is
# given), written from its source as facts: float32 arithmetic in the same order, every sum
# accumulated element by element from zero, the same rounding (nearest_int), the same
# narrowing of codes to bytes.  Groups (sub-blocks) are processed side by side, one array
# operation per element position, so the order within each group is the C order.

F = np.float32
QK_K = 256
_EPS = F(1e-15)
KSIZES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


def nearest_int(v):
    """ggml's nearest_int: round half to even via 1.5 * 2^23 (exact below 2^22 in size)."""
    t = (np.asarray(v, F) + F(12582912.0)).view(np.int32)
    return (t & 0x007FFFFF).astype(np.int64) - 0x00400000


def _seqsum(terms):
    """0 + t[:, 0] + t[:, 1] + ... in float32, in that order."""
    s = np.zeros(terms.shape[0], F)
    for i in range(terms.shape[1]):
        s = s + terms[:, i]
    return s


def _div(a, b):
    with np.errstate(all="ignore"):
        return (np.asarray(a, F) / np.asarray(b, F)).astype(F)


def _first_absmax(x):
    """(max |x|, the x it came from), the first on ties, 0 for an all-zero group."""
    amax, mx = np.zeros(len(x), F), np.zeros(len(x), F)
    for i in range(x.shape[1]):
        a = np.abs(x[:, i])
        up = a > amax
        amax, mx = np.where(up, a, amax), np.where(up, x[:, i], mx)
    return amax, mx


def _i8(v):
    return ((np.asarray(v, np.int64) + 128) & 0xFF) - 128


def fit_symmetric(x, nmax, qw=None):
    """make_qx_quants (rmse_type 1): (scale per group, codes + nmax)."""
    x = x.astype(F)
    w = (x * x) if qw is None else qw.astype(F)
    amax, mx = _first_absmax(x)
    zero = amax < _EPS
    with np.errstate(all="ignore"):
        def codes(iscale):
            return np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)

        def sums(l):
            lf = l.astype(F)
            return _seqsum(w * x * lf), _seqsum(w * lf * lf)
        iscale = _div(F(-nmax), mx)
        l = codes(iscale)
        L = l + nmax
        sumlx, suml2 = sums(l)
        scale = np.where(suml2 != 0, _div(sumlx, suml2), F(0)).astype(F)
        best = scale * sumlx
        for i_s in range(-9, 10):
            if i_s == 0:
                continue
            iscale = _div(-(F(nmax) + F(0.1) * F(i_s)), mx)
            l = codes(iscale)
            sumlx, suml2 = sums(l)
            up = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L[up] = l[up] + nmax
            scale = np.where(up, _div(sumlx, suml2), scale)
            best = np.where(up, scale * sumlx, best)
    L[zero] = 0
    return np.where(zero, F(0), scale).astype(F), _i8(L)


def fit_symmetric_refine(x, nmax):
    """make_q3_quants with do_rmse: (scale, codes + nmax)."""
    x = x.astype(F)
    w = x * x
    amax, mx = _first_absmax(x)
    zero = amax < _EPS
    with np.errstate(all="ignore"):
        L = np.clip(nearest_int(_div(F(-nmax), mx)[:, None] * x), -nmax, nmax - 1)
        Lf = L.astype(F)
        sumlx, suml2 = _seqsum(w * x * Lf), _seqsum(w * Lf * Lf)
        for _ in range(5):  # a pass that changes nothing leaves nothing for the next
            for i in range(x.shape[1]):
                wi, xi, li = w[:, i], x[:, i], L[:, i].astype(F)
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                nl = np.clip(nearest_int(_div(xi * sl2, slx)), -nmax, nmax - 1)
                nf = nl.astype(F)
                slx2, sl22 = slx + wi * xi * nf, sl2 + wi * nf * nf
                ok = ((slx > 0) & (nl != L[:, i]) & (sl22 > 0)
                      & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                L[ok, i] = nl[ok]
                sumlx, suml2 = np.where(ok, slx2, sumlx), np.where(ok, sl22, suml2)
        scale = np.where(suml2 > 0, _div(sumlx, suml2), F(0)).astype(F)
    L = L + nmax
    L[zero] = 0
    return np.where(zero, F(0), scale).astype(F), L


def fit_affine(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants / make_qkx3_quants: (scale, min >= 0, codes 0..nmax)."""
    x, w = x.astype(F), weights.astype(F)
    n = x.shape[1]
    mn, mx = x[:, 0].copy(), x[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        mn = np.where(x[:, i] < mn, x[:, i], mn)
        mx = np.where(x[:, i] > mx, x[:, i], mx)
        sum_w = sum_w + w[:, i]
        sum_x = sum_x + w[:, i] * x[:, i]
    mn = np.where(mn > 0, F(0), mn).astype(F)
    flat = mx == mn

    def err(scale, mn_, lf):
        diff = scale[:, None] * lf + mn_[:, None] - x
        return _seqsum(w * (np.abs(diff) if use_mad else diff * diff))
    with np.errstate(all="ignore"):
        iscale = _div(F(nmax), mx - mn)
        scale = _div(F(1), iscale)
        L = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        best = err(scale, mn, L.astype(F))
        for i_s in range(nstep + 1):
            iscale = _div(F(rmin) + F(rdelta) * F(i_s) + F(nmax), mx - mn)
            l = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
            lf = l.astype(F)
            sum_l, sum_l2, sum_xl = _seqsum(w * lf), _seqsum(w * lf * lf), _seqsum(w * lf * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = _div(sum_w * sum_xl - sum_x * sum_l, D)
            this_min = _div(sum_l2 * sum_x - sum_l * sum_xl, D)
            neg = this_min > 0
            this_min = np.where(neg, F(0), this_min).astype(F)
            this_scale = np.where(neg, _div(sum_xl, sum_l2), this_scale).astype(F)
            e = err(this_scale, this_min, lf)
            up = (D > 0) & (e < best) & ~flat
            L[up] = l[up]
            best = np.where(up, e, best)
            scale = np.where(up, this_scale, scale)
            mn = np.where(up, this_min, mn)
    L[flat] = 0
    return np.where(flat, F(0), scale).astype(F), (-mn).astype(F), L


def fit_positive(x, nmax, qw):
    """make_qp_quants: (scale, codes as bytes) for non-negative values with weights."""
    x, qw = x.astype(F), qw.astype(F)
    mx = np.zeros(len(x), F)
    for i in range(x.shape[1]):
        mx = np.where(mx > x[:, i], mx, x[:, i])
    zero = mx < _EPS
    with np.errstate(all="ignore"):
        iscale = _div(F(nmax), mx)
        L = nearest_int(iscale[:, None] * x) & 0xFF
        scale = _div(F(1), iscale)
        diff = x - scale[:, None] * L.astype(F)
        best = _seqsum(qw * diff * diff)
        for i_s in range(-4, 5):
            if i_s == 0:
                continue
            iscale_is = _div(F(0.1) * F(i_s) + F(nmax), mx)
            scale_is = _div(F(1), iscale_is)
            l = np.minimum(nmax, nearest_int(iscale_is[:, None] * x))
            diff = x - scale_is[:, None] * l.astype(F)
            mse = _seqsum(qw * diff * diff)
            up = mse < best
            best, iscale = np.where(up, mse, best), np.where(up, iscale_is, iscale)
        l = np.minimum(nmax, nearest_int(iscale[:, None] * x))
        L = l & 0xFF
        lf = l.astype(F)
        sumlx, suml2 = _seqsum(qw * x * lf), _seqsum(qw * lf * lf)
        for _ in range(5):
            for i in range(x.shape[1]):
                wi, xi, li = qw[:, i], x[:, i], L[:, i].astype(F)
                slx, sl2 = sumlx - wi * xi * li, suml2 - wi * li * li
                nl = np.minimum(nmax, nearest_int(_div(xi * sl2, slx)))
                nf = nl.astype(F)
                slx2, sl22 = slx + wi * xi * nf, sl2 + wi * nf * nf
                ok = ((slx > 0) & (sl2 > 0) & (nl != L[:, i])
                      & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                L[ok, i] = nl[ok] & 0xFF
                sumlx, suml2 = np.where(ok, slx2, sumlx), np.where(ok, sl22, suml2)
        scale = np.where(suml2 > 0, _div(sumlx, suml2), F(0)).astype(F)
    L[zero] = 0
    return np.where(zero, F(0), scale).astype(F), L


def _f16(v):
    """float32 -> the fp16 bits (2 bytes each) and the float32 they stand for."""
    h = np.asarray(v, F).astype(np.float16)
    return h.view(np.uint8).reshape(len(h), 2), h.astype(F)


def _running_max(v, key=None):
    """C's `if (k > best) best = ...` over columns from 0: (best key, value where taken)."""
    key = v if key is None else key
    best, val = np.zeros(len(v), F), np.zeros(len(v), F)
    for j in range(v.shape[1]):
        up = key[:, j] > best
        best, val = np.where(up, key[:, j], best), np.where(up, v[:, j], val)
    return best, val


def _pack2(L):
    """2-bit codes (B, 256) -> qs (B, 64): byte 32*h + l holds elements 128*h + l + 32*k at
    bits 2k."""
    L = L.reshape(-1, 2, 4, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)) \
        .reshape(-1, 64).astype(np.uint8)


def _weights_sigma(X, qw, n, factor):
    sigma2 = _div(F(factor) * _seqsum(X * X), F(QK_K))
    return qw * np.sqrt(sigma2[:, None] + X * X)


def _q2_K(X, qw):
    B = len(X)
    xs = X.reshape(-1, 16)
    if qw is None:
        scales, mins, L = fit_affine(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(B, 16), mins.reshape(B, 16)
        max_scale = _running_max(scales)[0]
        max_min = _running_max(mins)[0]
        with np.errstate(all="ignore"):
            sc = np.where((max_scale > 0)[:, None],
                          nearest_int(_div(F(15), max_scale)[:, None] * scales) & 0xFF, 0)
            mc = nearest_int(_div(F(15), max_min)[:, None] * mins)
        sc = np.where((max_min > 0)[:, None], (sc | (mc << 4)) & 0xFF, sc)
        d = np.where(max_scale > 0, _div(max_scale, F(15)), F(0))
        dmin = np.where(max_min > 0, _div(max_min, F(15)), F(0))
    else:
        weight = _weights_sigma(X, qw, 16, 1).reshape(-1, 16)
        sw = _seqsum(weight).reshape(B, 16)
        scales, mins, L = fit_affine(xs, weight, 3, -0.9, 0.05, 36, False)
        d, Ls = fit_positive(scales.reshape(B, 16), 15, sw)
        dmin, Lm = fit_positive(mins.reshape(B, 16), 15, sw)
        sc = (Ls | (Lm << 4)) & 0xFF
    d_bytes, dm = _f16(d)
    m_bytes, mm = _f16(dmin)
    L = L.reshape(B, 16, 16)
    with np.errstate(all="ignore"):
        dd = dm[:, None] * (sc & 0xF).astype(F)
        m = mm[:, None] * (sc >> 4).astype(F)
        new = np.clip(nearest_int(_div(X.reshape(B, 16, 16) + m[..., None], dd[..., None])), 0, 3)
    L = np.where((dd != 0)[..., None], new, L).reshape(B, QK_K)
    return np.concatenate([sc.astype(np.uint8), _pack2(L), d_bytes, m_bytes], 1)


def _q3_scales_get(s):
    """The 16 signed 6-bit scales of packed Q3_K scale bytes s (B, 12)."""
    s = s.astype(np.int64)
    j = np.arange(16)
    low = np.where(j < 8, s[:, j % 8] & 0xF, s[:, j % 8] >> 4)
    high = (s[:, 8 + j % 4] >> (2 * (j // 4))) & 3
    return _i8((_i8(low) | (high << 4)) - 32)


def _q3_scales_put(l):
    """Codes 0..63 (B, 16) -> the 12 packed bytes."""
    s = np.zeros((len(l), 12), np.int64)
    for j in range(16):
        if j < 8:
            s[:, j] = l[:, j] & 0xF
        else:
            s[:, j - 8] |= (l[:, j] & 0xF) << 4
        s[:, 8 + j % 4] |= (l[:, j] >> 4) << (2 * (j // 4))
    return s & 0xFF


def _q3_K(X, qw):
    B = len(X)
    xs = X.reshape(-1, 16)
    if qw is None:
        scales, L = fit_symmetric_refine(xs, 4)
        scales = scales.reshape(B, 16)
        _, max_scale = _running_max(scales, np.abs(scales))
        nz = max_scale != 0
        with np.errstate(all="ignore"):
            iscale = _div(F(-32), max_scale)
            l = np.clip(_i8(nearest_int(iscale[:, None] * scales)), -32, 31) + 32
            packed = np.where(nz[:, None], _q3_scales_put(l), 0)
            d = np.where(nz, _div(F(1), iscale), F(0))
    else:
        weight = _weights_sigma(X, qw, 16, 2).reshape(-1, 16)
        sw = _seqsum(weight).reshape(B, 16)
        scales, L = fit_symmetric(xs, 4, weight)
        d, Ls = fit_symmetric(scales.reshape(B, 16), 32, sw)
        packed = _q3_scales_put(Ls)
    d_bytes, df = _f16(d)
    dd = df[:, None] * _q3_scales_get(packed).astype(F)
    with np.errstate(all="ignore"):
        new = np.clip(nearest_int(_div(X.reshape(B, 16, 16), dd[..., None])), -4, 3) + 4
    L = np.where((dd != 0)[..., None], new, L.reshape(B, 16, 16)).reshape(B, QK_K)
    high = L > 3
    L = np.where(high, L - 4, L)
    hmask = np.zeros((B, 32), np.int64)
    for j in range(QK_K):
        hmask[:, j % 32] |= high[:, j].astype(np.int64) << (j // 32)
    return np.concatenate([hmask.astype(np.uint8), _pack2(L), packed.astype(np.uint8), d_bytes], 1)


def _scale_min_put(ls, lm):
    """6-bit scale and min codes (B, 8) -> Q4_K/Q5_K's 12 packed bytes."""
    q = np.zeros((len(ls), 12), np.int64)
    for j in range(8):
        if j < 4:
            q[:, j], q[:, j + 4] = ls[:, j], lm[:, j]
        else:
            q[:, j + 4] = (ls[:, j] & 0xF) | ((lm[:, j] & 0xF) << 4)
            q[:, j - 4] |= (ls[:, j] >> 4) << 6
            q[:, j] |= (lm[:, j] >> 4) << 6
    return q & 0xFF


def _scale_min_get(q):
    q = q.astype(np.int64)
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], 1)
    m = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], 1)
    return sc, m


def _q45_K(X, qw, nmax):
    B = len(X)
    xs = X.reshape(-1, 32)
    if qw is None:
        av_x = np.sqrt(_div(_seqsum(xs * xs), F(32)))
        rmin, nstep = (-1.0, 20) if nmax == 15 else (-0.5, 15)
        scales, mins, L = fit_affine(xs, av_x[:, None] + np.abs(xs), nmax, rmin, 0.1, nstep,
                                     False)
        scales, mins = scales.reshape(B, 8), mins.reshape(B, 8)
        max_scale, max_min = _running_max(scales)[0], _running_max(mins)[0]
        with np.errstate(all="ignore"):
            inv_s = np.where(max_scale > 0, _div(F(63), max_scale), F(0))
            inv_m = np.where(max_min > 0, _div(F(63), max_min), F(0))
        ls = np.minimum(63, nearest_int(inv_s[:, None] * scales) & 0xFF)
        lm = np.minimum(63, nearest_int(inv_m[:, None] * mins) & 0xFF)
        d, dmin = _div(max_scale, F(63)), _div(max_min, F(63))
    else:
        weight = _weights_sigma(X, qw, 32, 2).reshape(-1, 32)
        sw = _seqsum(weight).reshape(B, 8)
        scales, mins, L = fit_affine(xs, weight, nmax, -0.9, 0.05, 36, False)
        d, ls = fit_positive(scales.reshape(B, 8), 63, sw)
        dmin, lm = fit_positive(mins.reshape(B, 8), 63, sw)
        if nmax == 31:
            ls, lm = np.minimum(63, ls), np.minimum(63, lm)
    packed = _scale_min_put(ls, lm)
    d_bytes, df = _f16(d)
    m_bytes, mf = _f16(dmin)
    sc, m = _scale_min_get(packed)
    dd, dm = df[:, None] * sc.astype(F), mf[:, None] * m.astype(F)
    with np.errstate(all="ignore"):
        new = np.clip(nearest_int(_div(X.reshape(B, 8, 32) + dm[..., None], dd[..., None])),
                      0, nmax)
    L = np.where((dd != 0)[..., None], new, L.reshape(B, 8, 32)).reshape(B, 4, 2, 32)
    head = [d_bytes, m_bytes, packed.astype(np.uint8)]
    if nmax == 15:
        qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(B, 128)
        return np.concatenate(head + [qs.astype(np.uint8)], 1)
    qs = ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).reshape(B, 128)
    qh = np.zeros((B, 32), np.int64)
    for k in range(4):
        qh |= (L[:, k, 0] >> 4) << (2 * k)
        qh |= (L[:, k, 1] >> 4) << (2 * k + 1)
    return np.concatenate(head + [qh.astype(np.uint8), qs.astype(np.uint8)], 1)


def _q6_K(X, qw):
    B = len(X)
    xs = X.reshape(-1, 16)
    scales, L = fit_symmetric(xs, 32, None if qw is None else qw.reshape(-1, 16))
    scales = scales.reshape(B, 16)
    max_abs, max_scale = _running_max(scales, np.abs(scales))
    zero = max_abs < _EPS
    with np.errstate(all="ignore"):
        iscale = _div(F(-128), max_scale)
        d_bytes, df = _f16(_div(F(1), iscale))
        sc = _i8(np.minimum(127, nearest_int(iscale[:, None] * scales)))
        dd = df[:, None] * sc.astype(F)
        new = np.clip(nearest_int(_div(X.reshape(B, 16, 16), dd[..., None])), -32, 31) + 32
    L = np.where((dd != 0)[..., None], new, L.reshape(B, 16, 16)).reshape(B, 2, 4, 32)
    ql = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                         (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], 2).reshape(B, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(B, 64)
    out = np.concatenate([ql.astype(np.uint8), qh.astype(np.uint8),
                          (sc & 0xFF).astype(np.uint8), d_bytes], 1)
    out[zero] = 0
    return out


def quantize_k(x, name, imatrix=None):
    """K-quant blocks of float32 ``x`` along its last axis (a multiple of 256), as llama.cpp's
    reference quantizer writes them; ``imatrix`` (one weight per column) selects the
    importance-weighted variant.  Returns uint8 (..., n / 256 * block bytes)."""
    x = np.asarray(x, F)
    cols = x.shape[-1]
    X = x.reshape(-1, QK_K)
    qw = None
    if imatrix is not None:
        qw = np.broadcast_to(np.asarray(imatrix, F).reshape(-1, QK_K),
                             (X.shape[0] // (cols // QK_K), cols // QK_K, QK_K)).reshape(-1, QK_K)
    with np.errstate(all="ignore"):  # degenerate inputs overflow exactly as the C code does
        if name == "Q2_K":
            out = _q2_K(X, qw)
        elif name == "Q3_K":
            out = _q3_K(X, qw)
        elif name in ("Q4_K", "Q5_K"):
            out = _q45_K(X, qw, 15 if name == "Q4_K" else 31)
        else:
            out = _q6_K(X, qw)
    return out.reshape(x.shape[:-1] + (cols // QK_K * KSIZES[name],))
