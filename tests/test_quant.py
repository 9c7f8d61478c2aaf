"""Uniform quantization: reference comparisons, torch.ao parity, packing, casts, errors."""

import ml_dtypes
import numpy as np
import pytest

import litecomp
import litecomp.quant as Q
from litecomp.quant.core import _view
from litecomp.reference import quant as ref

from conftest import same_for_all_paths

WEIGHT = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]


def data(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 0.05 + 0.01).astype(dtype)


# ------------------------------------------------------------------ quantize / QTensor
@pytest.mark.parametrize("bits", Q.BITS)
@pytest.mark.parametrize("scheme", Q.SCHEMES)
@pytest.mark.parametrize("gran", ["tensor", "channel0", "channel1", "group", "group-axis0"])
def test_quantize_matches_reference(bits, scheme, gran, simd_level):
    x = data((24, 64), seed=bits)
    kw = {"tensor": {}, "channel0": {"axis": 0}, "channel1": {"axis": 1},
          "group": {"group_size": 16}, "group-axis0": {"group_size": 8, "axis": 0}}[gran]
    q = Q.quantize(x, bits, scheme=scheme, **kw)
    # the reference: same qparams from the reference min/max, same codes
    xm = x if gran != "group-axis0" else np.ascontiguousarray(x.T)
    axis = kw.get("axis") if "group_size" not in kw else None
    view = _view(xm.shape, axis, kw.get("group_size"))
    mn, mx = ref.minmax(xm, view)
    s, z = Q.calc_qparams(mn, mx, 0, 2 ** bits - 1, scheme, zero_point_symmetric=2 ** (bits - 1))
    np.testing.assert_array_equal(q.scales.ravel(), s)
    np.testing.assert_array_equal(q.zero_points.ravel(), z)
    codes = ref.quantize_affine(xm, view, s, z, 0, 2 ** bits - 1)
    np.testing.assert_array_equal(q.codes(), codes.reshape(q.moved_shape))
    rows = codes.reshape(-1, xm.shape[-1])
    if bits < 8:
        np.testing.assert_array_equal(q.data, ref.pack_codes(rows, bits))
    assert q.data.nbytes == rows.shape[0] * ((rows.shape[1] * bits + 7) // 8)
    y = q.dequantize()
    assert y.shape == x.shape and y.dtype == np.float32
    want = ref.dequantize_affine(codes, view, s, z)
    if gran == "group-axis0":
        want = want.T
    np.testing.assert_array_equal(y, want)
    # error bound: at most half a step inside the range
    step = np.max(s)
    assert np.abs(y - x).max() <= step * 0.5 + 1e-7 or bits <= 3


@pytest.mark.parametrize("dtype", WEIGHT)
def test_quantize_dtypes(dtype):
    x = data((8, 32), dtype=dtype)
    q = Q.quantize(x, 4, group_size=32)
    q32 = Q.quantize(x.astype(np.float32), 4, group_size=32)
    np.testing.assert_array_equal(q.data, q32.data)
    np.testing.assert_array_equal(q.scales, q32.scales)
    assert q.dequantize(dtype).dtype == np.dtype(dtype)


def test_zero_stays_zero_and_sqnr_grows_with_bits():
    x = data((32, 128))
    x[:, ::3] = 0
    last = -1
    for bits in Q.BITS:
        for scheme in Q.SCHEMES:
            y = Q.quantize(x, bits, scheme=scheme, axis=0).dequantize()
            assert (y[:, ::3] == 0).all()
        e = Q.error_report("x", x, Q.quantize(x, bits, axis=0).dequantize())
        assert e.sqnr_db > last
        last = e.sqnr_db
    assert last > 40  # int8 per channel


def test_odd_bits_pack_order():
    codes = np.arange(10, dtype=np.uint8).reshape(1, 10) % 8
    packed = Q.pack_codes(codes, 3)
    stream = np.unpackbits(packed, bitorder="little")
    vals = [int(sum(stream[3 * i + b] << b for b in range(3))) for i in range(10)]
    assert vals == list(codes[0])
    np.testing.assert_array_equal(Q.unpack_codes(packed, 10, 3), codes)
    # 4 bits: element 0 in the low nibble (torch quint4x2 / ggml order)
    assert Q.pack_codes(np.array([[1, 2]], np.uint8), 4)[0, 0] == 0x21


def test_state_dict_roundtrip():
    x = data((6, 4, 32))
    for kw in [{}, {"axis": 1}, {"group_size": 8}, {"group_size": 2, "axis": 1}]:
        q = Q.quantize(x, 5, scheme="affine", **kw)
        sd = q.to_state_dict("layer.weight")
        assert all(isinstance(v, np.ndarray) for v in sd.values())
        q2 = Q.QTensor.from_state_dict(sd, "layer.weight")
        np.testing.assert_array_equal(q2.dequantize(), q.dequantize())
        assert q2.shape == x.shape
    sd["layer.weight.qmeta"] = sd["layer.weight.qmeta"][:-1]
    with pytest.raises(litecomp.FormatError):
        Q.QTensor.from_state_dict(sd, "layer.weight")


def test_threads_and_simd_identical():
    x = litecomp.random.normal((300, 1000), seed=5)
    outs = same_for_all_paths(lambda: (lambda q: (q.data.tobytes(), q.scales.tobytes()))(
        Q.quantize(x, 4, scheme="affine", group_size=100)))
    assert len({o for _, o in outs}) == 1
    outs = same_for_all_paths(lambda: Q.quantize(x, 8, axis=0).data.tobytes())
    assert len({o for _, o in outs}) == 1


def test_bad_input():
    x = data((4, 30))
    with pytest.raises(litecomp.ArgumentError, match="^bits"):
        Q.quantize(x, 7)
    with pytest.raises(litecomp.ShapeError, match="^group_size"):
        Q.quantize(x, 4, group_size=8)
    with pytest.raises(litecomp.ShapeError, match="^x: is empty"):
        Q.quantize(np.zeros((0, 4), np.float32))
    with pytest.raises(litecomp.ArgumentError, match="^axis"):
        Q.quantize(x, axis=2)
    with pytest.raises(litecomp.ArgumentError, match="^scheme"):
        Q.quantize(x, scheme="asym")
    with pytest.raises(litecomp.DTypeError):
        Q.quantize(np.arange(4))
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[1, 2] = bad
        with pytest.raises(litecomp.NonFiniteError):
            Q.quantize(y, 8, axis=0)
    y = np.ones(100, np.float32)
    y[40] = np.nan
    for level in litecomp.available_simd():
        with litecomp.simd(level), pytest.raises(litecomp.NonFiniteError):
            Q.fake_quantize(y, 0.1, 0, -128, 127)
    with pytest.raises(litecomp.ArgumentError, match="^scale"):
        Q.fake_quantize(x, 0.0, 0, -128, 127)
    with pytest.raises(litecomp.ArgumentError, match="^scale"):
        Q.fake_quantize(x, 1e-40, 0, -128, 127)
    with pytest.raises(litecomp.ArgumentError, match="^scales"):
        Q.quantize_per_tensor(x, 1e-40, 0, "qint8")
    with pytest.raises(litecomp.ArgumentError, match="^dtype"):
        Q.quantize_per_tensor(x, 0.1, 0, "qint4")
    with pytest.raises(litecomp.ArgumentError, match="^zero_points"):
        Q.quantize_per_tensor(x, 0.1, 300, "quint8")
    with pytest.raises(litecomp.ShapeError, match="^scales"):
        Q.quantize_per_channel(x, np.ones(3), np.zeros(3), 0, "qint8")


# ------------------------------------------------------------------ float casts
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
                                   ml_dtypes.float8_e5m2])
def test_cast_matches_ml_dtypes(dtype):
    rng = np.random.default_rng(1)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 448, 464, 465, 500, 57344, 61439,
                        61440, 65504, 65519, 65520, 1e-8, 6e-8, 3e-5, 2 ** -9, 2 ** -10,
                        3 * 2 ** -11, 1e-45, 3.4e38], np.float32)
    x = np.concatenate([special, -special, (rng.standard_normal(20000) * np.exp(
        rng.uniform(-30, 20, 20000))).astype(np.float32)])
    with np.errstate(over="ignore"):
        want = x.astype(dtype)
    raw = np.uint8 if want.itemsize == 1 else np.uint16
    np.testing.assert_array_equal(Q.cast(x, dtype).view(raw), want.view(raw))
    np.testing.assert_array_equal(Q.cast(x.astype(np.float64), dtype).view(raw),
                                  x.astype(np.float64).astype(dtype).view(raw)
                                  if dtype is not np.float16 else want.view(raw))


def test_cast_saturate():
    x = np.array([1e6, -1e6, np.inf, np.nan], np.float32)
    e4 = Q.cast(x, ml_dtypes.float8_e4m3fn, saturate=True).astype(np.float32)
    assert e4[0] == 448 and e4[1] == -448 and np.isnan(e4[2]) and np.isnan(e4[3])
    e5 = Q.cast(x, ml_dtypes.float8_e5m2, saturate=True).astype(np.float32)
    assert e5[0] == 57344 and e5[2] == np.inf
    h = Q.cast(x, np.float16, saturate=True).astype(np.float32)
    assert h[0] == 65504 and h[2] == np.inf


# ------------------------------------------------------------------ torch parity
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _tq(dtype):
    return getattr(torch, dtype)


@pytest.mark.parametrize("dtype", ["qint8", "quint8", "quint4x2"])
def test_quantize_per_tensor_matches_torch(dtype, simd_level):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((37, 61)) * 3).astype(np.float32)
    x.ravel()[:200] = np.arange(-100, 100) * 0.05  # exact ties at scale 0.1
    for scale, zp in [(0.1, 0), (0.05, 3), (0.0123, 10), (1e-3, 7)]:
        if dtype == "qint8":
            zp -= 5
        want = torch.quantize_per_tensor(torch.from_numpy(x), scale, zp, _tq(dtype)).int_repr()
        got = Q.quantize_per_tensor(x, scale, zp, _tq(dtype))
        np.testing.assert_array_equal(got.reshape(want.shape), want.numpy())
        assert got.dtype == want.numpy().dtype


@pytest.mark.parametrize("dtype", ["qint8", "quint8"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_quantize_per_channel_matches_torch(dtype, axis, simd_level):
    rng = np.random.default_rng(axis)
    x = (rng.standard_normal((5, 6, 40)) * 2).astype(np.float32)
    n = x.shape[axis]
    s = rng.uniform(0.005, 0.05, n)
    z = rng.integers(0, 10, n) - (5 if dtype == "qint8" else 0)
    want = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(s),
                                      torch.from_numpy(z), axis, _tq(dtype)).int_repr()
    np.testing.assert_array_equal(Q.quantize_per_channel(x, s, z, axis, dtype), want.numpy())


def _observer_cases():
    O = pytest.importorskip("torch.ao.quantization.observer")
    for lc, tc, per_channel in [(Q.MinMaxObserver, O.MinMaxObserver, False),
                                (Q.MovingAverageMinMaxObserver, O.MovingAverageMinMaxObserver,
                                 False),
                                (Q.PerChannelMinMaxObserver, O.PerChannelMinMaxObserver, True),
                                (Q.MovingAveragePerChannelMinMaxObserver,
                                 O.MovingAveragePerChannelMinMaxObserver, True)]:
        for dtype in ("qint8", "quint8"):
            for scheme in ("affine", "symmetric"):
                for rr in (False, True):
                    if scheme == "symmetric" and rr and dtype == "quint8":
                        continue
                    yield lc, tc, per_channel, dtype, scheme, rr


@pytest.mark.parametrize("case", list(_observer_cases()),
                         ids=lambda c: f"{c[0].__name__}-{c[3]}-{c[4]}-rr{int(c[5])}")
def test_observers_match_torch(case):
    lc, tc, per_channel, dtype, scheme, rr = case
    qs = {("affine", False): torch.per_tensor_affine, ("symmetric", False):
          torch.per_tensor_symmetric, ("affine", True): torch.per_channel_affine,
          ("symmetric", True): torch.per_channel_symmetric}[scheme, per_channel]
    t = tc(dtype=_tq(dtype), qscheme=qs, reduce_range=rr)
    ours = lc(dtype=dtype, scheme=scheme, reduce_range=rr)
    rng = np.random.default_rng(9)
    for i in range(4):
        b = (rng.standard_normal((6, 33)) * (i + 1) + 0.3 * (-1) ** i).astype(np.float32)
        if i == 2:
            b[0] = np.abs(b[0])  # a channel that never goes negative
        t(torch.from_numpy(b))
        ours.update(b)
    ts, tz = t.calculate_qparams()
    s, z = ours.qparams()
    np.testing.assert_array_equal(s.view(np.uint32), ts.numpy().astype(np.float32).view(np.uint32))
    np.testing.assert_array_equal(z, tz.numpy())


def test_observer_edge_cases():
    O = pytest.importorskip("torch.ao.quantization.observer")
    s, z = Q.MinMaxObserver().qparams()
    assert s[0] == 1.0 and z[0] == 0
    t = O.MinMaxObserver()
    t(torch.zeros(10))
    o = Q.MinMaxObserver().update(np.zeros(10, np.float32))
    assert o.qparams()[0][0] == t.calculate_qparams()[0][0]  # eps floor
    with pytest.raises(litecomp.ArgumentError, match="^reduce_range"):
        Q.MinMaxObserver("quint8", "symmetric", True)
    with pytest.raises(litecomp.NonFiniteError):
        Q.MinMaxObserver().update(np.array([1.0, np.nan], np.float32))


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantize_matches_torch(per_channel, simd_level):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((8, 50)) * 2).astype(np.float32)
    x[0, :20] = np.arange(20) * 0.05  # ties
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    if per_channel:
        s = rng.uniform(0.01, 0.05, 8).astype(np.float32)
        z = rng.integers(-10, 10, 8).astype(np.int32)
        y = torch.fake_quantize_per_channel_affine(xt, torch.from_numpy(s),
                                                   torch.from_numpy(z), 0, -128, 127)
        kw = {"axis": 0}
    else:
        s, z, kw = np.float32(0.1), 3, {}
        y = torch.fake_quantize_per_tensor_affine(xt, float(s), z, -128, 127)
    y.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(Q.fake_quantize(x, s, z, -128, 127, **kw), y.detach().numpy())
    np.testing.assert_array_equal(Q.fake_quantize_backward(x, dy, s, z, -128, 127, **kw),
                                  xt.grad.numpy())


def test_lsq_grads_match_torch():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 300)) * 2).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    st = torch.tensor([0.02], requires_grad=True)
    zt = torch.tensor([3.0], requires_grad=True)
    y = torch._fake_quantize_learnable_per_tensor_affine(xt, st, zt, 0, 255, 1.0)
    y.backward(torch.from_numpy(dy))
    dx, ds, dz = Q.fake_quantize_backward(x, dy, 0.02, 3, 0, 255, learnable=True)
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    np.testing.assert_allclose(ds, st.grad.numpy(), rtol=1e-4)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-4)
    big = litecomp.random.normal((8, 70000), seed=3)  # large enough to run threaded
    dbig = litecomp.random.normal((8, 70000), seed=4)
    outs = same_for_all_paths(lambda: Q.fake_quantize_backward(
        big, dbig, 0.02, 3, 0, 255, learnable=True)[1].tobytes())
    assert len({o for _, o in outs}) == 1
    outs = same_for_all_paths(lambda: b"".join(r.tobytes() for r in Q.fake_quantize_backward(
        big, dbig, np.full(8, 0.02, np.float32), np.full(8, 3, np.int32), 0, 255, axis=0,
        learnable=True)))
    assert len({o for _, o in outs}) == 1


def test_torch_fake_quantize_module():
    from litecomp.torch import FakeQuantize
    rng = np.random.default_rng(6)
    x = torch.from_numpy((rng.standard_normal((4, 64)) * 2).astype(np.float32))
    for axis in (None, 0):
        fq = FakeQuantize("qint8", "symmetric", axis=axis)
        xg = x.clone().requires_grad_()
        y = fq(xg)
        y.sum().backward()
        s = fq.scale.double() if axis is not None else float(fq.scale)
        z = fq.zero_point
        xr = x.clone().requires_grad_()
        want = (torch.fake_quantize_per_channel_affine(xr, fq.scale, z, 0, -128, 127)
                if axis is not None else
                torch.fake_quantize_per_tensor_affine(xr, s, int(z), -128, 127))
        want.sum().backward()
        assert torch.equal(y, want) and torch.equal(xg.grad, xr.grad)
    # learnable: gradients reach scale and zero point, and the torch path agrees with C
    fq = FakeQuantize("quint8", learnable=True)
    xg = x.clone().requires_grad_()
    fq(xg).pow(2).sum().backward()
    assert fq.scale.grad is not None and fq.zero_point.grad is not None
    x64 = x.double().requires_grad_()
    fq2 = FakeQuantize("quint8", learnable=True)
    fq2(x.clone())  # initialise from the same data
    fq2.scale.grad = None
    y64 = fq2(x64)  # float64 -> torch formulas
    y64.pow(2).sum().backward()
    np.testing.assert_allclose(fq2.scale.grad.numpy(), fq.scale.grad.numpy(), rtol=1e-3)


def test_static_quantization_with_observer_qparams():
    rng = np.random.default_rng(10)
    calib = [(rng.standard_normal((16, 32)) * 0.5).astype(np.float32) for _ in range(3)]
    obs = Q.MinMaxObserver(scheme="affine")
    for b in calib:
        obs.update(b)
    s, z = obs.qparams(bits=4)
    x = (rng.standard_normal((16, 32)) * 0.5).astype(np.float32)
    q = Q.quantize(x, 4, scheme="affine", qparams=(s, z))
    assert q.scales[0] == s[0] and q.zero_points[0] == z[0]
    lo = min(b.min() for b in calib)
    hi = max(b.max() for b in calib)
    want_s, want_z = Q.calc_qparams(lo, hi, 0, 15, "affine")
    assert s[0] == want_s[0] and z[0] == want_z[0]
    np.testing.assert_array_equal(q.codes(), np.clip(np.rint(x * (np.float32(1) / s[0])) + z[0],
                                                     0, 15))
    with pytest.raises(litecomp.ShapeError, match="^qparams"):
        Q.quantize(x, 4, axis=0, qparams=(s, z))
    with pytest.raises(litecomp.ArgumentError, match="^bits"):
        obs.qparams(bits=9)


@pytest.mark.parametrize("axis", [0, 1])
def test_lsq_per_channel_grads_match_torch(axis):
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((6, 70)) * 2).astype(np.float32)  # axis 1: runs of one value
    dy = rng.standard_normal(x.shape).astype(np.float32)
    n = x.shape[axis]
    s = rng.uniform(0.01, 0.03, n).astype(np.float32)
    z = rng.integers(0, 20, n).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    st = torch.from_numpy(s).requires_grad_()
    zt = torch.from_numpy(z).requires_grad_()
    y = torch._fake_quantize_learnable_per_channel_affine(xt, st, zt, axis, 0, 255, 1.0)
    y.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(Q.fake_quantize(x, s, z.astype(np.int32), 0, 255, axis=axis),
                                  y.detach().numpy())
    dx, ds, dz = Q.fake_quantize_backward(x, dy, s, z.astype(np.int32), 0, 255, axis=axis,
                                          learnable=True)
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    np.testing.assert_allclose(ds, st.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-4, atol=1e-6)
    outs = same_for_all_paths(lambda: Q.fake_quantize_backward(
        x, dy, s, z.astype(np.int32), 0, 255, axis=axis, learnable=True)[1].tobytes())
    assert len({o for _, o in outs}) == 1


def test_last_axis_channels_at_scale():
    """Per-channel along the last axis (runs of one value) stays fast and exact."""
    x = litecomp.random.normal((20000, 300), seed=13)
    q = Q.quantize(x, 8, axis=1, scheme="affine")
    mn, mx = x.min(0), x.max(0)
    s, z = Q.calc_qparams(mn, mx, 0, 255, "affine")
    np.testing.assert_array_equal(q.scales, s)
    np.testing.assert_array_equal(q.codes(), np.clip(np.rint(x * (np.float32(1) / s)) + z, 0, 255))
    obs = Q.PerChannelMinMaxObserver(axis=1).update(x)
    np.testing.assert_array_equal(obs.min_val, mn)

