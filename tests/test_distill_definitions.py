"""Every distillation loss against its published definition, written here from the papers
and the peers' formulas -- not from litecomp.reference.distill (the kernels' twin) nor from
litecomp.torch.distillation_loss_torch:

- Hinton et al. 2015: T^2 KL(p || q) and the soft cross entropy T^2 H(p, q);
- reverse KL: KL(q || p);
- generalized JSD(beta), GKD (Agarwal et al. 2024, eq. 1) as TRL's ``generalized_jsd_loss``
  computes it: the mixture M = beta p + (1 - beta) q taken in log space (logsumexp of
  log q + log(1 - beta) and log p + log beta), beta KL(p || M) + (1 - beta) KL(q || M), and
  beta = 0 / 1 defined as KL(p || q) / KL(q || p); no T^2;
- DistiLLM (Ko et al. 2024, eqs. 3-4): skew KL KL(p || lam p + (1 - lam) q) and skew reverse
  KL KL(q || (1 - lam) p + lam q);
- total variation distance 0.5 sum |p - q|.

q = softmax(student / T), p = softmax(teacher / T).  The NumPy checks use SciPy's softmax and
``rel_entr`` (p log(p / m)) for every KL; the torch checks write TRL's and DistiLLM's
formulas in torch and differentiate them with autograd."""

import numpy as np
import pytest

from litecomp import distill as D

sp = pytest.importorskip("scipy.special")

KINDS = ["kl", "soft_cross_entropy", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]
HIDDEN = ["mse", "cosine"]  # raw values, no temperature


def _kl(a, b):
    return sp.rel_entr(a, b).sum(-1)


def definition(kind, s, t, T=1.0, weight=None):
    """Row losses [N] in float64 from the definitions above."""
    if kind == "mse":
        return ((np.asarray(s, np.float64) - t) ** 2).mean(-1)
    if kind == "cosine":  # torch's cosine_similarity: x.y / max(|x| |y|, eps), eps = 1e-8
        n = np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1)
        return 1 - (np.asarray(s, np.float64) * t).sum(-1) / np.maximum(n, 1e-8)
    q = sp.softmax(np.asarray(s, np.float64) / T, axis=-1)
    p = sp.softmax(np.asarray(t, np.float64) / T, axis=-1)
    if kind == "kl":
        return T * T * _kl(p, q)
    if kind == "soft_cross_entropy":
        return T * T * -(p * np.log(q)).sum(-1)
    if kind == "reverse_kl":
        return _kl(q, p)
    if kind == "jsd":
        beta = 0.5 if weight is None else weight
        if beta == 0:
            return _kl(p, q)
        if beta == 1:
            return _kl(q, p)
        m = beta * p + (1 - beta) * q
        return beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    lam = 0.1 if weight is None else weight
    if kind == "skew_kl":
        return _kl(p, lam * p + (1 - lam) * q)
    if kind == "skew_reverse_kl":
        return _kl(q, (1 - lam) * p + lam * q)
    if kind == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    raise ValueError(kind)


def _weight_kw(kind, w):
    if w is None:
        return {}
    return {"beta": w} if kind == "jsd" else {"lam": w}


def _cases():
    for kind in KINDS:
        weights = [None]
        if kind == "jsd":
            weights = [None, 0.0, 0.1, 0.9, 1.0]
        elif kind.startswith("skew"):
            weights = [None, 0.0, 0.3, 0.9]
        for w in weights:
            for T in (1.0, 2.5):
                yield kind, w, T
    for kind in HIDDEN:
        yield kind, None, 1.0


def _logits(n=6, v=211, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, v)) * 3, rng.standard_normal((n, v)) * 3


@pytest.mark.parametrize("kind,weight,T", list(_cases()))
def test_row_losses_are_the_published_definitions(kind, weight, T):
    s, t = _logits()
    want = definition(kind, s, t, T, weight)
    # |got - want| / (1 + |want|), measured over every case: float64 8.9e-16, float32
    # (float32 softmax, float64 row sums) 1.5e-7; bounds about 4x those
    for dtype, tol in ((np.float64, 4e-15), (np.float32, 6e-7)):
        got, _ = D.loss(kind, s.astype(dtype), t.astype(dtype), temperature=T,
                        reduction="none", **_weight_kw(kind, weight))
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", KINDS + HIDDEN)
def test_gradients_are_the_definitions_derivative(kind):
    """Central differences of the definition (float64, step 1e-5 on logits of size ~3):
    truncation ~h^2 f''' ~ 1e-10, cancellation ~1e-16 / h ~ 1e-11; a wrong gradient term
    (a missing T, a sign, a skipped mixture derivative) is off by 1e-2 or more."""
    s, t = _logits(n=3, v=17, seed=1)
    T = 1.0 if kind in HIDDEN else 1.5
    _, g = D.loss(kind, s, t, temperature=T, reduction="sum")
    h = 1e-5
    fd = np.zeros_like(s)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            up, dn = s.copy(), s.copy()
            up[i, j] += h
            dn[i, j] -= h
            fd[i, j] = (definition(kind, up, t, T).sum() - definition(kind, dn, t, T).sum()) / (2 * h)
    # measured: at most 2.5e-10 absolute (soft cross entropy, gradients up to 0.6)
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-9)


def test_labels_drop_rows_and_mean_is_over_the_kept_rows():
    """TRL keeps the rows whose label is not -100 and its 'batchmean' divides by their
    number; litecomp's 'mean' with labels (alpha = 0) is the same quantity."""
    s, t = _logits(n=8, v=50, seed=2)
    labels = np.array([3, -100, 7, 1, -100, 0, 2, 9])
    keep = labels != -100
    for kind in KINDS:
        want = definition(kind, s, t, 2.0)[keep].mean()
        got, _ = D.loss(kind, s, t, temperature=2.0, labels=labels)
        assert got == pytest.approx(want, rel=1e-15, abs=0), kind  # measured 1.9e-16


def test_kind_aliases_name_the_same_loss():
    s, t = _logits(n=2, v=30, seed=3)
    for alias, name in D._ALIASES.items():
        T = 1.0 if name in ("mse", "cosine") else 2.0
        a, ga = D.loss(alias, s, t, temperature=T)
        b, gb = D.loss(name, s, t, temperature=T)
        assert a == b and ga.tobytes() == gb.tobytes(), alias
        assert a == pytest.approx(definition(name, s, t, T).mean(), rel=1e-15)


# ------------------------------------------------------------------ torch: the peers' formulas
def _torch_peer(kind, st, tt, T, weight):
    """TRL's generalized_jsd_loss and DistiLLM's losses.py formulas, in torch, per row."""
    import torch
    import torch.nn.functional as F
    ls, lt = F.log_softmax(st / T, -1), F.log_softmax(tt / T, -1)
    if kind == "jsd":  # TRL: F.kl_div(input, target) = KL(target || input)
        beta = 0.5 if weight is None else weight
        if beta == 0:
            return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
        if beta == 1:
            return F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
        b = torch.tensor(beta, dtype=ls.dtype)
        lm = torch.logsumexp(torch.stack([ls + torch.log1p(-b), lt + torch.log(b)]), 0)
        return (b * F.kl_div(lm, lt, reduction="none", log_target=True)
                + (1 - b) * F.kl_div(lm, ls, reduction="none", log_target=True)).sum(-1)
    p, q = lt.exp(), ls.exp()
    lam = 0.1 if weight is None else weight
    if kind == "skew_kl":  # DistiLLM: -sum p log(lam p + (1 - lam) q), i.e. KL + H(p)
        return -(p * torch.log(lam * p + (1 - lam) * q)).sum(-1) + (p * lt).sum(-1)
    if kind == "skew_reverse_kl":  # DistiLLM: -sum q (log((1-lam) p + lam q) - log q)
        return -(q * torch.log((1 - lam) * p + lam * q) - q * ls).sum(-1)
    if kind == "tvd":  # DistiLLM's tv_distance
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "kl":  # Hinton, as torch users write it
        return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1) * T * T
    if kind == "soft_cross_entropy":
        return -(p * ls).sum(-1) * T * T
    if kind == "reverse_kl":
        return F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    if kind == "mse":
        return F.mse_loss(st, tt, reduction="none").mean(-1)
    if kind == "cosine":
        return 1 - F.cosine_similarity(st, tt, dim=-1, eps=1e-8)
    raise ValueError(kind)


@pytest.mark.parametrize("kind,weight,T", list(_cases()))
def test_losses_and_gradients_equal_trl_and_distillm_in_torch(kind, weight, T):
    torch = pytest.importorskip("torch")
    s, t = _logits(n=5, v=97, seed=4)
    st = torch.tensor(s, requires_grad=True)
    want = _torch_peer(kind, st, torch.tensor(t), T, weight)
    want.sum().backward()
    got, g = D.loss(kind, s, t, temperature=T, reduction="sum", **_weight_kw(kind, weight))
    # measured (float64): losses at most 9.0e-15 relative, gradients 6.7e-16 absolute
    assert got == pytest.approx(want.sum().item(), rel=3e-14, abs=0)
    np.testing.assert_allclose(g, st.grad.numpy(), rtol=0, atol=3e-15)
