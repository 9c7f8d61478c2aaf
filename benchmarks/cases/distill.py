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
