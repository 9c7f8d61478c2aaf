import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import litecomp  # noqa: E402
from litecomp.torch import DistillationLoss, distillation_loss_torch  # noqa: E402

KINDS = ["kl", "soft_cross_entropy", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl",
         "tvd", "mse", "cosine"]


def _pair(n=3, v=11, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n, v, generator=g, dtype=torch.float64) * 2).to(dtype)
    t = (torch.randn(n, v, generator=g, dtype=torch.float64) * 2).to(dtype)
    return s.requires_grad_(), t


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    s, t = _pair()
    T = 1.0 if kind in ("mse", "cosine") else 2.0
    fn = DistillationLoss(kind, temperature=T)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s,), eps=1e-6, atol=1e-7)


def test_gradcheck_labels_none_reduction_and_3d():
    s, t = _pair(n=6, v=7)
    s3 = s.detach().reshape(2, 3, 7).requires_grad_()
    t3 = t.reshape(2, 3, 7)
    labels = torch.tensor([[1, -100, 3], [0, 6, 2]])
    fn = DistillationLoss("kl", temperature=3.0, alpha=0.5, reduction="none")
    assert torch.autograd.gradcheck(lambda x: fn(x, t3, labels), (s3,), eps=1e-6, atol=1e-7)
    out = fn(s3, t3, labels)
    assert out.shape == (2, 3) and out[0, 1].item() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_fused_matches_torch_math(kind):
    s, t = _pair(n=5, v=300, dtype=torch.float32, seed=3)
    T = 1.0 if kind in ("mse", "cosine") else 2.0
    fused = DistillationLoss(kind, temperature=T)(s, t)
    fused.backward()
    g1 = s.grad.clone()
    s.grad = None
    plain = distillation_loss_torch(kind, s.double(), t.double(), temperature=T)
    plain.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(g1, s.grad, rtol=1e-4, atol=1e-7)


def test_cpu_tensors_are_not_copied():
    s, t = _pair(n=4, v=64, dtype=torch.float32)
    seen = []
    orig = litecomp.distill.loss

    def spy(kind, a, b, **kw):
        seen.append((a.ctypes.data, b.ctypes.data))
        return orig(kind, a, b, **kw)

    litecomp.distill.loss = spy
    try:
        DistillationLoss("kl")(s, t)
    finally:
        litecomp.distill.loss = orig
    assert seen == [(s.data_ptr(), t.data_ptr())]


def test_bf16_tensors():
    s, t = _pair(n=4, v=500, dtype=torch.bfloat16)
    loss = DistillationLoss("jsd", temperature=2.0)(s, t)
    loss.backward()
    assert loss.dtype == torch.bfloat16 and s.grad.dtype == torch.bfloat16
    ref = distillation_loss_torch("jsd", s.float(), t.float(), temperature=2.0)
    assert loss.float().item() == pytest.approx(ref.item(), rel=1e-2)


def test_matches_f_kl_div_in_a_training_loop():
    """Drop-in: the same student trained with F.kl_div*T^2 and with DistillationLoss ends
    at the same weights."""
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    teacher = torch.nn.Linear(10, 5)
    with torch.no_grad():
        tl = teacher(x)
    weights = []
    for use_litecomp in (False, True):
        torch.manual_seed(1)
        student = torch.nn.Linear(10, 5)
        opt = torch.optim.SGD(student.parameters(), lr=0.5)
        crit = DistillationLoss("kl", temperature=2.0)
        for _ in range(20):
            opt.zero_grad()
            sl = student(x)
            if use_litecomp:
                loss = crit(sl, tl)
            else:
                loss = F.kl_div(F.log_softmax(sl / 2, -1), F.softmax(tl / 2, -1),
                                reduction="batchmean") * 4
            loss.backward()
            opt.step()
        weights.append(student.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-5)


def test_other_devices_use_torch_math():
    # 'meta' tensors stand in for any non-CPU device: the torch path runs (shapes only)
    s = torch.empty(4, 3, 10, device="meta", requires_grad=True)
    t = torch.empty(4, 3, 10, device="meta")
    for kind in KINDS:
        out = DistillationLoss(kind, reduction="none")(s, t)
        assert out.device.type == "meta" and out.shape == (4, 3)
    out = DistillationLoss("kl", temperature=2.0)(s, t)
    out.backward()
    assert s.grad.shape == s.shape


def test_skew_lambda_spelling_lam_and_deprecated_beta():
    s, t = _pair(n=3, v=20, dtype=torch.float32)
    want = DistillationLoss("skew_kl", lam=0.3)(s, t)
    with pytest.warns(DeprecationWarning, match="beta= is deprecated; pass lam="):
        fn = DistillationLoss("skew_kl", beta=0.3)
    assert fn(s, t).item() == want.item()
    assert want.item() != DistillationLoss("skew_kl")(s, t).item()
    st = s.detach().double()
    tt = t.double()
    ref = distillation_loss_torch("skew_reverse_kl", st, tt, lam=0.3)
    with pytest.warns(DeprecationWarning, match="beta= is deprecated; pass lam="):
        old = distillation_loss_torch("skew_reverse_kl", st, tt, beta=0.3)
    assert old.item() == ref.item()
    assert ref.item() == pytest.approx(
        litecomp.distill.skew_reverse_kl(st.numpy(), tt.numpy(), lam=0.3)[0], rel=1e-12)


def test_bad_kind():
    with pytest.raises(litecomp.ArgumentError, match="kind"):
        DistillationLoss("nope")


def test_backward_scales_by_grad_output():
    s, t = _pair(n=3, v=20, dtype=torch.float32)
    fn = DistillationLoss("kl", temperature=2.0)
    (fn(s, t) * 3.0).backward()
    g3 = s.grad.clone()
    s.grad = None
    fn(s, t).backward()
    torch.testing.assert_close(g3, 3.0 * s.grad)
