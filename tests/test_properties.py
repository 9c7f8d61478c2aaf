"""Property tests (hypothesis) for every kernel family: random shapes (0- and 1-sized dims
included), dtypes (bfloat16 included), and layouts -- strided, offset, misaligned,
transposed, byte-swapped -- give the NumPy reference's result; and inputs above the
parallel threshold give the same bits for 1, 2 and 3 threads and every SIMD level, with the
team really split (team_probe)."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import litecomp
from litecomp import distill, prune, sparse
from litecomp import quant as Q
from litecomp.quant import codebook as cb
from litecomp.quant import gguf
from litecomp.quant.core import _view
from litecomp.reference import codebook as rcb
from litecomp.reference import core as rcore
from litecomp.reference import distill as rdistill
from litecomp.reference import gguf as rgguf
from litecomp.reference import prune as rprune
from litecomp.reference import matmul as rqm
from litecomp.reference import quant as rquant
from litecomp.reference import random as rrandom
from conftest import SIMD_LEVELS
from kernel_cases import PARALLEL_MIN, as_bytes

WEIGHT = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16)
LAYOUTS = ("c", "strided", "offset", "misaligned", "transposed", "byteswapped")
SMALL = settings(max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LARGE = settings(max_examples=3, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def lay_out(values, layout):
    """``values`` (C order) as an array of the same shape and values in another layout."""
    v = np.asarray(values)
    dt = v.dtype
    if layout == "strided" and v.ndim:
        base = np.zeros(v.shape[:-1] + (2 * v.shape[-1],), dt)
        base[..., ::2] = v
        return base[..., ::2]
    if layout == "offset":
        base = np.zeros(v.size + 3, dt)
        base[3:] = v.ravel()
        return base[3:].reshape(v.shape)
    if layout == "misaligned" and dt.itemsize > 1:
        raw = np.zeros(v.nbytes + 1, np.uint8)
        a = raw[1:].view(dt).reshape(v.shape)
        a[...] = v
        return a
    if layout == "transposed" and v.ndim >= 2:
        return np.ascontiguousarray(v.T).T
    if layout == "byteswapped" and dt.itemsize > 1 and dt.kind == "f":  # not ml_dtypes
        return v.astype(dt.newbyteorder(">" if dt.isnative else "<"))
    return v


@st.composite
def arrays(draw, dtypes=WEIGHT, min_dims=1, max_dims=3, max_side=7, last=None, ties=True):
    """(values in C order, the same in a drawn layout)."""
    dtype = draw(st.sampled_from(dtypes))
    ndim = draw(st.integers(min_dims, max_dims))
    shape = [draw(st.integers(0, max_side)) for _ in range(ndim)]
    if last is not None and ndim:
        shape[-1] = last * draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(shape) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
    if ties and draw(st.booleans()):
        v = np.round(v * 2) / 2                         # many ties, and -0.0
    v = v.astype(dtype)
    return v, lay_out(v, draw(st.sampled_from(LAYOUTS)))


@st.composite
def large(draw, dtypes=WEIGHT, cols=(64, 256, 640)):
    """A 2-D C-order array above the parallel threshold (not a multiple of any block)."""
    dtype = draw(st.sampled_from(dtypes))
    c = draw(st.sampled_from(cols))
    r = draw(st.integers(PARALLEL_MIN // c + 1, 2 * PARALLEL_MIN // c))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    return (rng.standard_normal((r, c)) * 2).astype(dtype)


def same_everywhere(fn):
    """fn() under 1, 2 and 3 threads and every SIMD level: one result, bit for bit, and
    the team really had the threads asked for."""
    results = set()
    for level in SIMD_LEVELS:
        for n in (1, 2, 3):
            with litecomp.simd(level), litecomp.threads(n):
                litecomp._C.team_probe()
                results.add(as_bytes(fn()))
                assert litecomp._C.team_probe() == n, (level, n)
    assert len(results) == 1
    return fn()


def bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


# ------------------------------------------------------------------ core
@SMALL
@given(arrays(dtypes=WEIGHT + (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)))
def test_core_equals_reference(xs):
    v, x = xs
    got, want = litecomp.tensor_stats(x), rcore.tensor_stats(v)
    for k, w in want.items():
        g = getattr(got, k)
        assert g == w or (g != g and w != w), (k, g, w)
    bits_equal(litecomp.to_float32(x), v.astype(np.float32))


@LARGE
@given(large())
def test_core_large_same_everywhere(x):
    s = same_everywhere(lambda: litecomp.tensor_stats(x))
    assert s.numel == x.size
    bits_equal(same_everywhere(lambda: litecomp.to_float32(x)), x.astype(np.float32))


# ------------------------------------------------------------------ random
@SMALL
@given(st.integers(0, 3000), st.integers(0, 2 ** 63), st.integers(0, 2 ** 31),
       st.sampled_from([np.float32, np.float64]))
def test_random_equals_reference(n, seed, stream, dtype):
    bits_equal(litecomp.random.bits(n, seed=seed, stream=stream), rrandom.bits(n, seed, stream))
    bits_equal(litecomp.random.uniform(n, -1.0, 2.0, seed=seed, stream=stream, dtype=dtype),
               rrandom.uniform(n, -1.0, 2.0, seed, stream, dtype))
    np.testing.assert_allclose(litecomp.random.normal(n, 0.5, 2.0, seed=seed, stream=stream,
                                                      dtype=np.float64),
                               rrandom.normal(n, 0.5, 2.0, seed, stream, np.float64),
                               rtol=1e-12, atol=1e-12)   # libm exp/log/cos: 1 ulp apart


@LARGE
@given(st.integers(PARALLEL_MIN, 3 * PARALLEL_MIN), st.integers(0, 2 ** 63))
def test_random_large_same_everywhere(n, seed):
    got = same_everywhere(lambda: litecomp.random.uniform(n, seed=seed))
    bits_equal(got, rrandom.uniform(n, 0.0, 1.0, seed, 0, np.float32))


# ------------------------------------------------------------------ prune
@SMALL
@given(arrays(), st.floats(0, 1))
def test_prune_unstructured_equals_reference(xs, amount):
    v, x = xs
    k = round(amount * v.size)
    bits_equal(prune.l1_unstructured(x, amount), rprune.select_lowest(v, k, absolute=True))
    bits_equal(prune.apply(x, prune.l1_unstructured(x, amount)),
               rprune.apply(v, rprune.select_lowest(v, k, absolute=True)))


@SMALL
@given(arrays(min_dims=2, max_dims=2), st.floats(0, 1))
def test_prune_per_row_equals_reference(xs, amount):
    v, x = xs
    k = round(amount * v.shape[1])
    bits_equal(prune.per_row(x, amount), rprune.select_rows(v, k, absolute=True))


@SMALL
@given(arrays(min_dims=1, max_dims=3, last=4), st.sampled_from([(1, 4), (2, 4), (3, 4)]))
def test_prune_nm_equals_reference(xs, nm):
    v, x = xs
    n, m = nm
    bits_equal(prune.nm(x, n, m), rprune.nm_mask(v, n, m, -1))


@SMALL
@given(arrays(min_dims=1, max_dims=3, max_side=5), st.sampled_from([1, 2, np.inf]))
def test_prune_channel_norms_equal_reference(xs, p):
    v, x = xs
    for dim in range(v.ndim):
        np.testing.assert_allclose(prune.channel_norms(x, p, dim),
                                   rprune.channel_norms(v, p, dim), rtol=1e-12)


@LARGE
@given(large())
def test_prune_large_same_everywhere(w):
    k = round(0.37 * w.size)
    bits_equal(same_everywhere(lambda: prune.l1_unstructured(w, 0.37)),
               rprune.select_lowest(w, k, absolute=True))
    bits_equal(same_everywhere(lambda: prune.nm(w, 2, 4)), rprune.nm_mask(w, 2, 4, -1))
    same_everywhere(lambda: prune.per_row(w, 0.5))


# ------------------------------------------------------------------ sparse
@SMALL
@given(arrays(dtypes=(np.float32,), min_dims=1, max_dims=3, max_side=20))
def test_sparse_bits_equal_numpy(xs):
    v, x = xs
    mask = lay_out(v > 0, "strided")
    packed = sparse.pack_bits(mask)
    bits_equal(packed, np.packbits(v > 0, axis=-1, bitorder="little"))
    bits_equal(sparse.unpack_bits(packed, v.shape), v > 0)


@LARGE
@given(large(dtypes=(np.float32,)))
def test_sparse_large_same_everywhere(w):
    m = w > 0
    bits_equal(same_everywhere(lambda: sparse.pack_bits(m)),
               np.packbits(m, axis=-1, bitorder="little"))


# ------------------------------------------------------------------ quant
def _quant_reference(v, bits, scheme, axis, group):
    xm = np.moveaxis(v, axis, -1) if (group and axis is not None) else v
    xm = np.ascontiguousarray(xm).astype(np.float32)
    view = _view(xm.shape, None if group else axis, group)
    mn, mx = rquant.minmax(xm, view)
    s, z = Q.calc_qparams(mn, mx, 0, 2 ** bits - 1, scheme,
                          zero_point_symmetric=2 ** (bits - 1))
    return s, z, rquant.quantize_affine(xm, view, s, z, 0, 2 ** bits - 1)


@SMALL
@given(arrays(min_dims=2, max_dims=3, last=8), st.sampled_from(Q.BITS),
       st.sampled_from(Q.SCHEMES), st.sampled_from(["tensor", "channel", "group"]))
def test_quant_equals_reference(xs, bits, scheme, gran):
    v, x = xs
    if v.size == 0:
        return
    kw = {"tensor": {}, "channel": {"axis": 0}, "group": {"group_size": 8}}[gran]
    q = Q.quantize(x, bits, scheme=scheme, **kw)
    s, z, codes = _quant_reference(v, bits, scheme, kw.get("axis"), kw.get("group_size"))
    bits_equal(q.scales.ravel(), s)
    np.testing.assert_array_equal(q.zero_points.ravel(), z)
    np.testing.assert_array_equal(q.codes(), codes.reshape(q.moved_shape))


@SMALL
@given(arrays(dtypes=(np.float32,)), st.integers(1, 40))
def test_quant_histc_equals_reference(xs, bins):
    v, x = xs
    if v.size == 0:
        with pytest.raises(litecomp.ShapeError):
            Q.histc(x, bins, -1.0, 1.0)
        return
    bits_equal(Q.histc(x, bins, -1.0, 1.0), rquant.histc(v, bins, -1.0, 1.0))


@LARGE
@given(large())
def test_quant_large_same_everywhere(w):
    q = same_everywhere(lambda: Q.quantize(w, 4, group_size=32).data)
    s, z, codes = _quant_reference(w, 4, "symmetric", None, 32)
    bits_equal(q, rquant.pack_codes(codes.reshape(-1, w.shape[-1]).astype(np.uint8), 4)
               .reshape(q.shape))
    same_everywhere(lambda: Q.histc(w, 256, -3.0, 3.0))


# ------------------------------------------------------------------ gguf
GG = ("Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q6_K")     # Q4_1/Q5_1: a zero's sign, see test_gguf


@SMALL
@given(st.sampled_from(GG), st.data())
def test_gguf_equals_reference(name, data):
    """Legacy blocks against litecomp's NumPy reference; the K types (no NumPy quantizer)
    decode against the gguf package's decoder of the same bytes."""
    blk = gguf.FORMATS[name][1]
    v, x = data.draw(arrays(dtypes=(np.float32,), min_dims=1, max_dims=2, max_side=3,
                            last=blk))
    if v.size == 0:
        return
    with np.errstate(all="ignore"):
        got = gguf.quantize(x, name)
        back = gguf.dequantize(got, name)
        if name.endswith("_K"):
            gq = pytest.importorskip("gguf.quants")
            want = gq.dequantize(got, getattr(pytest.importorskip("gguf").GGMLQuantizationType,
                                              name))
            bits_equal(back, want.astype(np.float32).reshape(back.shape))
            return
        bits_equal(got, np.asarray(rgguf.quantize(v, name)).reshape(got.shape))
        np.testing.assert_array_equal(back.ravel(), rgguf.dequantize(got, name))


@LARGE
@given(large(dtypes=(np.float32,), cols=(256, 512)), st.sampled_from(GG))
def test_gguf_large_same_everywhere(w, name):
    got = same_everywhere(lambda: gguf.quantize(w, name))
    same_everywhere(lambda: gguf.dequantize(got, name))


# ------------------------------------------------------------------ codebook
@SMALL
@given(arrays(dtypes=(np.float32, np.float16, ml_dtypes.bfloat16), max_side=40),
       st.sampled_from(["nf4", "fp4"]), st.sampled_from([2, 64, 128]))
def test_codebook_equals_reference(xs, fmt, block):
    v, x = xs
    if v.size == 0:
        return
    q = Q.quantize_4bit(x, fmt, block_size=block)
    data, am = rcb.blockwise4(v, block, cb.CODEBOOKS[fmt])
    bits_equal(q.data, data)
    bits_equal(q.absmax, am)


@LARGE
@given(large(dtypes=(np.float32, ml_dtypes.bfloat16)))
def test_codebook_large_same_everywhere(w):
    data = same_everywhere(lambda: Q.quantize_4bit(w, "nf4").data)
    bits_equal(data, rcb.blockwise4(w, 64, cb.CODEBOOKS["nf4"])[0])


# ------------------------------------------------------------------ distill
@SMALL
@given(arrays(dtypes=(np.float32, np.float64), min_dims=2, max_dims=2, max_side=9),
       st.sampled_from(["kl", "reverse_kl", "jsd", "mse"]), st.sampled_from([1.0, 2.5]))
def test_distill_equals_reference(xs, kind, temperature):
    v, s = xs
    if v.size == 0:
        return
    t = np.roll(v, 1, axis=-1) * 0.5
    if kind == "mse":
        temperature = 1.0                     # mse compares raw values
    got_l, got_g = distill.loss(kind, s, t, temperature=temperature)
    want_l, want_g = rdistill.loss(kind, v, t, temperature=temperature)
    tol = 1e-10 if v.dtype == np.float64 else 3e-5      # as tests/test_distill.py measures
    np.testing.assert_allclose(got_l, want_l, rtol=tol, atol=tol)
    np.testing.assert_allclose(got_g, want_g, rtol=tol * 10, atol=tol)


@LARGE
@given(large(dtypes=(np.float32,), cols=(640,)))
def test_distill_large_same_everywhere(s):
    t = np.roll(s, 3, axis=-1)
    same_everywhere(lambda: distill.loss("kl", s, t, temperature=2.0))


# ------------------------------------------------------------------ matmul
@SMALL
@given(st.integers(1, 9), st.integers(1, 20), st.integers(1, 40), st.integers(0, 2 ** 32),
       st.sampled_from(LAYOUTS))
def test_matmul_equals_reference(m, n, k, seed, layout):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    lin = Q.prepare_linear(Q.quantize(w, 8, axis=0))
    bits_equal(lin(lay_out(x, layout)), rqm.int8_linear(x, lin.qweight, lin.scales))


@LARGE
@given(st.integers(0, 2 ** 32))
def test_matmul_large_same_everywhere(seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((96, 256)).astype(np.float32)
    x = rng.standard_normal((40, 256)).astype(np.float32)    # M*N*K = 983k > threshold
    lin = Q.prepare_linear(Q.quantize(w, 8, axis=0))
    bits_equal(same_everywhere(lambda: lin(x)), rqm.int8_linear(x, lin.qweight, lin.scales))
    b = Q.prepare_linear(Q.quantize(w, 4, group_size=32))
    same_everywhere(lambda: b(x))


def test_large_inputs_cross_the_parallel_threshold():
    """The LARGE strategies draw above LC_PARALLEL_MIN, the C constant below which kernels
    stay on one thread, and a kernel below it really asks for one thread."""
    assert PARALLEL_MIN == litecomp._C.build_info()["parallel_min"] == 1 << 18
    x = np.ones(PARALLEL_MIN - 1, np.float32)
    with litecomp.threads(3):
        litecomp._C.team_probe()
        Q.histc(x, 8, 0.0, 2.0)
        assert litecomp._C.team_probe() == 1
        Q.histc(np.ones(PARALLEL_MIN, np.float32), 8, 0.0, 2.0)
        assert litecomp._C.team_probe() == 3


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
