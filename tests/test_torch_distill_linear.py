"""FusedLinearDistillationLoss, hidden_states, FeatureDistillation, distill_step, DecoderLM."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import litecomp  # noqa: E402
import litecomp.torch as lt  # noqa: E402
from litecomp.torch import (DistillationLoss, FeatureDistillation,  # noqa: E402
                            FusedLinearDistillationLoss, distill_step, hidden_states)

KINDS = ["kl", "soft_cross_entropy", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd",
         "mse", "cosine"]


def _opts(kind):
    return {} if kind in ("mse", "cosine") else dict(temperature=2.0, alpha=0.3)


def _problem(dtype=torch.float32, n=12, d=8, dt=6, v=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(v, generator=g, dtype=dtype, requires_grad=True)
    th = torch.randn(n, dt, generator=g, dtype=dtype)
    tw = torch.randn(v, dt, generator=g, dtype=dtype)
    lab = torch.randint(0, v, (n,), generator=g)
    lab[::5] = -100
    return h, w, b, th, tw, lab


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    h, w, b, th, tw, lab = _problem(torch.float64, n=6, d=5, dt=4, v=11)
    crit = FusedLinearDistillationLoss(kind, chunk=4, **_opts(kind))
    assert torch.autograd.gradcheck(lambda h, w, b: crit(h, (w, b), (th, tw), lab), (h, w, b))


@pytest.mark.parametrize("kind", KINDS)
def test_same_as_logits_through_distillation_loss(kind):
    h, w, b, th, tw, lab = _problem()
    fused = FusedLinearDistillationLoss(kind, chunk=5, **_opts(kind))(h, (w, b), (th, tw), lab)
    fused.backward()
    got = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    plain = DistillationLoss(kind, **_opts(kind))(h @ w.T + b, th @ tw.T, lab)
    plain.backward()
    # measured (5 seeds, every kind): loss identical, gradients 3.6e-7 of their largest entry
    assert fused.item() == pytest.approx(plain.item(), rel=1e-7)
    for g, x in zip(got, (h, w, b)):
        assert (g - x.grad).abs().max() <= 2e-6 * x.grad.abs().max()


def test_nn_linear_heads_3d_hidden_and_teacher_logits():
    torch.manual_seed(0)
    head, t_head = nn.Linear(8, 30), nn.Linear(16, 30)
    h = torch.randn(2, 5, 8, requires_grad=True)
    th = torch.randn(2, 5, 16)
    lab = torch.randint(0, 30, (2, 5))
    crit = FusedLinearDistillationLoss("kl", temperature=2.0, alpha=0.5, reduction="batchmean")
    a = crit(h, head, (th, t_head), lab)
    with torch.no_grad():
        t_logits = t_head(th)
    b = crit(h, head, t_logits, lab)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    a.backward()
    assert h.grad.shape == h.shape and head.weight.grad.shape == (30, 8)
    assert t_head.weight.grad is None                      # no gradient into the teacher


def test_bfloat16_parameters_get_bfloat16_gradients():
    h, w, b, th, tw, lab = _problem()
    crit = FusedLinearDistillationLoss("kl", temperature=2.0)
    ref = crit(h, (w, b), (th, tw), lab)
    ref.backward()
    hb, wb, bb = (x.detach().bfloat16().requires_grad_() for x in (h, w, b))
    out = crit(hb, (wb, bb), (th.bfloat16(), tw.bfloat16()), lab)
    out.backward()
    assert out.dtype == wb.grad.dtype == torch.bfloat16
    # bf16 inputs (8-bit mantissa) move the result: measured (5 seeds) 0.35% for the loss,
    # 0.9% of the largest weight-gradient entry
    assert out.item() == pytest.approx(ref.item(), rel=0.01)
    assert (wb.grad.float() - w.grad).abs().max() <= 0.03 * w.grad.abs().max()


# ------------------------------------------------------------------ bfloat16: torch's GEMM
def _bf16_problem(seed, n=200, d=64, v=3000):
    g = torch.Generator().manual_seed(seed)
    h, th = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) * d ** -0.5
    tw = torch.randn(v, d, generator=g) * d ** -0.5 * 3
    b, tb = torch.randn(v, generator=g) * 0.1, torch.randn(v, generator=g) * 0.1
    lab = torch.randint(0, v, (n,), generator=g)
    lab[::4] = -100
    return [x.bfloat16() for x in (h, w, b, th, tw, tb)], lab


def _eager(kind, h, w, b, th, tw, tb, labels=None, alpha=0.0):
    """What a torch user writes: F.linear, the loss in torch ops, backward (eager)."""
    h, w, b = (x.detach().requires_grad_() for x in (h, w, b))
    with torch.no_grad():
        t = F.linear(th, tw, tb)
    loss = lt.distillation_loss_torch(kind, F.linear(h, w, b), t, temperature=2.0,
                                      labels=labels, alpha=alpha)
    loss.backward()
    return [loss.detach()] + [x.grad for x in (h, w, b)]


def _fused_bf16(kind, h, w, b, th, tw, tb, labels=None, alpha=0.0, chunk=32):
    h, w, b = (x.detach().requires_grad_() for x in (h, w, b))
    crit = FusedLinearDistillationLoss(kind, temperature=2.0, alpha=alpha, chunk=chunk)
    loss = crit(h, (w, b), (th, (tw, tb)), labels)
    loss.backward()
    return [loss.detach()] + [x.grad for x in (h, w, b)]


def _rel(a, ref):
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max())


# Measured (3 seeds, N=200, d=64, V=3000, chunk 32), max |diff| / max |ref| for the loss and
# the gradients (hidden, weight, bias).  Against torch eager bf16: the loss (a bf16 scalar on
# both sides) 0 or 1 ulp (4.1e-3); gradients KL 1.3e-2, JSD 2.9e-2, KL with labels + alpha
# 0.3 + ignored rows 1.1e-2.  Most of that is eager's own error: against float64 on the same
# bf16 inputs eager is at 1.3e-2 / 2.9e-2 / 9.7e-3, the fused path at 1.6e-2 / 6.1e-3 / 9.7e-3
# (bf16 logits on both sides; the fused path's softmax and divergence are float32/float64).
BF16_CASES = {"kl": ("kl", {}, 3e-2), "jsd": ("jsd", {}, 6e-2),
              "kl+labels": ("kl", {"alpha": 0.3, "labels": True}, 3e-2)}


@pytest.mark.parametrize("case", list(BF16_CASES))
def test_bf16_matches_torch_eager_bf16(case):
    kind, opts, grad_tol = BF16_CASES[case]
    tensors, lab = _bf16_problem(seed=0)
    opts = dict(opts, labels=lab if opts.get("labels") else None)
    got, want = _fused_bf16(kind, *tensors, **opts), _eager(kind, *tensors, **opts)
    ref = _eager(kind, *(x.double() for x in tensors), **opts)   # float64, same bf16 inputs
    assert all(g.dtype == torch.bfloat16 for g in got)
    assert got[0].item() == pytest.approx(want[0].item(), rel=1.6e-2)    # 2 bf16 ulps
    for g, w_, r in zip(got[1:], want[1:], ref[1:]):
        assert _rel(g, w_) <= grad_tol
        assert _rel(g, r) <= 3e-2


def test_bf16_runs_torch_bf16_matmuls(monkeypatch):
    """bf16 tensors take the torch engine: every matmul is torch's, in bf16; float32 ones
    stay on NumPy's BLAS (no torch matmul at all)."""
    calls = []
    for name in ("mm", "addmm"):
        real = getattr(torch, name)

        def spy(*args, _real=real, _name=name, **kw):
            calls.append((_name, {a.dtype for a in args if isinstance(a, torch.Tensor)}))
            return _real(*args, **kw)
        monkeypatch.setattr(torch, name, spy)
    h, w, b, th, tw, lab = _problem()          # 12 rows, 3 of them ignored: chunks of 5 + 4
    crit = FusedLinearDistillationLoss("kl", temperature=2.0, chunk=5)
    crit(h, (w, b), (th, tw), lab).backward()
    assert calls == []
    hb, wb, bb = (x.detach().bfloat16().requires_grad_() for x in (h, w, b))
    crit(hb, (wb, bb), (th.bfloat16(), tw.bfloat16()), lab).backward()
    # per chunk: student logits (addmm, with the bias), teacher logits, hidden-state
    # gradient, weight gradient (one 40-row block)
    assert [n for n, _ in calls] == ["addmm", "mm", "mm", "mm"] * 2
    assert all(dts == {torch.bfloat16} for _, dts in calls)


def test_bf16_is_the_chunked_bf16_computation():
    """The torch engine is, chunk by chunk: bf16 logits from F.linear, the row kernel's
    float32 gradient cast to bf16 once, bf16 matmuls back, the weight's and bias's gradient
    summed over chunks in float32."""
    (h, w, b, th, tw, tb), lab = _bf16_problem(seed=1, n=96, v=1000)
    keep = lab != -100
    got = _fused_bf16("jsd", h, w, b, th, tw, tb, labels=lab, chunk=16)
    rows = keep.nonzero().flatten()
    gh = torch.zeros_like(h)
    gw, gb, total = torch.zeros(w.shape), torch.zeros(b.shape), 0.0
    for c in range(0, rows.numel(), 16):
        r = rows[c:c + 16]
        s, t = F.linear(h[r], w, b), F.linear(th[r], tw, tb)
        value, g = litecomp.distill.jsd(lt.to_numpy(s), lt.to_numpy(t), temperature=2.0,
                                        labels=lab[r].numpy(), reduction="sum")
        g = torch.from_numpy(g) / rows.numel()
        total += value
        g16 = g.bfloat16()
        gh[r] = g16 @ w
        gw += g16.T @ h[r]
        gb += g.sum(0)
    # the same bits (3 seeds checked): the GEMMs are the same oneDNN calls on both sides
    assert got[0].item() == torch.tensor(total / rows.numel()).bfloat16().item()
    assert torch.equal(got[1], gh)
    assert torch.equal(got[2], gw.bfloat16()) and torch.equal(got[3], gb.bfloat16())


def test_bf16_3d_non_contiguous_hidden_and_teacher_logits():
    torch.manual_seed(0)
    head = nn.Linear(8, 30).bfloat16()
    h = torch.randn(5, 2, 8).bfloat16().transpose(0, 1)          # [2, 5, 8], not contiguous
    t_logits = torch.randn(2, 5, 30).bfloat16()
    lab = torch.randint(0, 30, (2, 5))
    lab[0, 1] = -100
    crit = FusedLinearDistillationLoss("kl", temperature=2.0, alpha=0.5, chunk=3)
    hs = [h.detach().requires_grad_(), h.contiguous().detach().requires_grad_()]
    out = [crit(x, head, t_logits, lab) for x in hs]
    for o in out:
        o.backward()
    assert out[0].item() == out[1].item()
    assert torch.equal(hs[0].grad, hs[1].grad) and hs[0].grad.shape == (2, 5, 8)
    want = _eager_logits(h, head, t_logits, lab)
    # measured (5 seeds): the bf16 loss equal or 1 ulp apart (6.8e-3), the hidden states'
    # gradient 9.4e-3 of its largest entry
    assert out[0].item() == pytest.approx(want[0], rel=1.6e-2)          # 2 bf16 ulps
    assert _rel(hs[0].grad, want[1]) <= 2e-2


def _eager_logits(h, head, t_logits, lab):
    h = h.detach().requires_grad_()
    loss = lt.distillation_loss_torch("kl", head(h), t_logits, temperature=2.0, labels=lab,
                                      alpha=0.5)
    loss.backward()
    return loss.item(), h.grad


def test_bf16_no_n_by_v_array_beyond_one_chunk():
    """The torch engine's buffers: bf16 student and teacher logits and the float32 gradient
    of one chunk, the float32 weight gradient; nothing of size [N, V]."""
    import tracemalloc
    n, d, v, chunk = 4096, 32, 8192, 64
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g).bfloat16()
    w = (torch.randn(v, d, generator=g) * 0.3).bfloat16()
    th = torch.randn(n, d, generator=g).bfloat16()
    crit = FusedLinearDistillationLoss("kl", chunk=chunk)
    crit(h[:chunk].requires_grad_(), w.requires_grad_(), (th[:chunk], w.detach())).backward()
    tracemalloc.start()       # sees NumPy's allocations (the buffers and gradients), not torch's
    crit(h.requires_grad_(), w, (th, w.detach()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    buffers = chunk * v * (2 + 2 + 4)
    grads = n * d * 2 + v * d * 4
    # measured: peak = grads + buffers + 41 KiB
    assert peak < grads + buffers + (256 << 10)
    assert peak < n * v * 2 / 8                      # 1/8 of one [N, V] bf16 array


def test_only_the_gradients_autograd_asks_for():
    h, w, b, th, tw, lab = _problem()
    crit = FusedLinearDistillationLoss("kl")
    with torch.no_grad():
        v = crit(h, (w, b), (th, tw), lab)
    assert v.grad_fn is None
    w.requires_grad_(False)                                # a frozen head
    crit(h, (w, b), (th, tw), lab).backward()
    assert h.grad is not None and b.grad is not None and w.grad is None


def test_backward_scales_by_grad_output():
    h, w, b, th, tw, lab = _problem()
    crit = FusedLinearDistillationLoss("jsd")
    (3.0 * crit(h, w, (th, tw))).backward()
    g3 = h.grad.clone()
    h.grad = None
    crit(h, w, (th, tw)).backward()
    torch.testing.assert_close(g3, 3.0 * h.grad)


def test_other_devices_use_torch_math():
    h = torch.empty(4, 3, 8, device="meta", requires_grad=True)
    head = nn.Linear(8, 20, device="meta")
    t = torch.empty(4, 3, 20, device="meta")
    out = FusedLinearDistillationLoss("kl", temperature=2.0)(h, head, t)
    assert out.device.type == "meta" and out.shape == ()


def test_bad_arguments():
    with pytest.raises(litecomp.ArgumentError, match="reduction"):
        FusedLinearDistillationLoss("kl", reduction="none")
    with pytest.raises(litecomp.ArgumentError, match="kind"):
        FusedLinearDistillationLoss("nope")
    h, w, b, th, tw, lab = _problem()
    with pytest.raises(litecomp.ArgumentError, match="lm_head"):
        FusedLinearDistillationLoss()(h, "fc", th @ tw.T)
    with pytest.raises(litecomp.ArgumentError, match="head"):
        hidden_states(nn.Linear(3, 3), torch.zeros(1, 3), head="lm_head")


# ------------------------------------------------------------------ models
def _lm(vocab=50, d=32, layers=2, seed=0):
    torch.manual_seed(seed)
    return lt.DecoderLM(vocab=vocab, d_model=d, heads=4, layers=layers, ffn=2 * d)


def test_decoder_lm_cannot_see_future_tokens():
    m = _lm().eval()
    x = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 50
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.equal(a[:, :6], b[:, :6])           # positions 0..5 do not read 6..9
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_hidden_states_skips_the_head_and_puts_it_back():
    m = _lm().eval()
    x = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        h, head = hidden_states(m, x)
        logits = m(x)
    assert head is m.fc and h.shape == (2, 7, 32)
    torch.testing.assert_close(m.fc(h), logits)

    class Out:                                       # a transformers-style output
        def __init__(self, logits):
            self.logits = logits

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = nn.Linear(4, 9)

        def forward(self, x):
            if x.shape[0] == 0:
                raise RuntimeError("boom")
            return Out(self.lm_head(x * 2))

    wm = Wrapped()
    h, head = hidden_states(wm, torch.ones(3, 4))
    assert head is wm.lm_head and torch.equal(h, torch.full((3, 4), 2.0))
    with pytest.raises(RuntimeError):
        hidden_states(wm, torch.ones(0, 4))
    assert wm.lm_head is head                         # restored after an exception


def test_distill_step_fused_equals_logits_path():
    teacher = _lm(d=32, seed=1)
    students = [_lm(d=16, layers=1, seed=2), _lm(d=16, layers=1, seed=2)]
    x = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(3))
    batch = (x[:, :-1], x[:, 1:])
    losses = [DistillationLoss("kl", temperature=2.0, alpha=0.5),
              FusedLinearDistillationLoss("kl", temperature=2.0, alpha=0.5)]
    values = []
    for student, loss in zip(students, losses):
        opt = torch.optim.SGD(student.parameters(), lr=0.5)
        values.append([distill_step(student, teacher, batch, loss, opt) for _ in range(3)])
    assert values[0] == pytest.approx(values[1], rel=1e-5)
    assert values[0][2] < values[0][0]                 # it learns
    for a, b in zip(students[0].parameters(), students[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert teacher.training is False and students[0].training is True


def test_feature_distillation_projects_and_trains():
    teacher = _lm(d=32, layers=2, seed=1)
    student = _lm(d=16, layers=1, seed=2)
    x = torch.randint(0, 50, (2, 6))
    feats = FeatureDistillation(student, teacher,
                                {"transformer_decoder.layers.0": "transformer_decoder.layers.1"},
                                example=x)
    proj = feats.projections[0]
    assert isinstance(proj, nn.Linear) and tuple(proj.weight.shape) == (32, 16)
    # the loss is MSE(proj(student layer 0), teacher layer 1)
    keep = {}
    hs = student.transformer_decoder.layers[0].register_forward_hook(
        lambda m, a, o: keep.__setitem__("s", o))
    ht = teacher.transformer_decoder.layers[1].register_forward_hook(
        lambda m, a, o: keep.__setitem__("t", o))
    student(x)
    with torch.no_grad():
        teacher(x)
    value = feats()
    hs.remove()
    ht.remove()
    want = ((proj(keep["s"]) - keep["t"]) ** 2).mean()
    assert value.item() == pytest.approx(want.item(), rel=1e-5)
    value.backward()
    assert proj.weight.grad is not None
    assert student.transformer_decoder.layers[0].linear1.weight.grad is not None
    with pytest.raises(litecomp.ArgumentError, match="run the student"):
        feats()                                        # the captured outputs were used up
    # in distill_step, next to the logit loss
    opt = torch.optim.Adam([*student.parameters(), *feats.parameters()], lr=1e-2)
    loss = FusedLinearDistillationLoss("kl")
    first = distill_step(student, teacher, x, loss, opt, features=feats)
    for _ in range(5):
        last = distill_step(student, teacher, x, loss, opt, features=feats)
    assert last < first
    feats.remove()
    student(x)
    assert not feats._seen["student"]                  # hooks are gone


def test_feature_distillation_cosine_same_width_and_errors():
    a, b = _lm(seed=1), _lm(seed=2)
    x = torch.randint(0, 50, (2, 4))
    feats = FeatureDistillation(a, b, [("embed", "embed")], kind="cosine", example=x)
    assert isinstance(feats.projections[0], nn.Identity)
    a(x)
    b(x)
    want = 1 - torch.nn.functional.cosine_similarity(a.embed(x), b.embed(x), dim=-1).mean()
    assert feats().item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(litecomp.ArgumentError, match="no module"):
        FeatureDistillation(a, b, {"nope": "embed"}, example=x)
    with pytest.raises(litecomp.ArgumentError, match="kind"):
        FeatureDistillation(a, b, {"embed": "embed"}, example=x, kind="kl")
