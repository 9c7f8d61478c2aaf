"""Uniform quantization against torch.ao: quantize_per_tensor / per_channel, observers, fake
quantization and its gradients (skipped without torch; tests/test_quant.py has the rest)."""

import numpy as np
import pytest

import litecomp
import litecomp.quant as Q

from conftest import same_for_all_paths

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
    # the thread comparison on 300,000 elements, above LC_PARALLEL_MIN (2**18)
    shape = (500, 600)
    xb = (rng.standard_normal(shape) * 2).astype(np.float32)
    dyb = rng.standard_normal(shape).astype(np.float32)
    sb = rng.uniform(0.01, 0.03, shape[axis]).astype(np.float32)
    zb = rng.integers(0, 20, shape[axis]).astype(np.int32)
    outs = same_for_all_paths(lambda: b"".join(r.tobytes() for r in Q.fake_quantize_backward(
        xb, dyb, sb, zb, 0, 255, axis=axis, learnable=True)))
    assert len({o for _, o in outs}) == 1


@pytest.mark.parametrize("bits", Q.BITS)
@pytest.mark.parametrize("scheme", Q.SCHEMES)
def test_quantize_qparams_are_torch_observers(bits, scheme):
    """quantize's scales (and affine zero points) for codes [0, 2**bits - 1] are what
    torch.ao's observers compute with quant_min=0, quant_max=2**bits - 1: per tensor, per
    channel, and per group (a per-channel observer over the rows of groups).  Symmetric zero
    points differ by design: litecomp fixes 2**(bits-1), torch's custom range (qmin+qmax)//2."""
    O = pytest.importorskip("torch.ao.quantization.observer")
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal((12, 64)) * 0.05 + 0.01).astype(np.float32)
    x[1] = np.abs(x[1])  # a channel without negatives
    kw = dict(dtype=torch.quint8, quant_min=0, quant_max=2 ** bits - 1)
    sym = scheme == "symmetric"
    for qkw, obs, arr in [
            ({}, O.MinMaxObserver(qscheme=torch.per_tensor_symmetric if sym else
                                  torch.per_tensor_affine, **kw), x),
            ({"axis": 0}, O.PerChannelMinMaxObserver(ch_axis=0, qscheme=torch.per_channel_symmetric
                                                     if sym else torch.per_channel_affine, **kw), x),
            ({"group_size": 16}, O.PerChannelMinMaxObserver(
                ch_axis=0, qscheme=torch.per_channel_symmetric if sym else
                torch.per_channel_affine, **kw), x.reshape(-1, 16))]:
        q = Q.quantize(x, bits, scheme=scheme, **qkw)
        obs(torch.from_numpy(arr))
        ts, tz = obs.calculate_qparams()
        np.testing.assert_array_equal(q.scales.reshape(-1).view(np.uint32),
                                      ts.numpy().astype(np.float32).view(np.uint32))
        if not sym:
            np.testing.assert_array_equal(q.zero_points.reshape(-1), tz.numpy())
