"""Score functions, importance_scores= of every mask function that takes it, the
sensitivity options and SensitivityTable.plot, each against its definition computed here
with NumPy (sorts, norms, means), never with the code under test."""

import io

import ml_dtypes
import numpy as np
import pytest

import litecomp
from litecomp import prune
from litecomp.prune import scores


def rng(seed=0):
    return np.random.default_rng(seed)


def smallest(values, k):
    """Boolean mask of the k smallest entries (no ties in these tests)."""
    flat = np.asarray(values).reshape(-1)
    out = np.zeros(flat.size, bool)
    out[np.argsort(flat, kind="stable")[:k]] = True
    return out.reshape(np.shape(values))


# ------------------------------------------------------------------ scores
def test_magnitude_and_taylor_scores():
    w = rng(1).standard_normal((6, 7)).astype(np.float32)
    g = rng(2).standard_normal((6, 7)).astype(np.float32)
    np.testing.assert_array_equal(scores.magnitude(w), np.abs(w))
    np.testing.assert_array_equal(scores.taylor(w, g), np.abs(w * g))
    wb = w.astype(ml_dtypes.bfloat16)
    m = scores.magnitude(wb)
    assert m.dtype == np.float32
    np.testing.assert_array_equal(m, np.abs(wb.astype(np.float32)))
    ints = np.array([[-3, 2], [0, -1]], np.int8)
    np.testing.assert_array_equal(scores.magnitude(ints), [[3.0, 2.0], [0.0, 1.0]])
    # Taylor scores prune where |w * g| is small, not where |w| is
    mask = prune.l1_unstructured(w, 10, importance_scores=scores.taylor(w, g))
    np.testing.assert_array_equal(~mask, smallest(np.abs(w * g), 10))
    assert not np.array_equal(mask, prune.l1_unstructured(w, 10))
    with pytest.raises(litecomp.ShapeError, match="^grad: shape"):
        scores.taylor(w, g[:3])
    with pytest.raises(litecomp.ArgumentError, match="^w"):
        scores.magnitude(np.array(["a"]))


def test_random_scores():
    a = scores.random((50, 40), seed=3)
    assert a.shape == (50, 40) and a.dtype == np.uint64
    np.testing.assert_array_equal(a, scores.random((50, 40), seed=3))
    assert (a != scores.random((50, 40), seed=4)).mean() > 0.99
    # uniform 64-bit values: each bit is set about half the time (2000 draws: +-4 sigma)
    bits = (a[..., None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    assert np.abs(bits.mean(axis=(0, 1)) - 0.5).max() < 4 * 0.5 / np.sqrt(a.size)
    assert len(np.unique(a)) == a.size
    w = np.ones((50, 40), np.float32)
    mask = prune.l1_unstructured(w, 500, importance_scores=a)
    np.testing.assert_array_equal(~mask, smallest(a, 500))


def test_activation_stats_over_batches():
    xs = [rng(i).standard_normal(shape).astype(np.float32)
          for i, shape in enumerate([(3, 5, 16), (7, 16), (1, 16)])]
    st = scores.activation_stats(iter(xs))
    rows = np.concatenate([x.reshape(-1, 16) for x in xs]).astype(np.float64)
    assert st.count == 23 and st.features == 16
    np.testing.assert_allclose(st.mean_sq, (rows ** 2).mean(0), rtol=1e-15)
    np.testing.assert_allclose(st.norm, np.sqrt((rows ** 2).mean(0)), rtol=1e-15)
    half = scores.activation_stats([x.astype(np.float16) for x in xs], features=16)
    np.testing.assert_allclose(half.mean_sq,
                               (rows.astype(np.float16).astype(np.float64) ** 2).mean(0),
                               rtol=1e-15)
    with pytest.raises(litecomp.ArgumentError, match="^batches: is empty"):
        scores.activation_stats([])
    with pytest.raises(litecomp.ShapeError, match="^x: last dimension must be 16"):
        scores.activation_stats([xs[1], np.ones((2, 15), np.float32)])


# ------------------------------------------------------------------ importance_scores=
def test_nm_follows_importance_scores():
    w = rng(5).standard_normal((8, 16)).astype(np.float32)
    s = rng(6).standard_normal((8, 16)).astype(np.float32)
    got = prune.nm(w, 2, 4, importance_scores=s)
    groups = np.abs(s).reshape(8, 4, 4)
    order = np.argsort(np.argsort(groups, axis=-1, kind="stable"), axis=-1, kind="stable")
    np.testing.assert_array_equal(got, (order >= 2).reshape(8, 16))
    assert not np.array_equal(got, prune.nm(w, 2, 4))
    # along axis 0: groups of 4 rows in each column
    got0 = prune.nm(w, 1, 4, axis=0, importance_scores=s)
    g0 = np.abs(s).reshape(2, 4, 16)
    keep0 = np.argsort(np.argsort(g0, axis=1, kind="stable"), axis=1, kind="stable") >= 1
    np.testing.assert_array_equal(got0, keep0.reshape(8, 16))
    with pytest.raises(litecomp.ShapeError, match="^importance_scores"):
        prune.nm(w, 2, 4, importance_scores=s[:, :8])


def test_block_follows_importance_scores():
    w = rng(7).standard_normal((10, 12)).astype(np.float32)
    s = rng(8).standard_normal((10, 12)).astype(np.float32)
    got = prune.block(w, 4, (4, 4), importance_scores=s)
    # 3 x 3 blocks, the last row of blocks partial (rows 8-9): L2 norm of each
    norms = np.array([[np.linalg.norm(s[r:r + 4, c:c + 4]) for c in range(0, 12, 4)]
                      for r in range(0, 10, 4)])
    keep = ~smallest(norms, 4)
    np.testing.assert_array_equal(got, np.kron(keep, np.ones((4, 4), bool))[:10, :12])
    assert not np.array_equal(got, prune.block(w, 4, (4, 4)))
    l1 = prune.block(w, 2, (4, 4), norm=1, importance_scores=s)
    n1 = np.array([[np.abs(s[r:r + 4, c:c + 4]).sum() for c in range(0, 12, 4)]
                   for r in range(0, 10, 4)])
    np.testing.assert_array_equal(l1, np.kron(~smallest(n1, 2), np.ones((4, 4), bool))[:10])


@pytest.mark.parametrize("norm,axis", [(2, 0), (1, 1), (np.inf, 0)])
def test_ln_structured_follows_importance_scores(norm, axis):
    w = rng(9).standard_normal((9, 7, 3)).astype(np.float32)
    s = rng(10).standard_normal((9, 7, 3)).astype(np.float32)
    got = prune.ln_structured(w, 0.34, norm, axis, importance_scores=s)
    other = tuple(a for a in range(3) if a != axis)
    chan = np.linalg.norm(np.moveaxis(s, axis, 0).reshape(s.shape[axis], -1), ord=norm, axis=1)
    k = round(0.34 * s.shape[axis])
    keep = ~smallest(chan, k)
    want = np.broadcast_to(np.expand_dims(keep, other), s.shape)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, prune.ln_structured(w, 0.34, norm, axis))


# ------------------------------------------------------------------ sensitivity
def _sd():
    r = rng(11)
    return {"a": r.standard_normal((6, 10)).astype(np.float32),
            "b": r.standard_normal((4, 5)).astype(np.float32),
            "c.bias": r.standard_normal(6).astype(np.float32)}


def _fingerprint(d):
    """The evaluate callback: a number that changes with which entries are zero."""
    return float(sum((d[k] == 0).astype(np.float64).ravel() @ (np.arange(d[k].size) + 1.0)
                     * (i + 1) * 1000.0 ** i for i, k in enumerate(sorted(d))))


def _expected_pruned(w, s, criterion, seed):
    if criterion == "l1":
        return np.where(smallest(np.abs(w), round(s * w.size)), 0, w)
    if criterion == "per_row":
        k = round(s * w.shape[1])
        return np.stack([np.where(smallest(np.abs(r), k), 0, r) for r in w])
    if criterion == "l2_structured":
        rows = smallest(np.linalg.norm(w, axis=1), round(s * w.shape[0]))
        return np.where(rows[:, None], 0, w)
    # random: the k entries with the smallest litecomp.random hashes of that seed
    return np.where(smallest(litecomp.random.bits(w.shape, seed=seed), round(s * w.size)),
                    0, w)


@pytest.mark.parametrize("criterion", ["l1", "per_row", "l2_structured", "random"])
def test_sensitivity_criteria_prune_as_defined(criterion):
    sd = _sd()
    sp = (0.2, 0.5)
    t = prune.sensitivity(sd, _fingerprint, sparsities=sp, criterion=criterion, seed=5,
                          progress=False)
    assert t.layers == ["a", "b"] and t.baseline == _fingerprint(sd)
    for i, name in enumerate(t.layers):
        for j, s in enumerate(sp):
            d = dict(sd)
            d[name] = _expected_pruned(sd[name], s, criterion, 5)
            assert t.values[i, j] == _fingerprint(d), (name, s)


def test_sensitivity_layers_list_and_targets():
    sd = _sd()
    t = prune.sensitivity(sd, _fingerprint, layers=["b", "c.bias"], sparsities=(0.5,),
                          progress=False)
    assert t.layers == ["b", "c.bias"]                  # the given order, 1-D tensors too
    d = dict(sd)
    d["c.bias"] = _expected_pruned(sd["c.bias"], 0.5, "l1", 0)
    assert t.values[1, 0] == _fingerprint(d)
    t2 = prune.sensitivity(sd, _fingerprint, targets=["re:^[ab]$"], ignore=["a"],
                           sparsities=(0.5,), progress=False)
    assert t2.layers == ["b"] and t2.values[0, 0] == t.values[0, 0]
    with pytest.raises(litecomp.ArgumentError, match="^layers: not in state_dict: zz"):
        prune.sensitivity(sd, _fingerprint, layers=["a", "zz"])
    with pytest.raises(litecomp.ArgumentError, match="^sparsities"):
        prune.sensitivity(sd, _fingerprint, sparsities=(1.5,))


def test_sensitivity_plot_renders_one_line_per_layer(tmp_path):
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is in the test extra")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sd = _sd()
    t = prune.sensitivity(sd, lambda d: float(sum(np.abs(v).sum() for v in d.values())),
                          sparsities=(0.1, 0.5, 0.9), progress=False)
    ax = t.plot()
    try:
        assert ax.get_xlabel() == "sparsity" and ax.get_ylabel() == "metric"
        layer_lines = [ln for ln in ax.lines if ln.get_label() in t.layers]
        assert [ln.get_label() for ln in layer_lines] == t.layers
        for ln, row in zip(layer_lines, t.values):
            np.testing.assert_array_equal(ln.get_xdata(), t.sparsities)
            np.testing.assert_array_equal(ln.get_ydata(), row)
        base = [ln for ln in ax.lines if ln.get_label() == "dense"]
        assert len(base) == 1 and set(base[0].get_ydata()) == {t.baseline}
        assert len(ax.lines) == len(t.layers) + 1
        legend = [x.get_text() for x in ax.get_legend().get_texts()]
        assert legend == t.layers + ["dense"]
        buf = io.BytesIO()
        ax.figure.savefig(buf, format="png", dpi=50)
        png = buf.getvalue()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        img = plt.imread(io.BytesIO(png))
        assert img.shape[0] > 100 and (img[..., :3] < 0.5).any()    # something drawn
        fig, own = plt.subplots()
        assert t.plot(ax=own) is own and len(own.lines) == len(t.layers) + 1
        plt.close(fig)
    finally:
        plt.close(ax.figure)


def test_sensitivity_plot_without_matplotlib(monkeypatch):
    import sys
    t = prune.sensitivity({"a": np.ones((2, 2))}, lambda d: 0.0, sparsities=(0.5,),
                          progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="SensitivityTable.plot needs matplotlib"):
        t.plot()
