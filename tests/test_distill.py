import ml_dtypes
import numpy as np
import pytest

import litecomp
from litecomp import distill as D
from litecomp.reference import distill as ref
from conftest import same_for_all_paths

DIST_KINDS = ["kl", "soft_cross_entropy", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl",
              "tvd"]
ALL_KINDS = DIST_KINDS + ["mse", "cosine"]


def _data(rng, n=5, v=333, scale=3.0, dtype=np.float32):
    s = (rng.standard_normal((n, v)) * scale).astype(dtype)
    t = (rng.standard_normal((n, v)) * scale).astype(dtype)
    return s, t


def _close(got, want, rtol, atol):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


def _kind_temps(temps):
    """Every loss with every temperature (mse and cosine take none)."""
    return [(k, T) for k in ALL_KINDS for T in temps if k in DIST_KINDS or T == 1.0]


@pytest.mark.parametrize("kind,temperature", _kind_temps([1.0, 2.0, 0.5]))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_numpy_reference(kind, temperature, dtype, simd_level, rng):
    s, t = _data(rng, dtype=dtype)
    got_l, got_g = D.loss(kind, s, t, temperature=temperature)
    want_l, want_g = ref.loss(kind, s, t, temperature=temperature)
    tol = 1e-11 if dtype == np.float64 else 2e-5
    assert got_g.dtype == dtype and got_g.shape == s.shape
    _close(got_l, want_l, tol, tol)
    _close(got_g, want_g, tol * 10, tol)


@pytest.mark.parametrize("kind,temperature", _kind_temps([1.0, 3.0]))
def test_matches_plain_torch_float64(kind, temperature, rng):
    torch = pytest.importorskip("torch")
    from litecomp.torch import distillation_loss_torch
    s, t = _data(rng, n=4, v=257, dtype=np.float64)
    st = torch.tensor(s, requires_grad=True)
    want = distillation_loss_torch(kind, st, torch.tensor(t), temperature=temperature)
    want.backward()
    got_l, got_g = D.loss(kind, s, t, temperature=temperature)
    assert got_l == pytest.approx(want.item(), rel=1e-11, abs=1e-12)
    np.testing.assert_allclose(got_g, st.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_kl_equals_torch_kl_div_batchmean_times_t2(rng):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    s, t = _data(rng, n=6, v=1000)
    T = 2.0
    st = torch.tensor(s, requires_grad=True)
    want = F.kl_div(F.log_softmax(st / T, -1), F.softmax(torch.tensor(t) / T, -1),
                    reduction="batchmean") * T * T
    want.backward()
    got_l, got_g = D.kl_div(s, t, temperature=T)
    assert got_l == pytest.approx(want.item(), rel=1e-5)
    np.testing.assert_allclose(got_g, st.grad.numpy(), rtol=1e-4, atol=1e-7)
    # [B, S, V]: torch's batchmean divides by B, our "mean" by B*S
    s3, t3 = s.reshape(2, 3, -1), t.reshape(2, 3, -1)
    bm, _ = D.kl_div(s3, t3, temperature=T, reduction="batchmean")
    mean, _ = D.kl_div(s3, t3, temperature=T)
    assert bm == pytest.approx(3 * mean, rel=1e-12)
    tb = F.kl_div(F.log_softmax(torch.tensor(s3) / T, -1), F.softmax(torch.tensor(t3) / T, -1),
                  reduction="batchmean") * T * T
    assert bm == pytest.approx(tb.item(), rel=1e-5)


@pytest.mark.parametrize("kind", DIST_KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
def test_labels_alpha_ignore_index_and_reductions(kind, reduction, rng):
    s, t = _data(rng, n=6, v=50, dtype=np.float64)
    s3, t3 = s.reshape(2, 3, 50), t.reshape(2, 3, 50)
    labels = np.array([[3, -100, 7], [49, 0, -100]])
    kw = dict(temperature=2.0, reduction=reduction, labels=labels, alpha=0.3)
    got_l, got_g = D.loss(kind, s3, t3, **kw)
    want_l, want_g = ref.loss(kind, s3, t3, **kw)
    _close(got_l, want_l, 1e-11, 1e-12)
    _close(got_g, want_g, 1e-10, 1e-12)
    assert np.all(got_g[0, 1] == 0) and np.all(got_g[1, 2] == 0)
    if reduction == "none":
        assert got_l.shape == (2, 3) and got_l[0, 1] == 0.0


def test_ignore_index_custom_and_all_ignored(rng):
    s, t = _data(rng, n=3, v=10)
    l, g = D.kl_div(s, t, labels=[5, 5, 5], ignore_index=5)
    assert l == 0.0 and np.all(g == 0)
    l1, _ = D.kl_div(s, t, labels=[1, 5, 2], ignore_index=5)
    l2, _ = D.kl_div(s[[0, 2]], t[[0, 2]])
    assert l1 == l2


def test_torch_hard_label_combination(rng):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    s, t = _data(rng, n=5, v=40, dtype=np.float64)
    labels = np.array([1, 2, -100, 39, 0])
    T, alpha = 4.0, 0.4
    st = torch.tensor(s, requires_grad=True)
    kd = F.kl_div(F.log_softmax(st / T, -1), F.softmax(torch.tensor(t) / T, -1),
                  reduction="none").sum(-1) * T * T
    keep = torch.tensor(labels != -100)
    ce = F.cross_entropy(st, torch.tensor(labels), reduction="none", ignore_index=-100)
    want = ((alpha * ce + (1 - alpha) * kd) * keep).sum() / keep.sum()
    want.backward()
    l, g = D.kl_div(s, t, temperature=T, labels=labels, alpha=alpha)
    assert l == pytest.approx(want.item(), rel=1e-11)
    np.testing.assert_allclose(g, st.grad.numpy(), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("kind", DIST_KINDS)
def test_extreme_and_masked_logits_never_nan(kind, simd_level):
    s = np.array([[1e4, 0.0, -1e4, -np.inf, 3.0],
                  [-np.inf, 2.0, 1.0, -np.inf, 0.0],
                  [5.0, 5.0, 5.0, 5.0, 5.0]], np.float32)
    t = np.array([[1e4 - 1, 2.0, -np.inf, -np.inf, 1e4],
                  [-np.inf, 0.0, 1.0, -np.inf, -1e4],
                  [-np.inf, 1.0, 0.0, -np.inf, 3.0]], np.float32)
    for T in (1.0, 2.0):
        l, g = D.loss(kind, s, t, temperature=T, reduction="none")
        wl, wg = ref.loss(kind, s, t, temperature=T, reduction="none")
        assert not np.isnan(l).any()
        assert np.array_equal(np.isinf(l), np.isinf(wl))
        # measured over every SIMD level: <= 4.2e-7 relative (jsd), and 5.2e-5 absolute only
        # on losses of ~1e4 (kl at T=1); gradients <= 2.7e-6 relative
        _close(l, wl, 2e-6, 1e-7)
        # a row whose divergence is infinite (reverse KL with student mass where the
        # teacher has -inf) has no meaningful gradient; every other row is NaN-free
        fin = np.isfinite(l)
        assert fin.sum() >= 2 and not np.isnan(g[fin]).any()
        _close(g[fin], wg[fin], 1e-5, 1e-7)


def test_infinite_divergence_when_support_differs():
    s = np.array([[0.0, -np.inf]], np.float32)
    t = np.array([[0.0, 0.0]], np.float32)
    l, g = D.kl_div(s, t)
    assert l == np.inf and np.all(np.isfinite(g))
    l, g = D.reverse_kl(t, s)  # q has mass where p has none
    assert l == np.inf


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_v1_and_n0(kind):
    s = np.array([[3.0], [-2.0]], np.float32)
    t = np.array([[1.0], [7.0]], np.float32)
    l, g = D.loss(kind, s, t)
    wl, wg = ref.loss(kind, s, t)
    _close(l, wl, 1e-6, 1e-7)
    _close(g, wg, 1e-6, 1e-7)
    if kind in DIST_KINDS:
        assert l == 0.0 and np.all(g == 0)
    e = np.zeros((0, 7), np.float32)
    l, g = D.loss(kind, e, e)
    assert l == 0.0 and g.shape == (0, 7)
    l, g = D.loss(kind, e, e, reduction="none")
    assert l.shape == (0,)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("kind", ["kl", "reverse_kl", "jsd"])
def test_half_inputs(dtype, kind, simd_level, rng):
    s, t = _data(rng, n=4, v=1001)
    s, t = s.astype(dtype), t.astype(dtype)
    l, g = D.loss(kind, s, t, temperature=2.0)
    wl, wg = ref.loss(kind, s.astype(np.float64), t.astype(np.float64), temperature=2.0)
    assert g.dtype == np.float32
    _close(l, wl, 2e-5, 1e-6)
    _close(g, wg, 1e-4, 1e-7)
    # mixed: bf16 student, f32 teacher
    l2, _ = D.loss(kind, s, t.astype(np.float32), temperature=2.0)
    assert l2 == pytest.approx(l, rel=1e-12)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_bit_identical_for_every_thread_count_and_simd_path(kind, rng):
    s, t = _data(rng, n=9, v=5000)
    s[0, :10] = -np.inf
    t[1, 7] = -np.inf
    labels = np.array([1, 2, 3, -100, 5, 6, 7, 8, 9])
    alpha = 0.0 if kind in ("mse", "cosine") else 0.25
    T = 1.0 if kind in ("mse", "cosine") else 1.7
    runs = same_for_all_paths(lambda: D.loss(kind, s, t, temperature=T, labels=labels,
                                             alpha=alpha))
    (_, (l0, g0)) = runs[0]
    for key, (l, g) in runs[1:]:
        assert np.float64(l).tobytes() == np.float64(l0).tobytes(), key
        assert g.tobytes() == g0.tobytes(), key


def test_bf16_paths_identical(rng):
    s, t = _data(rng, n=3, v=777)
    s, t = s.astype(ml_dtypes.bfloat16), t.astype(np.float16)
    runs = same_for_all_paths(lambda: D.jsd(s, t, temperature=2.0, beta=0.3))
    for key, (l, g) in runs[1:]:
        assert l == runs[0][1][0] and g.tobytes() == runs[0][1][1].tobytes(), key


def test_jsd_beta_limits_are_forward_and_reverse_kl(rng):
    s, t = _data(rng, n=3, v=64)
    assert D.jsd(s, t, beta=0.0)[0] == D.kl_div(s, t)[0]
    assert D.jsd(s, t, beta=1.0)[0] == D.reverse_kl(s, t)[0]
    assert D.skew_kl(s, t, lam=0.0)[0] == D.kl_div(s, t)[0]
    assert D.skew_reverse_kl(s, t, lam=0.0)[0] == D.reverse_kl(s, t)[0]
    # JSD is symmetric at beta = 0.5 and bounded by log 2
    a, b = D.jsd(s, t)[0], D.jsd(t, s)[0]
    assert a == pytest.approx(b, rel=1e-6) and 0 < a < np.log(2)


def test_skew_lambda_is_lam_and_beta_its_deprecated_spelling(rng):
    import warnings
    s, t = _data(rng, n=3, v=64)
    for kind, fn in (("skew_kl", D.skew_kl), ("skew_reverse_kl", D.skew_reverse_kl)):
        want = fn(s, t, lam=0.3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = D.loss(kind, s, t, lam=0.3)
        assert got[0] == want[0] and got[1].tobytes() == want[1].tobytes()
        assert want[0] != fn(s, t)[0]                       # lam matters (default 0.1)
        with pytest.warns(DeprecationWarning, match="beta= is deprecated; pass lam="):
            old = D.loss(kind, s, t, beta=0.3)
        assert old[0] == want[0] and old[1].tobytes() == want[1].tobytes()
        with pytest.raises(litecomp.ArgumentError, match="^lam: given twice"):
            D.loss(kind, s, t, lam=0.3, beta=0.3)
    with pytest.raises(litecomp.ArgumentError, match="^lam: only skew"):
        D.loss("jsd", s, t, lam=0.3)
    with pytest.raises(litecomp.ArgumentError, match="^beta: only jsd"):
        D.loss("kl", s, t, beta=0.3)


def test_grad_false_out_buffer_and_noncontiguous(rng):
    s, t = _data(rng, n=4, v=100)
    l, g = D.kl_div(s, t, grad=False)
    assert g is None and l == D.kl_div(s, t)[0]
    out = np.full(s.shape, 7.0, np.float32)
    l2, g2 = D.kl_div(s, t, out=out)
    assert g2 is out and np.array_equal(out, D.kl_div(s, t)[1])
    big = np.repeat(s, 2, axis=1)[:, ::2]
    assert D.kl_div(big, t)[0] == l


def test_errors(rng):
    s, t = _data(rng, n=2, v=5)
    with pytest.raises(litecomp.ShapeError, match="teacher"):
        D.kl_div(s, t[:, :4])
    with pytest.raises(litecomp.ArgumentError, match="kind"):
        D.loss("nope", s, t)
    with pytest.raises(litecomp.ArgumentError, match="reduction"):
        D.kl_div(s, t, reduction="avg")
    with pytest.raises(litecomp.ArgumentError, match="temperature"):
        D.kl_div(s, t, temperature=0)
    with pytest.raises(litecomp.ArgumentError, match="labels"):
        D.kl_div(s, t, alpha=0.5)
    with pytest.raises(litecomp.ArgumentError, match="labels"):
        D.kl_div(s, t, labels=[0, 5], alpha=0.5)
    with pytest.raises(litecomp.DTypeError, match="student"):
        D.kl_div(s.astype(np.int32), t)
    bad = s.copy()
    bad[1, 2] = np.nan
    with pytest.raises(litecomp.NonFiniteError, match="student: row 1"):
        D.kl_div(bad, t)
    with pytest.raises(litecomp.NonFiniteError, match="teacher: row 0"):
        D.kl_div(s, np.full_like(t, -np.inf))
    bad[1, 2] = np.inf
    with pytest.raises(litecomp.NonFiniteError):
        D.jsd(bad, t)
    # an ignored bad row is fine
    assert np.isfinite(D.kl_div(bad, t, labels=[0, -100])[0])


# ------------------------------------------------------------------ sparse teachers
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float64])
def test_topk_matches_reference(dtype, simd_level, rng):
    x = (rng.standard_normal((6, 500)) * 2).astype(dtype)
    x[0, :20] = x[0, 20]  # ties: smaller id first
    ids, lps = D.topk(x, 8, temperature=2.0)
    wi, wl = ref.topk(x.astype(np.float64), 8, temperature=2.0)
    assert ids.shape == (6, 8) and np.array_equal(ids, wi)
    # float32 log-probabilities for every input dtype: measured <= 6.3e-8 relative
    np.testing.assert_allclose(lps, wl, rtol=3e-7, atol=0)
    assert np.all(np.diff(lps, axis=1) <= 0)


@pytest.mark.parametrize("mode", ["renormalize", "tail"])
def test_kl_div_topk_matches_reference(mode, simd_level, rng):
    s, t = _data(rng, n=5, v=300, dtype=np.float64)
    T = 2.0
    ids, lps = D.topk(t, 20, temperature=T)
    ids[2, 5] = -1  # an unused slot
    l, g = D.kl_div_topk(s, ids, lps, mode=mode, temperature=T, reduction="none")
    wl, wg = ref.kl_div_topk(s, ids, lps, mode=mode, temperature=T)
    # float64 throughout: measured <= 4.7e-16 relative on l, 1.7e-14 relative / 2e-16
    # absolute on g
    np.testing.assert_allclose(l, wl, rtol=4e-15, atol=0)
    np.testing.assert_allclose(g, wg, rtol=1e-13, atol=1e-15)


def test_kl_div_topk_with_full_k_equals_dense(rng):
    s, t = _data(rng, n=3, v=40, dtype=np.float64)
    ids, lps = D.topk(t, 40, temperature=1.5)
    dense = D.kl_div(s, t, temperature=1.5)
    for mode in ("renormalize", "tail"):
        l, g = D.kl_div_topk(s, ids, lps, mode=mode, temperature=1.5)
        # the dense path keeps float32 probabilities: measured 7.9e-9 relative on l,
        # 3.3e-6 relative / 7.9e-9 absolute on g
        assert l == pytest.approx(dense[0], rel=5e-8)
        np.testing.assert_allclose(g, dense[1], rtol=1e-5, atol=5e-8)


def test_kl_div_topk_paths_identical(rng):
    s, t = _data(rng, n=4, v=3000)
    ids, lps = D.topk(t, 50)
    runs = same_for_all_paths(lambda: D.kl_div_topk(s, ids, lps, mode="tail"))
    for key, (l, g) in runs[1:]:
        assert l == runs[0][1][0] and g.tobytes() == runs[0][1][1].tobytes(), key


@pytest.mark.parametrize("kind", DIST_KINDS)
def test_rows_spanning_many_chunks_with_rising_maxima(kind, simd_level, rng):
    """The online log-sum-exp rescales its sums whenever a later chunk raises the max;
    a leading all -inf chunk exercises the 'no max yet' shift."""
    v = 7000
    ramp = np.linspace(-20, 20, v)
    s = (ramp + rng.standard_normal((3, v))).astype(np.float32)
    t = (ramp[::-1] * 0.5 + rng.standard_normal((3, v))).astype(np.float32)
    t[1] = ramp + rng.standard_normal(v)
    s[2, :2100] = -np.inf
    t[2, :2100] = -np.inf
    labels = np.array([5, v - 1, 2500])
    for T in (1.0, 3.0):
        got = D.loss(kind, s, t, temperature=T, labels=labels, alpha=0.2, reduction="none")
        want = ref.loss(kind, s, t, temperature=T, labels=labels, alpha=0.2, reduction="none")
        _close(got[0], want[0], 2e-5, 1e-6)
        _close(got[1], want[1], 1e-4, 1e-8)


def test_attention_kl_matches_torch_with_causal_mask(rng):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    b, h, n = 2, 3, 6
    mask = np.triu(np.ones((n, n), bool), 1)
    ss = rng.standard_normal((b, h, n, n))
    ts = rng.standard_normal((b, h, n, n))
    ss[..., mask] = -np.inf
    ts[..., mask] = -np.inf
    st = torch.tensor(ss, requires_grad=True)
    lq, lp = F.log_softmax(st, -1), F.log_softmax(torch.tensor(ts), -1)
    # plain F.kl_div turns the masked 0 * (-inf) into NaN ...
    assert torch.isnan(F.kl_div(lq, lp, reduction="sum", log_target=True))
    # ... so the reference masks explicitly
    keep = torch.tensor(~mask).expand(b, h, n, n)
    want = torch.where(keep, lp.exp() * (lp - lq), 0.0).sum() / (b * h * n)
    want.backward()
    got, g = D.attention_kl(ss, ts)
    assert got == pytest.approx(want.item(), rel=1e-11)
    np.testing.assert_allclose(g, st.grad.numpy(), rtol=1e-9, atol=1e-14)
    assert np.all(g[..., mask] == 0)


def test_hidden_state_losses_3d(rng):
    s, t = _data(rng, n=6, v=48, dtype=np.float64)
    s3, t3 = s.reshape(2, 3, 48), t.reshape(2, 3, 48)
    for kind in ("mse", "cosine"):
        got = D.loss(kind, s3, t3)
        want = ref.loss(kind, s3, t3)
        _close(got[0], want[0], 1e-12, 1e-14)
        _close(got[1], want[1], 1e-10, 1e-14)
    zero = np.zeros((1, 4))
    l, g = D.cosine(zero, np.ones((1, 4)))
    assert l == 1.0 and np.all(np.isfinite(g))


def test_topk_identical_for_every_path(rng):
    x = (rng.standard_normal((5, 4000)) * 3).astype(np.float32)
    runs = same_for_all_paths(lambda: D.topk(x, 16, temperature=1.5))
    for key, (ids, lps) in runs[1:]:
        assert np.array_equal(ids, runs[0][1][0]), key
        assert lps.tobytes() == runs[0][1][1].tobytes(), key


def test_kl_div_topk_errors(rng):
    s, t = _data(rng, n=2, v=30)
    ids, lps = D.topk(t, 4)
    with pytest.raises(litecomp.ArgumentError, match="ids"):
        D.kl_div_topk(s, np.array([[1, 1, 2, 3], [0, 1, 2, 3]]), lps)
    with pytest.raises(litecomp.ArgumentError, match="ids"):
        D.kl_div_topk(s, ids + 30, lps)
    with pytest.raises(litecomp.ShapeError, match="ids"):
        D.kl_div_topk(s, ids[:, :3], lps)
    with pytest.raises(litecomp.ArgumentError, match="logprobs"):
        D.kl_div_topk(s, ids, -lps + 1)
    with pytest.raises(litecomp.ArgumentError, match="mode"):
        D.kl_div_topk(s, ids, lps, mode="bucket")
    with pytest.raises(litecomp.ArgumentError, match="k"):
        D.topk(t, 31)
