"""Parity with torch.nn.utils.prune (torch 2.13) and the litecomp.torch pruning interop.

Where torch's choice among tied scores is unspecified, the counts must agree and every
disagreement must lie on an entry whose score equals the threshold."""

import numpy as np
import pytest

import litecomp
from litecomp import prune

torch = pytest.importorskip("torch")
tprune = pytest.importorskip("torch.nn.utils.prune")
nn = torch.nn
import litecomp.torch as lt  # noqa: E402


def _torch_mask(module, name="weight"):
    return getattr(module, name + "_mask").detach().numpy() != 0


def _assert_same_up_to_ties(ours, theirs, scores):
    """Same number pruned; disagreements only where the score equals the threshold."""
    assert ours.sum() == theirs.sum()
    diff = ours != theirs
    if diff.any():
        pruned = scores[~ours]
        threshold = pruned.max()
        assert (scores[diff] == threshold).all(), (scores[diff], threshold)


@pytest.mark.parametrize("amount", [0.5, 0.3, 1, 17, 0.0, 1.0, 0.125])
def test_l1_unstructured_parity(amount, rng):
    w = (np.round(rng.standard_normal((64, 48)) * 8) / 8).astype(np.float32)  # many ties
    lin = nn.Linear(48, 64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    tprune.l1_unstructured(lin, "weight", amount)
    _assert_same_up_to_ties(prune.l1_unstructured(w, amount), _torch_mask(lin), np.abs(w))


def test_l1_unstructured_parity_distinct_values_is_exact(rng):
    w = rng.standard_normal((300, 200)).astype(np.float32)
    lin = nn.Linear(200, 300)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    tprune.l1_unstructured(lin, "weight", 0.37)
    np.testing.assert_array_equal(prune.l1_unstructured(w, 0.37), _torch_mask(lin))
    # iterative pruning: torch's PruningContainer vs mask=
    tprune.l1_unstructured(lin, "weight", 0.25)
    ours = prune.l1_unstructured(w, 0.25, mask=prune.l1_unstructured(w, 0.37))
    np.testing.assert_array_equal(ours, _torch_mask(lin))


@pytest.mark.parametrize("amount", [-1, 1.5, 10_000, -0.5])
def test_bad_amounts_fail_in_both(amount):
    lin = nn.Linear(10, 10)
    with pytest.raises((ValueError, TypeError)):
        tprune.l1_unstructured(lin, "weight", amount)
    with pytest.raises(litecomp.ArgumentError):
        prune.l1_unstructured(lin.weight.detach().numpy(), amount)


@pytest.mark.parametrize("n", [1, 2, float("inf")])
@pytest.mark.parametrize("shape,dim", [((40, 30), 0), ((40, 30), 1), ((40, 30), -1),
                                       ((8, 6, 3, 3), 0), ((8, 6, 3, 3), 1),
                                       ((8, 6, 3, 3), -1)])
def test_ln_structured_parity(n, shape, dim, rng):
    w = rng.standard_normal(shape).astype(np.float32)
    t = torch.from_numpy(w.copy())
    mod = nn.Module()
    mod.weight = nn.Parameter(t)
    tprune.ln_structured(mod, "weight", 0.4, n=n, dim=dim)
    theirs = _torch_mask(mod)
    ours = prune.ln_structured(w, 0.4, n, dim)
    norms = prune.channel_norms(w, n, dim)
    # torch computes norms in float32: a disagreement needs a near-tie of the norms
    d = dim % w.ndim
    axes = tuple(i for i in range(w.ndim) if i != d)
    ch_ours, ch_theirs = ours.any(axis=axes), theirs.any(axis=axes)
    assert ch_ours.sum() == ch_theirs.sum()
    for c in np.flatnonzero(ch_ours != ch_theirs):
        assert np.isclose(norms[c], np.sort(norms)[(~ch_ours).sum() - 1], rtol=1e-5)
    # iterative structured pruning on top
    tprune.ln_structured(mod, "weight", 0.5, n=n, dim=dim)
    ours2 = prune.ln_structured(w, 0.5, n, dim, mask=ours)
    if (ch_ours == ch_theirs).all():
        assert ours2.sum() == _torch_mask(mod).sum()


def test_global_unstructured_parity(rng):
    model = nn.Sequential(nn.Linear(30, 50), nn.ReLU(), nn.Linear(50, 20),
                          nn.Conv2d(3, 4, 3))
    params = [(model[0], "weight"), (model[2], "weight"), (model[3], "weight"),
              (model[0], "bias")]
    arrays = {f"{i}.{n}": getattr(m, n).detach().numpy().copy()
              for i, (m, n) in zip((0, 2, 3, 0), params)}
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.45)
    ours = prune.global_unstructured(arrays, 0.45)
    scores = np.concatenate([np.abs(a).ravel() for a in arrays.values()])
    theirs = np.concatenate([(getattr(m, n + "_mask").detach().numpy() != 0).ravel()
                             for m, n in params])
    _assert_same_up_to_ties(np.concatenate([m.ravel() for m in ours.values()]), theirs,
                            scores)
    # a second global round applies to the remaining entries, like torch's container
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.3)
    ours2 = prune.global_unstructured(arrays, 0.3, masks=ours)
    theirs2 = np.concatenate([(getattr(m, n + "_mask").detach().numpy() != 0).ravel()
                              for m, n in params])
    _assert_same_up_to_ties(np.concatenate([m.ravel() for m in ours2.values()]), theirs2,
                            scores)


@pytest.mark.parametrize("amount", [0.3, 7, 1.0, 0.0])
def test_random_methods_prune_the_same_counts(amount):
    lin = nn.Linear(20, 30)
    w = lin.weight.detach().numpy().copy()
    tprune.random_unstructured(lin, "weight", amount)
    assert prune.random_unstructured(w, amount, seed=5).sum() == _torch_mask(lin).sum()
    lin2 = nn.Linear(20, 30)
    a = amount if not isinstance(amount, int) else 3
    tprune.random_structured(lin2, "weight", a, dim=0)
    assert prune.random_structured(w, a, 0, seed=5).sum() == _torch_mask(lin2).sum()


def test_bake_equals_prune_remove_on_a_pruned_model():
    torch.manual_seed(0)
    m = lt.DecoderLM(vocab=300, d_model=32, heads=4, layers=2, ffn=64)
    with torch.no_grad():
        m.fc.weight[0, :4] = torch.tensor([float("inf"), -2.0, -0.0, 0.0])
    tprune.l1_unstructured(m.fc, "weight", 0.5)
    tprune.ln_structured(m.transformer_decoder.layers[0].linear1, "weight", 0.25, n=2, dim=0)
    tprune.random_unstructured(m.transformer_decoder.layers[1].linear2, "weight", 0.3)
    tprune.l1_unstructured(m.fc, "bias", 10)
    pruned_sd = {k: lt.to_numpy(v).copy() for k, v in m.state_dict().items()}
    assert "fc.weight_orig" in pruned_sd and "fc.weight_mask" in pruned_sd
    baked = prune.bake(pruned_sd)
    for mod, name in ((m.fc, "weight"), (m.transformer_decoder.layers[0].linear1, "weight"),
                      (m.transformer_decoder.layers[1].linear2, "weight"), (m.fc, "bias")):
        tprune.remove(mod, name)
    removed = {k: lt.to_numpy(v) for k, v in m.state_dict().items()}
    assert list(baked) == list(removed)  # same keys in the same order
    for k in removed:
        assert baked[k].dtype == removed[k].dtype and baked[k].shape == removed[k].shape
        assert baked[k].tobytes() == removed[k].tobytes(), k
    fresh = lt.DecoderLM(vocab=300, d_model=32, heads=4, layers=2, ffn=64)
    lt.load_numpy_state_dict(fresh, baked)  # strict: the keys are the unpruned model's


def test_apply_masks_hooks_keep_pruned_weights_at_zero(rng):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    w = model[0].weight.detach().numpy()
    masks = {"0.weight": prune.l1_unstructured(w, 0.5),
             "2.weight": prune.nm(model[2].weight.detach().numpy(), 2, 4)}
    lt.apply_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 16)).square().mean().backward()
        opt.step()
    model(torch.randn(1, 16))  # the pre-hook recomputes weight = orig * mask
    assert (model[0].weight.detach().numpy()[~masks["0.weight"]] == 0).all()
    assert (model[2].weight.detach().numpy()[~masks["2.weight"]] == 0).all()
    back = lt.masks_from_module(model)
    assert set(back) == set(masks)
    for k in masks:
        np.testing.assert_array_equal(back[k], masks[k])
    with pytest.raises(litecomp.ShapeError):
        lt.apply_masks(model, {"0.bias": np.ones(3, bool)})


def test_activation_stats_match_manual_hooks():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 6))
    batches = [torch.randn(5, 7, 12) for _ in range(3)]
    stats = lt.activation_stats(model, batches)
    assert set(stats) == {"0", "2"}
    x = torch.cat([b.reshape(-1, 12) for b in batches]).double()
    np.testing.assert_allclose(stats["0"].mean_sq, (x ** 2).mean(0).numpy(), rtol=1e-6)
    h = torch.cat([nn.functional.gelu(model[0](b)).reshape(-1, 24) for b in batches]).double()
    np.testing.assert_allclose(stats["2"].mean_sq, (h ** 2).mean(0).detach().numpy(),
                               rtol=1e-5)
    assert stats["0"].count == 105
    only = lt.activation_stats(model, batches[:1], layers=["2"])
    assert set(only) == {"2"}
    # Wanda on top: per-row selection of |W| * sqrt(a)
    w = model[0].weight.detach().numpy()
    s = prune.scores.wanda(w, stats["0"])
    mask = prune.per_row(w, 0.5, importance_scores=s)
    assert (mask.sum(axis=1) == 6).all()


def test_apply_masks_checks_every_mask_before_changing_the_model():
    lin = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    good = np.ones((3, 4), bool)
    with pytest.raises(litecomp.ShapeError, match="1.weight"):
        lt.apply_masks(lin, {"0.weight": good, "1.weight": np.ones((9, 9), bool)})
    assert not hasattr(lin[0], "weight_mask")        # the first mask was not applied either
