"""Distillation: fused loss + gradient against torch eager (forward + backward), same threads.

The size that matters: [2048, 98631] (2048 rows of the example model's vocabulary).
torch's eager versions keep several [N, V] float32 temporaries (0.8 GB each; JSD about
11 GB in all), which a 24 GB machine holds; litecomp's extra memory is its one [N, V]
gradient.
"""

import math

import ml_dtypes
import numpy as np

import litecomp
from litecomp import distill

from ..harness import Run, case, missing, optional_import

V = 98631
N = 2048
T = 2.0


def _shape(quick):
    return (8, 1000) if quick else (N, V)


def _logits(quick, dtype=np.float32):
    shape = _shape(quick)
    s = litecomp.random.normal(shape, seed=1) * 3
    t = litecomp.random.normal(shape, seed=2) * 3
    return s.astype(dtype), t.astype(dtype)


def _torch_kl(torch, F, s, t):
    s = s.detach().requires_grad_()
    loss = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
    loss.backward()
    return loss.item(), s.grad


def _torch_rkl(torch, F, s, t):
    s = s.detach().requires_grad_()
    lq, lp = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    loss = (lq.exp() * (lq - lp)).sum(-1).mean()
    loss.backward()
    return loss.item(), s.grad


def _torch_jsd(torch, F, s, t, beta=0.5):
    """TRL's generalized_jsd_loss (beta = 0.5), eager."""
    s = s.detach().requires_grad_()
    lq, lp = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    m = torch.logsumexp(torch.stack([lq + math.log(1 - beta), lp + math.log(beta)]), 0)
    kl_t = F.kl_div(m, lp, reduction="none", log_target=True)
    kl_s = F.kl_div(m, lq, reduction="none", log_target=True)
    loss = (beta * kl_t + (1 - beta) * kl_s).sum() / s.shape[0]
    loss.backward()
    return loss.item(), s.grad


def _make(kind, torch_fn, dtype, quick):
    s, t = _logits(quick, dtype)
    torch = optional_import("torch")
    n, v = s.shape
    nbytes = s.nbytes + t.nbytes + n * v * 4  # read both once, write the float32 gradient

    def ours():
        return distill.loss(kind, s, t, temperature=T)

    if torch is None:
        return Run(litecomp=ours, anchor=missing(f"torch eager {kind}", "torch"), bytes=nbytes)
    import torch.nn.functional as F
    from litecomp.torch import from_numpy
    ts, tt = from_numpy(s), from_numpy(t)

    def anchor():
        return torch_fn(torch, F, ts, tt)

    def check(a, b):
        la, ga = a
        lb, gb = b
        tol = 1e-4 if dtype == np.float32 else 3e-2
        assert abs(la - lb) <= tol * max(1.0, abs(lb)), (la, lb)
        err = float((torch.from_numpy(ga) - gb.float()).abs().max())
        assert err <= tol * max(1e-6, float(gb.float().abs().max())) * 10, err

    return Run(litecomp=ours, anchor=(f"torch eager {kind} fwd+bwd", anchor), bytes=nbytes,
               check=check, notes="litecomp peak = its [N, V] float32 gradient")


@case("KL T=2 loss+grad [2048, 98631] f32", group="distill", repeats=3)
def kl_f32(quick):
    return _make("kl", _torch_kl, np.float32, quick)


@case("reverse KL T=2 loss+grad [2048, 98631] f32", group="distill", repeats=3)
def rkl_f32(quick):
    return _make("reverse_kl", _torch_rkl, np.float32, quick)


@case("JSD(0.5) T=2 loss+grad [2048, 98631] f32", group="distill", repeats=1)
def jsd_f32(quick):
    return _make("jsd", _torch_jsd, np.float32, quick)


@case("KL T=2 loss+grad [2048, 98631] bf16", group="distill", repeats=3)
def kl_bf16(quick):
    return _make("kl", _torch_kl, ml_dtypes.bfloat16, quick)


# ------------------------------------------------------------------ fused lm_head + loss
# The size: 4096 token positions, hidden 512, vocabulary 98,631; the teacher is
# given as hidden states and a head of the same shape, both heads with a bias.
FN, FD = 4096, 512


def _fused_problem(quick, dtype):
    n, d, v = (64, 32, 1000) if quick else (FN, FD, V)
    h = litecomp.random.normal((n, d), seed=5)
    th = litecomp.random.normal((n, d), seed=6)
    w = litecomp.random.uniform((v, d), -d ** -0.5, d ** -0.5, seed=7)
    tw = litecomp.random.uniform((v, d), -d ** -0.5, d ** -0.5, seed=8) * 3
    b = litecomp.random.uniform(v, -d ** -0.5, d ** -0.5, seed=9)
    tb = litecomp.random.uniform(v, -d ** -0.5, d ** -0.5, seed=10)
    return [a.astype(dtype) for a in (h, w, b, th, tw, tb)]


def _torch_fused_anchor(torch, F, h, w, b, th, tw, tb):
    """What a torch user writes: logits, log_softmax, kl_div, backward (eager)."""
    h, w, b = (x.detach().requires_grad_() for x in (h, w, b))
    s = F.linear(h, w, b)
    with torch.no_grad():
        t = F.linear(th, tw, tb)
    loss = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean",
                    log_target=True) * T * T
    loss.backward()
    return loss.item(), h.grad, w.grad, b.grad


def _fused(dtype, quick, via_torch=False):
    """distill.fused_linear (NumPy engine) or, with via_torch, FusedLinearDistillationLoss
    forward + backward on torch tensors (bf16: torch's own bf16 GEMM) against torch eager."""
    h, w, b, th, tw, tb = _fused_problem(quick, dtype)
    n, v = h.shape[0], w.shape[0]

    def ours():
        return distill.fused_linear(h, w, (th, tw, tb), kind="kl", temperature=T,
                                    student_bias=b)

    gemm = ("torch's bf16 GEMM (oneDNN), as torch eager" if via_torch else
            "NumPy's sgemm on the head widened to f32 in 16 MiB blocks: NumPy has no bf16 GEMM"
            if dtype != np.float32 else "NumPy's sgemm")
    notes = (f"N={n} d={h.shape[1]} V={v}; [N, V] f32 logits = {n * v * 4 / 2**20:.0f} MiB; "
             f"chunk {distill.default_chunk(v)}; litecomp peak includes grad W {v * h.shape[1] * 4 / 2**20:.0f} MiB; "
             f"4 matmuls = {8 * n * h.shape[1] * v / 1e12:.2f} TFLOP on both sides; "
             f"litecomp's matmuls: {gemm}")
    torch = optional_import("torch")
    if torch is None:
        return Run(litecomp=(lambda: None) if via_torch else ours,
                   anchor=missing("torch eager linear + kl_div", "torch"), notes=notes)
    import torch.nn.functional as F
    from litecomp.torch import FusedLinearDistillationLoss, from_numpy
    tt = [from_numpy(x) for x in (h, w, b, th, tw, tb)]

    if via_torch:
        crit = FusedLinearDistillationLoss("kl", temperature=T, reduction="batchmean")

        def ours():   # noqa: F811 - the torch user's call
            hh, ww, bb = (x.detach().requires_grad_() for x in tt[:3])
            loss = crit(hh, (ww, bb), (tt[3], (tt[4], tt[5])))
            loss.backward()
            return loss.item(), hh.grad, ww.grad, bb.grad

    def anchor():
        return _torch_fused_anchor(torch, F, *tt)

    def check(a, b_):
        tol = 1e-4 if dtype == np.float32 else 3e-2
        assert abs(a[0] - b_[0]) <= tol * abs(b_[0]), (a[0], b_[0])
        for g, ref in zip(a[1:], b_[1:]):
            g = (g if isinstance(g, torch.Tensor) else from_numpy(g)).float()
            ref = ref.float()
            err = float((g - ref).abs().max())
            assert err <= tol * 10 * float(ref.abs().max()), err

    return Run(litecomp=ours, anchor=("torch eager linear+log_softmax+kl_div fwd+bwd", anchor),
               check=check, notes=notes)


def _unfused_anchor(h, w, b, th, tw, tb):
    """litecomp without the fusion: materialise both [N, V] logits (NumPy matmuls),
    distill.kl_div on them, then the two matmuls back."""
    h, w, b, th, tw, tb = (x.astype(np.float32) for x in (h, w, b, th, tw, tb))
    s = h @ w.T + b
    t = th @ tw.T + tb
    value, g = distill.kl_div(s, t, temperature=T, reduction="batchmean")
    del s, t
    return value, g @ w, g.T @ h, g.sum(axis=0)


def _fused_vs_unfused(quick):
    h, w, b, th, tw, tb = _fused_problem(quick, np.float32)

    def ours():
        return distill.fused_linear(h, w, (th, tw, tb), kind="kl", temperature=T,
                                    student_bias=b)

    def anchor():
        return _unfused_anchor(h, w, b, th, tw, tb)

    def check(a, b_):
        assert abs(a.loss - b_[0]) <= 1e-5 * abs(b_[0]), (a.loss, b_[0])
        for g, ref in zip(a[1:], b_[1:]):
            assert np.abs(g - ref).max() <= 1e-4 * np.abs(ref).max()

    n, v = h.shape[0], w.shape[0]
    return Run(litecomp=ours, anchor=("litecomp unfused: logits + distill.kl_div + matmuls",
                                      anchor), check=check,
               notes=f"N={n} d={h.shape[1]} V={v}; the unfused path holds s, t and the "
                     f"gradient, {3 * n * v * 4 / 2**20:.0f} MiB of [N, V] float32")


@case("fused linear+KL T=2 [4096x512 -> 98631] f32 vs unfused", group="distill", repeats=1)
def fused_kl_vs_unfused(quick):
    return _fused_vs_unfused(quick)


@case("fused linear+KL T=2 [4096x512 -> 98631] f32", group="distill", repeats=1)
def fused_kl_f32(quick):
    return _fused(np.float32, quick)


@case("fused linear+KL T=2 [4096x512 -> 98631] bf16", group="distill", repeats=1)
def fused_kl_bf16(quick):
    return _fused(ml_dtypes.bfloat16, quick)


@case("fused linear+KL T=2 [4096x512 -> 98631] bf16, litecomp.torch.FusedLinearDistillationLoss",
      group="distill", repeats=1)
def fused_kl_bf16_torch(quick):
    return _fused(ml_dtypes.bfloat16, quick, via_torch=True)
