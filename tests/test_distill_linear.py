"""litecomp.distill.fused_linear: the lm_head matmul fused with the distillation losses."""

import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import litecomp
from litecomp import distill as D
from litecomp.errors import ArgumentError, NonFiniteError, ShapeError
from litecomp.reference import distill as ref

KINDS = ["kl", "soft_cross_entropy", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd",
         "mse", "cosine"]
DIST = KINDS[:7]

# Measured (5 seeds, N=45, d=24, V=333, chunk 8, labels with every 4th row ignored, alpha 0.3,
# every kind): fused vs the unfused float32 path, max |diff| / max |unfused|: loss 2.7e-9,
# gradients 5.4e-7 (hidden), 4.3e-7 (weight), 2.5e-7 (bias).  The unfused float32 path is
# itself 1.1e-6 from float64.  Tolerances: about 4x the measured -- for the loss, 4x of
# what numpy 2.4.6's OpenBLAS gives (1.8e-8, the head-kl case: its float32 GEMM blocking
# sums the logits in another order than the build the 2.7e-9 was measured on).
LOSS_RTOL = 1e-7
GRAD_RTOL = 2e-6


def _problem(rng, n=45, d=24, dt=40, v=333, lead=None, dtype=np.float32):
    h = rng.standard_normal((n, d)).astype(dtype)
    w = (rng.standard_normal((v, d)) * 0.5).astype(dtype)
    b = rng.standard_normal(v).astype(dtype)
    th = rng.standard_normal((n, dt)).astype(dtype)
    tw = (rng.standard_normal((v, dt)) * 0.5).astype(dtype)
    tb = rng.standard_normal(v).astype(dtype)
    lab = rng.integers(0, v, n)
    lab[::4] = -100
    if lead is not None:
        h, th, lab = h.reshape(lead + (d,)), th.reshape(lead + (dt,)), lab.reshape(lead)
    return h, w, b, (th, tw, tb), lab


def _options(kind):
    if kind in ("mse", "cosine"):
        return dict(kind=kind)
    return dict(kind=kind, temperature=2.0, alpha=0.3)


def _unfused(h, w, teacher, *, student_bias=None, **kw):
    """The same loss on materialised float32 logits: distill.loss + NumPy matmuls."""
    h32, w32 = h.astype(np.float32), w.astype(np.float32)
    s = h32 @ w32.T
    if student_bias is not None:
        s = s + student_bias.astype(np.float32)
    if isinstance(teacher, tuple):
        t = teacher[0].astype(np.float32) @ teacher[1].astype(np.float32).T
        if len(teacher) == 3:
            t = t + teacher[2].astype(np.float32)
    else:
        t = teacher
    value, g = D.loss(kw.pop("kind"), s, t, **kw)
    g2, h2 = g.reshape(-1, w.shape[0]), h32.reshape(-1, w.shape[1])
    return (value, (g2 @ w32).reshape(h.shape), g2.T @ h2,
            None if student_bias is None else g2.sum(0))


def _assert_same(got, want, loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL):
    if np.ndim(want[0]):
        np.testing.assert_allclose(got[0], want[0], rtol=loss_rtol * 10,
                                   atol=loss_rtol * np.abs(want[0]).max())
    else:
        assert got[0] == pytest.approx(want[0], rel=loss_rtol, abs=1e-12)
    for g, w in zip(got[1:], want[1:]):
        if w is None:
            assert g is None
            continue
        assert g.shape == w.shape
        err = np.abs(g.astype(np.float64) - w).max()
        assert err <= grad_rtol * np.abs(w).max(), (err, np.abs(w).max())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("teacher_form", ["logits", "head"])
def test_same_loss_and_gradients_as_the_unfused_path(kind, teacher_form, rng):
    h, w, b, thead, lab = _problem(rng)
    teacher = thead if teacher_form == "head" else (thead[0] @ thead[1].T + thead[2])
    opts = _options(kind)
    got = D.fused_linear(h, w, teacher, student_bias=b, labels=lab, chunk=8, **opts)
    want = _unfused(h, w, teacher, student_bias=b, labels=lab, **opts)
    _assert_same(got, want)
    assert (got.grad_hidden[lab == -100] == 0).all()       # ignored rows: no gradient
    # and the float64 definition (the unfused float32 path is 1.1e-6 from it, measured)
    want64 = ref.fused_linear(h, w, teacher, student_bias=b, labels=lab, **opts)
    _assert_same(got, want64, loss_rtol=1e-6, grad_rtol=5e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_float64_matches_the_float64_definition(kind, rng):
    h, w, b, thead, lab = _problem(rng, dtype=np.float64)
    opts = _options(kind)
    got = D.fused_linear(h, w, thead, student_bias=b, labels=lab, chunk=7, **opts)
    assert got.grad_weight.dtype == np.float64
    want = ref.fused_linear(h, w, thead, student_bias=b, labels=lab, **opts)
    # measured 3e-15 (loss) and 2e-15 (gradients) relative; libm exp/log and BLAS order
    _assert_same(got, want, loss_rtol=1e-13, grad_rtol=1e-13)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_inputs(dtype, kind, rng):
    h, w, b, thead, lab = _problem(rng, dtype=dtype)
    opts = _options(kind)
    got = D.fused_linear(h, w, thead, student_bias=b, labels=lab, chunk=16, **opts)
    assert got.grad_hidden.dtype == got.grad_weight.dtype == np.float32
    # the same computation on the inputs widened to float32 (exact)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    want = _unfused(f32(h), f32(w), tuple(map(f32, thead)), student_bias=f32(b), labels=lab,
                    **opts)
    _assert_same(got, want)


def test_bf16_teacher_logits_go_to_the_kernel_as_they_are(rng):
    h, w, b, thead, lab = _problem(rng)
    t = (thead[0] @ thead[1].T).astype(ml_dtypes.bfloat16)
    got = D.fused_linear(h, w, t, kind="kl", temperature=2.0, chunk=10)
    want = _unfused(h, w, t, kind="kl", temperature=2.0)
    _assert_same(got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_any_ignore_index(kind, rng):
    """ignore_index=-1 marks the same rows as the default -100 did; a row labelled -100 is
    then an out-of-range label, which is an error naming the caller's row."""
    h, w, b, thead, lab = _problem(rng)
    opts = _options(kind)
    want = D.fused_linear(h, w, thead, student_bias=b, labels=lab, chunk=8, **opts)
    lab1 = np.where(lab == -100, -1, lab)
    got = D.fused_linear(h, w, thead, student_bias=b, labels=lab1, ignore_index=-1, chunk=8,
                         **opts)
    assert got.loss == want.loss
    for g, w_ in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(g, w_)
    with pytest.raises(ArgumentError, match=r"labels: row 0 has label -100"):
        D.fused_linear(h, w, thead, labels=lab, ignore_index=-1, **opts)


@pytest.mark.parametrize("chunk", [1, 5, 16, 45, 1000])
def test_chunk_size_does_not_change_the_result(chunk, rng):
    h, w, b, thead, lab = _problem(rng)
    one = D.fused_linear(h, w, thead, kind="jsd", student_bias=b, labels=lab, chunk=45)
    got = D.fused_linear(h, w, thead, kind="jsd", student_bias=b, labels=lab, chunk=chunk)
    _assert_same(got, one)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
def test_reductions_on_3d_input(reduction, rng):
    h, w, b, thead, lab = _problem(rng, n=30, lead=(5, 6))
    opts = dict(kind="kl", temperature=2.0, alpha=0.5, labels=lab, reduction=reduction)
    got = D.fused_linear(h, w, thead, student_bias=b, chunk=4, **opts)
    want = _unfused(h, w, thead, student_bias=b, **opts)
    assert got.grad_hidden.shape == (5, 6, 24)
    if reduction == "none":
        assert got.loss.shape == (5, 6)
    _assert_same(got, want)


def test_grad_subsets_and_loss_only(rng):
    h, w, b, thead, lab = _problem(rng)
    full = D.fused_linear(h, w, thead, student_bias=b)
    only = D.fused_linear(h, w, thead, student_bias=b, grad="hidden")
    assert only.grad_weight is None and only.grad_bias is None
    np.testing.assert_array_equal(only.grad_hidden, full.grad_hidden)
    wb = D.fused_linear(h, w, thead, student_bias=b, grad=("weight", "bias"))
    assert wb.grad_hidden is None
    np.testing.assert_array_equal(wb.grad_weight, full.grad_weight)
    np.testing.assert_array_equal(wb.grad_bias, full.grad_bias)
    none = D.fused_linear(h, w, thead, student_bias=b, grad=False)
    assert none.loss == full.loss and none[1:] == (None, None, None)
    assert D.fused_linear(h, w, thead).grad_bias is None      # no student bias


def test_all_rows_ignored_and_no_rows(rng):
    h, w, b, thead, lab = _problem(rng)
    res = D.fused_linear(h, w, thead, labels=np.full(45, -100), student_bias=b)
    assert res.loss == 0.0 and not res.grad_hidden.any() and not res.grad_weight.any()
    empty = D.fused_linear(h[:0], w, (thead[0][:0], thead[1]))
    assert empty.loss == 0.0 and empty.grad_hidden.shape == (0, 24)


def test_same_for_every_thread_count_and_simd_path(rng):
    """The row kernels give the same bits anywhere; BLAS does too for a fixed problem here
    (OpenBLAS splits a GEMM's output, never its sums, across threads)."""
    h, w, b, thead, lab = _problem(rng)
    first = None
    for level in litecomp.available_simd():
        for n in (1, 2, 3):
            with litecomp.simd(level), litecomp.threads(n):
                res = D.fused_linear(h, w, thead, kind="skew_kl", labels=lab, alpha=0.2,
                                     student_bias=b, chunk=9)
            if first is None:
                first = res
            assert res.loss == first.loss
            np.testing.assert_array_equal(res.grad_hidden, first.grad_hidden)


def test_no_n_by_v_array_beyond_one_chunk(rng):
    n, d, v, chunk = 2048, 32, 8192, 128
    h = rng.standard_normal((n, d)).astype(np.float32)
    w = (rng.standard_normal((v, d)) * 0.3).astype(np.float32)
    th = rng.standard_normal((n, d)).astype(np.float32)
    D.fused_linear(h[:chunk], w, (th[:chunk], w), chunk=chunk)       # warm-up
    tracemalloc.start()
    res = D.fused_linear(h, w, (th, w), kind="kl", chunk=chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    logits = n * v * 4                                   # 64 MiB: one [N, V] float32 array
    buffers = 2 * chunk * v * 4                          # student and teacher chunk buffers
    grads = res.grad_hidden.nbytes + res.grad_weight.nbytes
    block = min(16 << 20, res.grad_weight.nbytes)         # one block of the weight's gradient
    # measured: peak = grads + buffers + block + 96 KiB of small arrays
    assert peak < grads + buffers + block + (256 << 10)
    assert peak < logits / 5


def test_in_place_row_kernel_equals_out_of_place(simd_level, rng):
    """fused_linear lets the row kernel overwrite the logits with their gradient."""
    s = (rng.standard_normal((7, 2100)) * 3).astype(np.float32)
    t = (rng.standard_normal((7, 2100)) * 3).astype(np.float32)
    lab = rng.integers(0, 2100, 7)
    lab[2] = -100
    for kind in KINDS:
        opts = _options(kind)
        value, g = D.loss(kind, s, t, labels=lab, **{k: v for k, v in opts.items() if k != "kind"})
        buf = s.copy()
        value2, g2 = D.loss(kind, buf, t, labels=lab, out=buf,
                            **{k: v for k, v in opts.items() if k != "kind"})
        assert value2 == value and g2 is buf
        np.testing.assert_array_equal(buf, g)


def test_errors(rng):
    h, w, b, thead, lab = _problem(rng)
    with pytest.raises(ShapeError, match="student_weight"):
        D.fused_linear(h, w[:, :5], thead)
    with pytest.raises(ShapeError, match="student_bias"):
        D.fused_linear(h, w, thead, student_bias=b[:5])
    with pytest.raises(ShapeError, match="teacher_hidden"):
        D.fused_linear(h, w, (thead[0][:3], thead[1]))
    with pytest.raises(ShapeError, match="teacher_weight"):
        D.fused_linear(h, w, (thead[0], thead[1][:7]))
    with pytest.raises(ShapeError, match="teacher: logits"):
        D.fused_linear(h, w, np.zeros((45, 7), np.float32))
    with pytest.raises(ArgumentError, match="teacher: expected"):
        D.fused_linear(h, w, (thead[0],))
    with pytest.raises(ArgumentError, match="grad: "):
        D.fused_linear(h, w, thead, grad=("hidden", "teacher"))
    bad_lab = lab.copy()
    bad_lab[41] = 333
    with pytest.raises(ArgumentError, match="labels: row 41 has label 333"):
        D.fused_linear(h, w, thead, labels=bad_lab, chunk=8)
    with pytest.raises(ArgumentError, match="chunk"):
        D.fused_linear(h, w, thead, chunk=0)
    with pytest.raises(ArgumentError, match="kind"):
        D.fused_linear(h, w, thead, kind="nope")
    with pytest.raises(litecomp.errors.DTypeError, match="student_hidden"):
        D.fused_linear(h.astype(np.int32), w, thead)
    bad = h.copy()
    bad[37, 3] = np.nan
    with pytest.raises(NonFiniteError, match="student: row 37 "):
        D.fused_linear(bad, w, thead, chunk=8)
    with pytest.raises(NonFiniteError, match="student: row 37 "):   # rows gathered past ignores
        D.fused_linear(bad, w, thead, labels=lab, chunk=8)


def test_default_chunk():
    assert D.default_chunk(98631) == 128
    assert D.default_chunk(1000) == 1024
    assert D.default_chunk(10 ** 8) == 16
