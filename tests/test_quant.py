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
    s, z = ref.calc_qparams(mn, mx, 0, 2 ** bits - 1, scheme, 2 ** (bits - 1))
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
    # error bound, per slot: half a step (the symmetric scheme's clipped amax sits exactly
    # there) plus the float32 rounding of (q - zp) * s; measured at most 0.5 + 1.0e-5 steps
    # (8 bits, 83 eps), bound 0.5 + 2**bits eps (256 eps at 8 bits)
    a, c, b, _ = view
    ym = y if gran != "group-axis0" else y.T
    err = np.abs(ym.reshape(a, c, b) - xm.reshape(a, c, b)) / ref._expand(s, view)
    assert err.max() <= 0.5 + 2 ** bits * np.finfo(np.float32).eps
    assert err.max() >= 0.45  # the bound is reached: a step really is s


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
    want_s, want_z = ref.calc_qparams(lo, hi, 0, 15, "affine")
    assert s[0] == want_s[0] and z[0] == want_z[0]
    np.testing.assert_array_equal(q.codes(), np.clip(np.rint(x * (np.float32(1) / s[0])) + z[0],
                                                     0, 15))
    with pytest.raises(litecomp.ShapeError, match="^qparams"):
        Q.quantize(x, 4, axis=0, qparams=(s, z))
    with pytest.raises(litecomp.ArgumentError, match="^bits"):
        obs.qparams(bits=9)


def test_last_axis_channels_at_scale():
    """Per-channel along the last axis (runs of one value) stays fast and exact."""
    x = litecomp.random.normal((20000, 300), seed=13)
    q = Q.quantize(x, 8, axis=1, scheme="affine")
    mn, mx = x.min(0), x.max(0)
    s, z = ref.calc_qparams(mn, mx, 0, 255, "affine")
    np.testing.assert_array_equal(q.scales, s)
    np.testing.assert_array_equal(q.codes(), np.clip(np.rint(x * (np.float32(1) / s)) + z, 0, 255))
    obs = Q.PerChannelMinMaxObserver(axis=1).update(x)
    np.testing.assert_array_equal(obs.min_val, mn)


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
