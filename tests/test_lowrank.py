"""litecomp.lowrank: truncated SVD against numpy.linalg.svd, rank rules, randomized SVD
accuracy, activation-aware SVD, the state-dict pass."""

import numpy as np
import pytest

import litecomp
from litecomp import lowrank
from litecomp.errors import ArgumentError, NonFiniteError, ShapeError


def decaying(m, n, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, min(m, n))))
    v, _ = np.linalg.qr(rng.standard_normal((n, min(m, n))))
    s = np.arange(1, min(m, n) + 1) ** -1.0
    return ((u * s) @ v.T).astype(np.float32), s


def test_full_svd_is_the_optimal_truncation():
    w, s = decaying(60, 40)
    f = lowrank.svd(w, 10, algorithm="full")
    assert f.a.shape == (60, 10) and f.b.shape == (10, 40) and f.a.dtype == np.float32
    want = np.sqrt((s[10:] ** 2).sum() / (s ** 2).sum())   # Eckart-Young
    assert f.error == pytest.approx(want, rel=1e-4)
    assert np.linalg.norm(w - f.a @ f.b) / np.linalg.norm(w) == pytest.approx(want, rel=1e-4)


def test_rank_rules():
    assert lowrank.choose_rank((100, 50), rank=0.5) == 25
    assert lowrank.choose_rank((100, 50), rank=7) == 7
    assert lowrank.choose_rank((100, 50), budget=0.5) == 16          # 0.5*5000/150
    s = np.array([3.0, 2.0, 1.0, 0.0])
    assert lowrank.choose_rank((4, 4), energy=0.9, singular_values=s) == 2   # 13/14
    w, _ = decaying(30, 30)
    assert lowrank.svd(w, energy=0.99).rank == lowrank.choose_rank(
        (30, 30), energy=0.99, singular_values=np.linalg.svd(w, compute_uv=False))
    for kw, match in (({}, "exactly one"), ({"rank": 2, "budget": 0.5}, "exactly one"),
                      ({"rank": 1.5}, "fraction"), ({"rank": 0}, "out of range"),
                      ({"budget": 2.0}, "budget")):
        with pytest.raises(ArgumentError, match=match):
            lowrank.choose_rank((10, 10), **kw)


def test_randomized_close_to_optimal_and_reproducible():
    w, s = decaying(600, 500)
    full = lowrank.svd(w, 50, algorithm="full")
    r = lowrank.svd(w, 50, algorithm="randomized")
    assert r.error <= full.error * 1.01       # measured 1.0000x on this spectrum
    r2 = lowrank.svd(w, 50, algorithm="randomized")
    np.testing.assert_array_equal(r.a, r2.a)
    with pytest.raises(ArgumentError, match="needs the rank"):
        lowrank.svd(w, energy=0.9, algorithm="randomized")


def test_activation_aware_beats_plain_in_the_weighted_norm():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 30)).astype(np.float32)
    x = rng.standard_normal((500, 30)) * np.linspace(0.05, 3.0, 30)   # uneven inputs
    h = x.T @ x / len(x)
    plain = lowrank.svd(w, 8)
    aware = lowrank.svd(w, 8, hessian=h, damp=1e-6)
    st = litecomp.prune.scores.activation_stats([x.astype(np.float32)])
    diag = lowrank.svd(w, 8, activations=st, damp=1e-6)

    def out_err(f):
        return np.linalg.norm(x @ (w - f.a @ f.b).T) / np.linalg.norm(x @ w.T)
    assert out_err(aware) < out_err(diag) < out_err(plain)
    assert aware.error == pytest.approx(out_err(aware), rel=1e-3)
    with pytest.raises(ShapeError, match="hessian"):
        lowrank.svd(w, 8, hessian=np.eye(3))
    with pytest.raises(ArgumentError, match="not both"):
        lowrank.svd(w, 8, hessian=h, activations=st)


def test_bad_matrices():
    with pytest.raises(ShapeError, match="2-D"):
        lowrank.svd(np.ones(4, np.float32), 1)
    with pytest.raises(NonFiniteError):
        lowrank.svd(np.full((3, 3), np.nan, np.float32), 1)
    with pytest.raises(ArgumentError, match="algorithm"):
        lowrank.svd(np.ones((3, 3), np.float32), 1, algorithm="lanczos")


def test_state_dict_pass():
    sd = litecomp.examples.tiny_decoder_lm()
    new, rows = lowrank.lowrank_state_dict(sd, targets=["*.linear1.weight", "fc.weight"],
                                           rank=8)
    assert "transformer_decoder.layers.0.linear1.weight" not in new
    assert new["transformer_decoder.layers.0.linear1.first.weight"].shape == (8, 64)
    assert new["transformer_decoder.layers.0.linear1.second.weight"].shape == (128, 8)
    assert new["transformer_decoder.layers.0.linear1.second.bias"] is \
        sd["transformer_decoder.layers.0.linear1.bias"]
    assert [r.params_after for r in rows] == [8 * 192, 8 * 192, 8 * 1064]
    new, rows = lowrank.lowrank_state_dict(sd, targets="*.linear1.weight", rank=1.0)
    assert all(r.note.startswith("dense") for r in rows)
    assert "transformer_decoder.layers.0.linear1.weight" in new
    with pytest.raises(ArgumentError, match="match none"):
        lowrank.lowrank_state_dict(sd, targets="nothing.*", rank=2)
