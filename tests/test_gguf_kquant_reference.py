"""Q4_K and Q6_K quantize byte for byte as llama.cpp's reference quantizers
(quantize_row_q4_K_ref / quantize_row_q6_K_ref in ggml-quants.c, with make_qkx2_quants and
make_qx_quants).  The port below is written here from that C source, independently of
csrc/gguf.c: float32 arithmetic in the C expression order, sums accumulated one element
at a time (so NumPy's pairwise sums are never used), nearest_int as round half to even,
and ggml's fp16 conversion as NumPy's (round to nearest even)."""

import numpy as np
import pytest

import litecomp
from litecomp.quant import gguf as lg

f32 = np.float32


def _nearest_int(v):
    return np.rint(v).astype(np.int64)


def _seq_sum(terms):
    """terms: (B, n) float32 -> the C loop `s = 0; for i: s += terms[i]` in float32."""
    s = np.zeros(terms.shape[0], f32)
    for i in range(terms.shape[1]):
        s = s + terms[:, i]
    return s


def make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep):
    """Rows of x (B, n) with weights w: (scale, the_min, L) as llama.cpp's function."""
    mn, mx = x[:, 0].copy(), x[:, 0].copy()
    sum_w, sum_x = w[:, 0].copy(), w[:, 0] * x[:, 0]
    for i in range(1, x.shape[1]):
        mn = np.where(x[:, i] < mn, x[:, i], mn)
        mx = np.where(x[:, i] > mx, x[:, i], mx)
        sum_w = sum_w + w[:, i]
        sum_x = sum_x + w[:, i] * x[:, i]
    mn = np.where(mn > 0, f32(0), mn)
    flat = mx == mn
    span = np.where(flat, f32(1), mx - mn)
    iscale = f32(nmax) / span
    scale = f32(1) / iscale
    L = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    diff = scale[:, None] * L.astype(f32) + mn[:, None] - x
    best = _seq_sum(w * (diff * diff))
    for step in range(nstep + 1):
        # as in C, a candidate taken moves `min`, which the later candidates start from
        span = np.where(flat, f32(1), mx - mn)
        iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / span
        la = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        lf = la.astype(f32)
        sum_l, sum_l2, sum_xl = _seq_sum(w * lf), _seq_sum(w * lf * lf), _seq_sum(w * lf * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = np.where(ok, D, f32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        this_min = np.where(pos, f32(0), this_min)
        this_scale = np.where(pos, sum_xl / np.where(sum_l2 == 0, f32(1), sum_l2), this_scale)
        diff = this_scale[:, None] * lf + this_min[:, None] - x
        cur = _seq_sum(w * (diff * diff))
        take = ok & (cur < best) & ~flat
        L = np.where(take[:, None], la, L)
        best = np.where(take, cur, best)
        scale = np.where(take, this_scale, scale)
        mn = np.where(take, this_min, mn)
    L[flat] = 0
    return np.where(flat, f32(0), scale), -mn, L


def make_qx_quants(x, nmax):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) on rows of x: (scale, L)."""
    amax_i = np.abs(x).argmax(1)                    # the first index of the largest |x|
    mx = x[np.arange(len(x)), amax_i]
    zero = np.abs(mx) < f32(1e-15)
    mxs = np.where(zero, f32(1), mx)
    w = x * x

    def fit(iscale):
        l = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = l.astype(f32)
        return l, _seq_sum(w * x * lf), _seq_sum(w * lf * lf)

    l, sumlx, suml2 = fit(f32(-nmax) / mxs)
    L = l + nmax
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 == 0, f32(1), suml2), f32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = fit(-(f32(nmax) + f32(0.1) * f32(step)) / mxs)
        take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(take[:, None], l + nmax, L)
        scale = np.where(take, sumlx / np.where(suml2 > 0, suml2, f32(1)), scale)
        best = np.where(take, scale * sumlx, best)
    L[zero] = 0
    return np.where(zero, f32(0), scale), L


def _fp16(v):
    return np.asarray(v, f32).astype(np.float16)


def quantize_q4_k(x):
    """(n, 256k) float32 -> (n * k, 144) bytes: d, dmin, 12 scale bytes, 128 nibble bytes."""
    sb = np.asarray(x, f32).reshape(-1, 8, 32)
    nb = sb.shape[0]
    sub = sb.reshape(-1, 32)
    av_x = np.sqrt(_seq_sum(sub * sub) / f32(32))
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, L = make_qkx2_quants(sub, weights, 15, -1.0, 0.1, 20)
    scales, mins, L = scales.reshape(nb, 8), mins.reshape(nb, 8), L.reshape(nb, 8, 32)
    max_scale = np.maximum(scales.max(1), f32(0))
    max_min = np.maximum(mins.max(1), f32(0))
    inv_scale = np.where(max_scale > 0, f32(63) / np.where(max_scale > 0, max_scale, 1), f32(0))
    inv_min = np.where(max_min > 0, f32(63) / np.where(max_min > 0, max_min, 1), f32(0))
    # uint8_t ls = nearest_int(...); ls = MIN(63, ls): the uint8 wrap comes first
    ls = np.minimum(63, _nearest_int(inv_scale[:, None] * scales) & 0xFF)
    lm = np.minimum(63, _nearest_int(inv_min[:, None] * mins) & 0xFF)
    packed = np.zeros((nb, 12), np.int64)
    packed[:, 0:4], packed[:, 4:8] = ls[:, :4], lm[:, :4]
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    packed[:, 0:4] |= (ls[:, 4:] >> 4) << 6
    packed[:, 4:8] |= (lm[:, 4:] >> 4) << 6
    d, dmin = _fp16(max_scale / f32(63)), _fp16(max_min / f32(63))
    dl = d.astype(f32)[:, None] * ls.astype(f32)          # get_scale_min_k4 gives ls, lm back
    dm = dmin.astype(f32)[:, None] * lm.astype(f32)
    nz = dl != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(_nearest_int((sb + dm[:, :, None]) / np.where(nz, dl, 1)[:, :, None]), 0, 15)
    L = np.where(nz[:, :, None], q, L).reshape(nb, 256)
    qs = np.concatenate([L[:, j:j + 32] | (L[:, j + 32:j + 64] << 4) for j in range(0, 256, 64)],
                        1)
    return np.concatenate([d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2),
                           packed.astype(np.uint8), qs.astype(np.uint8)], 1)


def quantize_q6_k(x):
    """(n, 256k) float32 -> (n * k, 210) bytes: ql[128], qh[64], int8 scales[16], d."""
    sb = np.asarray(x, f32).reshape(-1, 16, 16)
    nb = sb.shape[0]
    scales, L = make_qx_quants(sb.reshape(-1, 16), 32)
    scales, L = scales.reshape(nb, 16), L.reshape(nb, 16, 16)
    first = np.abs(scales).argmax(1)
    max_scale = scales[np.arange(nb), first]
    zero = np.abs(max_scale) < f32(1e-15)
    iscale = f32(-128) / np.where(zero, f32(1), max_scale)
    d = _fp16(f32(1) / iscale)
    sc = np.minimum(127, _nearest_int(iscale[:, None] * scales))
    dl = d.astype(f32)[:, None] * sc.astype(f32)
    nz = dl != 0
    q = np.clip(_nearest_int(sb / np.where(nz, dl, 1)[:, :, None]), -32, 31) + 32
    L = np.where(nz[:, :, None], q, L).reshape(nb, 256)
    ql, qh = [], []
    for j in (0, 128):
        a, b, c, e = (L[:, j + o:j + o + 32] for o in (0, 32, 64, 96))
        ql += [(a & 0xF) | ((c & 0xF) << 4), (b & 0xF) | ((e & 0xF) << 4)]
        qh += [(a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)]
    out = np.concatenate([np.concatenate(ql, 1).astype(np.uint8),
                          np.concatenate(qh, 1).astype(np.uint8),
                          sc.astype(np.int8).view(np.uint8), d.view(np.uint8).reshape(nb, 2)], 1)
    out[zero] = 0
    return out


PORT = {"Q4_K": quantize_q4_k, "Q6_K": quantize_q6_k}


def datasets():
    rng = np.random.default_rng(17)
    z = rng.standard_normal((6, 512)).astype(np.float32)
    z[:, :256] = 0                                  # an all-zero super-block
    z[1, 256:288] = 0                               # an all-zero sub-block
    z[2, 256:288] = 1.5                             # a constant sub-block
    pos = np.abs(rng.standard_normal((6, 512))).astype(np.float32) + 0.5   # min > 0
    return {
        "normal": rng.standard_normal((16, 512)).astype(np.float32),
        "heavy": rng.standard_cauchy((8, 512)).astype(np.float32),
        "scaled": (rng.standard_normal((8, 512)) * np.exp(rng.uniform(-8, 8, (8, 1))))
        .astype(np.float32),
        "ties": (rng.integers(-16, 17, (8, 512)) / 4).astype(np.float32),
        "degenerate": z,
        "positive": pos,
    }


DATA = datasets()


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
@pytest.mark.parametrize("kind", list(DATA))
def test_k_quants_equal_llama_cpp_reference_port(name, kind, simd_level):
    x = DATA[kind]
    want = PORT[name](x)
    got = lg.quantize(x, name).reshape(want.shape)
    bad = np.flatnonzero((got != want).any(1))
    assert not bad.size, f"{name} {kind}: blocks {bad[:8]} differ from llama.cpp's reference"
