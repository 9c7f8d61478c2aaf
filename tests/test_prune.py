"""litecomp.prune against its NumPy definition (litecomp/reference/prune.py): every dtype,
odd sizes, ties, signed zeros and infinities, every SIMD path and several thread counts."""

import math

import ml_dtypes
import numpy as np
import pytest

import litecomp
from litecomp import prune
from litecomp.reference import prune as ref
from conftest import same_for_all_paths

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]


def _tricky(rng, n, dtype):
    """Values with many ties, both zeros and infinities."""
    x = np.round(rng.standard_normal(n) * 4) / 4
    x[rng.random(n) < 0.05] = -0.0
    x[rng.random(n) < 0.01] = np.inf
    x[rng.random(n) < 0.01] = -np.inf
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5, 1000, 200_003, 300_007])
def test_select_matches_reference(dtype, n, rng, simd_level):
    x = _tricky(rng, n, dtype)
    mask = rng.random(n) < 0.7
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        got = prune.l1_unstructured(x, k)
        np.testing.assert_array_equal(got, ref.select_lowest(x, k, absolute=True))
        ke = min(k, int(mask.sum()))
        got = prune.l1_unstructured(x, ke, mask=mask)
        np.testing.assert_array_equal(got, ref.select_lowest(x, ke, mask=mask, absolute=True))
        assert not (got & ~mask).any()
    k = n // 2
    out = prune._select([prune._scores(x, "x")], [None], k, absolute=False)[0]
    np.testing.assert_array_equal(out, ref.select_lowest(x, k, absolute=False))


def test_large_inputs_where_the_sample_misleads_or_everything_ties(rng):
    """Above 2^18 entries a sample brackets the threshold first; these inputs defeat the
    sample (an evenly spaced sample sees only the outliers, or every value is equal) and
    must still give the exact definition."""
    n = 1 << 20
    x = np.ones(n, np.float32) + (rng.random(n) < 0.3).astype(np.float32)
    x[::16] = 100.0  # exactly the sampled positions
    for k in (1, n // 2, n - n // 16, n - 1):
        np.testing.assert_array_equal(prune.l1_unstructured(x, k),
                                      ref.select_lowest(x, k, absolute=True))
    same = np.full(n, -2.5, np.float32)
    np.testing.assert_array_equal(prune.l1_unstructured(same, 12345),
                                  ref.select_lowest(same, 12345, absolute=True))
    mask = rng.random(n) < 0.1  # few eligible samples
    x2 = _tricky(rng, n, np.float32)
    k = int(mask.sum()) // 3
    np.testing.assert_array_equal(prune.l1_unstructured(x2, k, mask=mask),
                                  ref.select_lowest(x2, k, mask=mask, absolute=True))


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_global_matches_concatenation(dtype, rng, simd_level):
    a = _tricky(rng, 200_001, dtype)
    b = _tricky(rng, 150_000, dtype).reshape(300, 500)
    mb = rng.random(b.shape) < 0.8
    got = prune.global_unstructured({"a": a, "b": b}, 0.45, masks={"b": mb})
    k = round(0.45 * (a.size + mb.sum()))
    want = ref.select_lowest([a, b], k, mask=[None, mb], absolute=True)
    np.testing.assert_array_equal(got["a"], want[0])
    np.testing.assert_array_equal(got["b"], want[1])


def test_tie_break_prunes_lower_index_first():
    x = np.array([3.0, 1.0, 1.0, -1.0, 2.0, 1.0], np.float32)
    np.testing.assert_array_equal(prune.l1_unstructured(x, 2),
                                  [True, False, False, True, True, True])
    # -0.0 and +0.0 are the same score
    z = np.array([0.0, -0.0, 0.0, -0.0], np.float32)
    np.testing.assert_array_equal(prune.l1_unstructured(z, 3), [False, False, False, True])
    s = np.array([0.0, -0.0, -1.0, np.inf, -np.inf], np.float64)
    got = prune._select([prune._scores(s, "s")], [None], 3, absolute=False)[0]
    np.testing.assert_array_equal(got, [False, True, False, True, False])


def test_identical_for_every_thread_count_and_simd_level(rng):
    x = _tricky(rng, 700_001, np.float32)
    y = _tricky(rng, 90_001, np.float32)
    w = x[:700_000].reshape(1000, 700)
    results = same_for_all_paths(lambda: (
        prune.l1_unstructured(x, 0.37),
        prune.global_unstructured({"x": x, "y": y}, 0.5),
        prune.per_row(w, 0.3),
        prune.nm(w, 2, 4, axis=1), prune.nm(w, 4, 8, axis=0),
        prune.channel_norms(w, 2, 1), prune.channel_norms(w, 3, 0),
        prune.block_norms(w, (3, 7)),
        prune.bake({"a_orig": w, "a_mask": (w > 0).astype(np.float32)})["a"],
        prune.apply(w, w > 0)))
    first = results[0][1]
    for _, r in results[1:]:
        np.testing.assert_array_equal(r[0], first[0])
        np.testing.assert_array_equal(r[1]["x"], first[1]["x"])
        np.testing.assert_array_equal(r[1]["y"], first[1]["y"])
        for a, b in zip(r[2:], first[2:]):
            assert a.tobytes() == b.tobytes()


def test_nan_raises_unless_already_pruned():
    x = np.array([1.0, np.nan, 2.0, 3.0], np.float32)
    with pytest.raises(litecomp.NonFiniteError, match="^w: contains NaN"):
        prune.l1_unstructured(x, 1)
    with pytest.raises(litecomp.NonFiniteError, match="^importance_scores"):
        prune.l1_unstructured(np.ones(4, np.float32), 1, importance_scores=x)
    with pytest.raises(litecomp.NonFiniteError, match="^tensors"):
        prune.global_unstructured({"a": x}, 1)
    with pytest.raises(litecomp.NonFiniteError, match="^w"):
        prune.per_row(x.reshape(2, 2), 1)
    got = prune.l1_unstructured(x, 1, mask=np.array([True, False, True, True]))
    np.testing.assert_array_equal(got, [False, False, True, True])
    for dt in (np.float16, ml_dtypes.bfloat16, np.float64):
        with pytest.raises(litecomp.NonFiniteError):
            prune.l1_unstructured(x.astype(dt), 0)


@pytest.mark.parametrize("amount,n,want", [
    (0.5, 5, 2), (0.5, 7, 4), (0.25, 2, 0), (0.75, 2, 2), (1, 5, 1), (1.0, 5, 5),
    (0, 5, 0), (0.0, 5, 0), (5, 5, 5), (np.float32(0.5), 4, 2), (np.int64(3), 4, 3)])
def test_amount_follows_torch(amount, n, want):
    assert prune.count_to_prune(amount, n) == want
    w = np.arange(1, n + 1, dtype=np.float32)
    assert int((~prune.l1_unstructured(w, amount)).sum()) == want


@pytest.mark.parametrize("amount", [-1, 6, 1.5, -0.1, float("nan"), True, "0.5", None])
def test_bad_amount_raises(amount):
    with pytest.raises(litecomp.ArgumentError, match="^amount"):
        prune.l1_unstructured(np.ones(5, np.float32), amount)


def test_iterative_pruning_applies_to_remaining():
    w = litecomp.random.normal(1000, seed=3)
    m1 = prune.l1_unstructured(w, 0.2)
    m2 = prune.l1_unstructured(w, 0.2, mask=m1)
    assert (~m1).sum() == 200 and (~m2).sum() == 200 + 160  # 36%
    assert not (m2 & ~m1).any()
    # float torch-style masks are accepted
    m3 = prune.l1_unstructured(w, 0.2, mask=m1.astype(np.float32))
    np.testing.assert_array_equal(m3, m2)
    with pytest.raises(litecomp.ShapeError, match="^mask"):
        prune.l1_unstructured(w, 0.2, mask=m1[:10])


def test_importance_scores_and_errors(rng):
    w = rng.standard_normal((4, 6)).astype(np.float32)
    s = rng.random((4, 6))
    np.testing.assert_array_equal(prune.l1_unstructured(w, 5, importance_scores=s),
                                  ref.select_lowest(s, 5, absolute=True))
    ints = rng.integers(-5, 5, (4, 6))
    np.testing.assert_array_equal(prune.l1_unstructured(w, 5, importance_scores=ints),
                                  ref.select_lowest(ints, 5, absolute=True))
    with pytest.raises(litecomp.ShapeError, match="^importance_scores"):
        prune.l1_unstructured(w, 1, importance_scores=s[:2])
    with pytest.raises(litecomp.DTypeError, match="^w"):
        prune.l1_unstructured(np.array(["a", "b"]), 1)


def test_global_unstructured_matches_concatenation(rng):
    a = _tricky(rng, 3001, np.float32).reshape(3001, 1)
    b = _tricky(rng, 70_000, np.float32).reshape(100, 700)
    c = _tricky(rng, 500, np.float16)  # mixed dtype: widened, same order
    ma = rng.random(a.shape) < 0.5
    got = prune.global_unstructured({"a": a, "b": b, "c": c}, 0.6, masks={"a": ma})
    eligible = ma.sum() + b.size + c.size
    want = ref.select_lowest([a, b, c], round(0.6 * eligible), mask=[ma, None, None],
                             absolute=True)
    for g, w in zip(got.values(), want):
        np.testing.assert_array_equal(g, w)
    s = {"b": rng.random(b.shape)}
    got = prune.global_unstructured({"a": a, "b": b}, 100, importance_scores=s)
    want = ref.select_lowest([a, s["b"]], 100, absolute=True)
    np.testing.assert_array_equal(got["b"], want[1])
    with pytest.raises(litecomp.ArgumentError, match="^masks"):
        prune.global_unstructured({"a": a}, 0.1, masks={"zz": ma})


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_row_matches_reference(dtype, rng, simd_level):
    w = _tricky(rng, 37 * 129, dtype).reshape(37, 129)
    for amount in (0, 0.5, 7, 129):
        k = prune.count_to_prune(amount, 129)
        np.testing.assert_array_equal(prune.per_row(w, amount),
                                      ref.select_rows(w, k, absolute=True))
    prev = prune.per_row(w, 0.25)
    got = prune.per_row(w, 0.5, mask=prev)
    np.testing.assert_array_equal(got, ref.select_rows(w, round(0.5 * 97), mask=prev,
                                                       absolute=True))
    with pytest.raises(litecomp.ArgumentError, match="^mask"):
        prune.per_row(w, 0.5, mask=prune.l1_unstructured(w, 0.5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((8, 16), -1), ((8, 16), 0), ((4, 8, 6), 1),
                                        ((3, 5, 8), 2), ((24,), 0), ((5, 40), 1)])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_matches_reference(dtype, shape, axis, n, m, rng, simd_level):
    w = _tricky(rng, math.prod(shape), dtype).reshape(shape)
    if shape[axis] % m:
        with pytest.raises(litecomp.ShapeError):
            prune.nm(w, n, m, axis=axis)
        return
    got = prune.nm(w, n, m, axis=axis)
    np.testing.assert_array_equal(got, ref.nm_mask(w, n, m, axis))
    kept = np.moveaxis(got, axis, -1).reshape(-1, m).sum(axis=1)
    assert (kept == m - n).all()


def test_nm_errors():
    w = np.ones((4, 8), np.float32)
    with pytest.raises(litecomp.ArgumentError, match="^n"):
        prune.nm(w, 5, 4)
    with pytest.raises(litecomp.NonFiniteError):
        prune.nm(np.full((1, 4), np.nan, np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2, np.inf, -np.inf, 3, 0.5, "fro"])
def test_channel_norms_match_reference(dtype, p, rng):
    w = rng.standard_normal((5, 7, 3)).astype(dtype)
    for axis in (0, 1, 2, -1):
        got = prune.channel_norms(w, p, axis)
        want = ref.channel_norms(w, 2 if p == "fro" else p, axis)
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((1000, 300), 1), ((40, 37, 200), 1), ((300, 17), 0),
                                        ((3, 5, 4), 2)])
def test_channel_norms_sum_in_the_defined_order(dtype, shape, axis, rng):
    """L1 / L2 are sequential float64 sums over a channel's values, outer then inner: bit for
    bit np.add.accumulate of them, for any thread count (channels wider than one chunk, 16 or
    256 at a time, and large enough for the parallel path)."""
    w = rng.standard_normal(shape).astype(dtype)
    vals = np.moveaxis(w.astype(np.float64), axis, 0).reshape(shape[axis], -1)
    want = {1: np.add.accumulate(np.abs(vals), axis=1)[:, -1],
            2: np.sqrt(np.add.accumulate(vals * vals, axis=1)[:, -1])}
    for threads in (1, 2):
        with litecomp.threads(threads):
            for p in (1, 2):
                np.testing.assert_array_equal(prune.channel_norms(w, p, axis), want[p])


def test_channel_norms_each_is_channel_norms_of_every_item(rng):
    """One call over many arrays (one parallel pass) gives each array's own norms, bit for
    bit, for any thread count; empty items, other dtypes and axes mix freely."""
    items = [(rng.standard_normal((600, 300)).astype(np.float32), 1),
             (rng.standard_normal((40, 37, 200)).astype(np.float64), 1),
             (rng.standard_normal((0, 5)).astype(np.float32), 1),
             (rng.standard_normal((5, 0)).astype(np.float32), 1),
             (rng.standard_normal((33, 7)).astype(ml_dtypes.bfloat16), -2),
             (rng.standard_normal((64, 512)).astype(np.float16)[:, ::2], 0)]  # a strided view
    for norm in (1, 2, np.inf, 3):
        for threads in (1, 2):
            with litecomp.threads(threads):
                got = prune.channel_norms_each(items, norm)
            assert len(got) == len(items)
            for (w, axis), g in zip(items, got):
                np.testing.assert_array_equal(g, prune.channel_norms(w, norm, axis))
    assert prune.channel_norms_each([], 2) == []
    with pytest.raises(litecomp.ArgumentError, match=r"^items\[0\] axis"):
        prune.channel_norms_each([(items[0][0], 2)], 2)
    with pytest.raises(litecomp.DTypeError, match=r"^items\[0\]"):
        prune.channel_norms_each([(np.ones((2, 2), np.int32), 0)], 2)


def test_ln_structured(rng):
    w = rng.standard_normal((6, 10)).astype(np.float32)
    norms = np.linalg.norm(w, axis=1)
    got = prune.ln_structured(w, 2, 2, 0)
    pruned_rows = np.flatnonzero(~got.all(axis=1))
    assert set(pruned_rows) == set(np.argsort(norms)[:2])
    assert (got.all(axis=1) | ~got.any(axis=1)).all()
    # iterative: already pruned rows are not candidates; norms of the masked weight
    got2 = prune.ln_structured(w, 0.5, 2, 0, mask=got)
    assert (~got2.any(axis=1)).sum() == 2 + 2
    with pytest.raises(litecomp.ShapeError, match="^w"):
        prune.ln_structured(np.ones(5, np.float32), 1, 2, 0)
    with pytest.raises(litecomp.ArgumentError, match="^norm"):
        prune.ln_structured(w, 1, -1, 0)
    with pytest.raises(litecomp.ArgumentError, match="^axis"):
        prune.ln_structured(w, 1, 2, 2)


def test_structured_spellings_norm_axis_and_their_aliases(rng):
    """norm/axis are the names; torch's dim= is an alias without a warning, n= (an N:M
    count elsewhere) a deprecated one; the same mask every way."""
    import warnings
    w = rng.standard_normal((6, 10)).astype(np.float32)
    want = prune.ln_structured(w, 2, 2, 0)
    assert (~want.all(axis=1)).sum() == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(prune.ln_structured(w, 2, norm=2, axis=0), want)
        np.testing.assert_array_equal(prune.ln_structured(w, 2, 2, dim=0), want)
        np.testing.assert_array_equal(prune.random_structured(w, 3, dim=1, seed=4),
                                      prune.random_structured(w, 3, axis=1, seed=4))
        np.testing.assert_allclose(prune.channel_norms(w, norm=1, axis=1),
                                   np.abs(w.astype(np.float64)).sum(axis=0), rtol=1e-12)
    with pytest.warns(DeprecationWarning, match="n= is deprecated; pass norm="):
        got = prune.ln_structured(w, 2, n=2, dim=0)   # torch's keyword spelling
    np.testing.assert_array_equal(got, want)
    with pytest.warns(DeprecationWarning) as caught:
        norms = prune.channel_norms(w, n=2, dim=0)
    assert sorted(str(c.message) for c in caught) == [
        "dim= is deprecated; pass axis= (same meaning)",
        "n= is deprecated; pass norm= (same meaning)"]
    np.testing.assert_array_equal(norms, prune.channel_norms(w, 2, 0))
    with pytest.raises(litecomp.ArgumentError, match="^norm: given twice"):
        prune.ln_structured(w, 2, 2, 0, n=2)
    with pytest.raises(litecomp.ArgumentError, match="^axis: given twice"):
        prune.random_structured(w, 2, 0, dim=0)
    with pytest.raises(litecomp.ArgumentError, match="^norm: required"):
        prune.ln_structured(w, 2, axis=0)
    with pytest.raises(litecomp.ArgumentError, match="^axis: required"):
        prune.ln_structured(w, 2, 2)


def test_random_methods_counts_and_seed():
    w = np.ones((50, 40), np.float32)
    a = prune.random_unstructured(w, 0.3, seed=1)
    assert (~a).sum() == 600
    np.testing.assert_array_equal(a, prune.random_unstructured(w, 0.3, seed=1))
    assert not np.array_equal(a, prune.random_unstructured(w, 0.3, seed=2))
    s = prune.random_structured(w, 0.5, 1, seed=4)
    assert (~s.any(axis=0)).sum() == 20 and (s.all(axis=0) | ~s.any(axis=0)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_matches_reference(dtype, rng):
    w = rng.standard_normal((10, 13)).astype(dtype)
    for bs in ((2, 2), (1, 4), (3, 5)):
        bn = prune.block_norms(w, bs)
        np.testing.assert_allclose(bn, ref.block_norms(w, bs), rtol=1e-12)
        got = prune.block(w, 0.5, bs)
        k = round(0.5 * bn.size)
        keep = ref.select_lowest(bn, k)
        want = np.repeat(np.repeat(keep, bs[0], 0), bs[1], 1)[:10, :13]
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES + [np.int8, np.int32])
def test_apply_matches_reference(dtype, rng):
    w = (rng.standard_normal((33, 17)) * 5).astype(dtype)
    m = rng.random(w.shape) < 0.5
    got = prune.apply(w, m)
    assert got.tobytes() == ref.apply(w, m).tobytes()
    w2 = w.copy()
    assert prune.apply(w2, m, out=w2) is w2 and w2.tobytes() == got.tobytes()
    # strided input is copied, never misread
    got_t = prune.apply(w.T, m.T)
    assert got_t.tobytes() == np.ascontiguousarray(ref.apply(w.T, m.T)).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_bake_is_orig_times_mask(dtype, rng):
    orig = rng.standard_normal((9, 11)).astype(dtype)
    orig[0, :3] = [np.inf, -np.inf, -0.0]
    mask = (rng.random(orig.shape) < 0.5).astype(dtype)
    mask[0, :3] = 0
    sd = {"a.weight_orig": orig, "a.bias": np.ones(9, np.float32), "a.weight_mask": mask,
          "b": np.zeros(2)}
    out = prune.bake(sd)
    assert list(out) == ["a.weight", "a.bias", "b"]
    want = ref.bake(orig, mask)
    assert out["a.weight"].dtype == orig.dtype
    assert out["a.weight"].tobytes() == want.tobytes()
    assert np.isnan(out["a.weight"][0, :2].astype(np.float32)).all()
    # a bool mask works too
    out2 = prune.bake({"w_orig": orig, "w_mask": mask != 0})
    assert out2["w"].tobytes() == want.tobytes()


def test_activation_stats_accumulate(rng):
    from litecomp.prune.scores import ActivationStats, wanda
    batches = [rng.standard_normal((3, 5, 70)).astype(dt)
               for dt in (np.float32, np.float16, ml_dtypes.bfloat16, np.float64)]
    st = ActivationStats(70)
    for b in batches:
        st.update(b)
    want = ref.sumsq([b.reshape(-1, 70) for b in batches])
    np.testing.assert_allclose(st.sumsq, want, rtol=1e-13)
    assert st.count == 60
    res = same_for_all_paths(lambda: (lambda s: (s.update(batches[0]), s.sumsq)[1])(
        ActivationStats(70)))
    for _, r in res:
        assert r.tobytes() == res[0][1].tobytes()
    w = rng.standard_normal((4, 70)).astype(np.float32)
    sc = wanda(w, st)
    np.testing.assert_allclose(sc, np.abs(w) * np.sqrt(want / 60).astype(np.float32),
                               rtol=1e-6)
    with pytest.raises(litecomp.ShapeError, match="^x"):
        st.update(np.ones((2, 3), np.float32))


def test_schedules():
    from litecomp.prune import schedule
    assert schedule.cubic(0, 0.8, end=100) == 0.0
    assert schedule.cubic(100, 0.8, end=100) == 0.8
    assert schedule.cubic(50, 0.8, start=0, end=100) == pytest.approx(0.8 - 0.8 * 0.125)
    assert schedule.cubic(55, 0.8, end=100, frequency=10) == schedule.cubic(50, 0.8, end=100)
    assert schedule.linear(25, 0.8, initial=0.4, end=100) == pytest.approx(0.5)
    vals = [schedule.cubic(t, 0.9, start=10, end=60) for t in range(0, 80)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert schedule.incremental_amount(0.2, 0.36) == pytest.approx(0.2)
    with pytest.raises(litecomp.ArgumentError, match="^end"):
        schedule.cubic(1, 0.5, start=5, end=5)


def test_sensitivity_table():
    sd = {"a": np.arange(1.0, 9.0).reshape(2, 4), "b": np.ones((2, 2)), "bias": np.ones(3)}
    t = prune.sensitivity(sd, lambda d: float(d["a"].sum() + d["b"].sum()),
                          sparsities=(0.25, 0.5), progress=False)
    assert t.layers == ["a", "b"] and t.baseline == 40.0
    assert t.values.tolist() == [[37.0, 30.0], [39.0, 38.0]]
    text = str(t)
    assert "25%" in text and "a" in text and "40" in text
    assert (sd["a"] == np.arange(1.0, 9.0).reshape(2, 4)).all()  # caller's dict untouched
    with pytest.raises(litecomp.ArgumentError, match="^criterion"):
        prune.sensitivity(sd, lambda d: 0.0, criterion="magic")


def test_sparsity_report():
    sd = {"w": np.array([[0.0, -0.0], [1.0, 2.0]], np.float32), "m": np.array([True, False])}
    r = prune.sparsity(sd)
    assert r.zeros == 3 and r.numel == 6 and r.total == 0.5
    assert r["w"] == 0.5 and "total" in str(r)


def test_module_docstring_examples_run():
    import doctest
    import importlib
    for name in ("litecomp.prune", "litecomp.prune.scores", "litecomp.prune.schedule",
                 "litecomp.prune.sensitivity", "litecomp.prune.report", "litecomp.sparse"):
        res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert res.failed == 0 and res.attempted > 0, name
