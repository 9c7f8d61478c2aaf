"""Distillation losses for PyTorch training loops.

``DistillationLoss`` is an ``nn.Module`` whose forward runs the fused C kernel
(``litecomp.distill``) on CPU tensors -- zero-copy, loss and gradient in one call, the
gradient kept until backward -- and the same math written in torch ops on any other device
(``distillation_loss_torch``).  The teacher is a constant (no gradient flows into it).

Under DistributedDataParallel each rank computes the loss of its own rows (a per-rank loss);
DDP averages the student's parameter gradients across ranks as usual, so with equal rows per
rank ``reduction="mean"`` gives the global mean's gradient.
"""

import torch
from torch import nn
import torch.nn.functional as F

from .. import distill as _d
from .._check import renamed
from . import from_numpy, to_numpy

_C_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _masked(x, keep):
    """x where keep, 0 elsewhere -- with a zero (not NaN) gradient in the masked places."""
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _xlog(p, d):
    keep = p > 0
    return _masked(p * _masked(d, keep), keep)


def distillation_loss_torch(kind, student, teacher, *, temperature=1.0, reduction="mean",
                            ignore_index=-100, labels=None, alpha=0.0, beta=None, lam=None):
    """The definition of every litecomp distillation loss in plain torch ops (autograd
    differentiates it).  Used for tensors the C kernels do not take, and as a reference.
    beta: JSD's beta; lam: the skew losses' lambda (``beta=`` for them is deprecated)."""
    kind = _d._ALIASES.get(kind, kind)
    if kind in _d._SKEW_KINDS:
        lam, beta = renamed(lam, beta, "lam", "beta"), None
    T = float(temperature)
    v = student.shape[-1]
    s = student.reshape(-1, v)
    t = teacher.detach().reshape(-1, v).to(s.dtype)
    if kind == "mse":
        rl = ((s - t) ** 2).mean(-1)
    elif kind == "cosine":
        rl = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    else:
        lq, lp = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
        q, p = lq.exp(), lp.exp()
        t2 = T * T if kind in ("kl", "soft_cross_entropy") else 1.0
        if kind == "jsd" and beta is not None and float(beta) in (0.0, 1.0):
            kind = "kl" if float(beta) == 0.0 else "reverse_kl"   # TRL's convention
        if kind == "kl":
            rl = _xlog(p, lp - lq).sum(-1) * t2
        elif kind == "soft_cross_entropy":
            rl = _xlog(p, -lq).sum(-1) * t2
        elif kind == "reverse_kl":
            rl = _xlog(q, lq - lp).sum(-1)
        elif kind == "jsd":
            b = 0.5 if beta is None else float(beta)
            lm = torch.log(b * p + (1 - b) * q)
            rl = b * _xlog(p, lp - lm).sum(-1) + (1 - b) * _xlog(q, lq - lm).sum(-1)
        elif kind == "skew_kl":
            lam = 0.1 if lam is None else float(lam)
            rl = _xlog(p, lp - torch.log(lam * p + (1 - lam) * q)).sum(-1)
        elif kind == "skew_reverse_kl":
            lam = 0.1 if lam is None else float(lam)
            rl = _xlog(q, lq - torch.log(lam * q + (1 - lam) * p)).sum(-1)
        elif kind == "tvd":
            rl = 0.5 * (q - p).abs().sum(-1)
        else:
            raise ValueError(f"kind: unknown loss {kind!r}")
    valid = torch.ones(rl.shape, dtype=torch.bool, device=rl.device)
    if labels is not None:
        lab = labels.reshape(-1)
        valid = lab != ignore_index
        if alpha:
            ce = F.cross_entropy(s, torch.where(valid, lab, 0), reduction="none")
            rl = alpha * ce + (1 - alpha) * rl
    rl = _masked(rl, valid)
    if reduction == "none":
        return rl.reshape(student.shape[:-1])
    if reduction == "sum":
        return rl.sum()
    if reduction == "mean":  # a tensor divisor: no host sync on accelerators
        return rl.sum() / valid.sum().clamp_min(1).to(rl.dtype)
    return rl.sum() / (student.shape[0] if student.dim() > 1 else 1)


class _FusedLoss(torch.autograd.Function):
    """Loss and gradient from one C call; backward scales the saved gradient."""

    @staticmethod
    def forward(ctx, student, teacher, labels, cfg):
        s = to_numpy(student.detach())
        t = to_numpy(teacher.detach())
        lab = None if labels is None else to_numpy(labels)
        value, g = _d.loss(cfg["kind"], s, t, temperature=cfg["temperature"],
                           reduction=cfg["reduction"], ignore_index=cfg["ignore_index"],
                           labels=lab, alpha=cfg["alpha"], beta=cfg["beta"], lam=cfg["lam"],
                           grad=ctx.needs_input_grad[0])
        ctx.none = cfg["reduction"] == "none"
        ctx.grad = None if g is None else from_numpy(g).to(student.dtype)
        if ctx.none:
            return from_numpy(value).to(student.dtype)
        return torch.tensor(value, dtype=student.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        g = ctx.grad
        if g is None:
            return None, None, None, None
        if ctx.none:
            g = g * grad_out.unsqueeze(-1)
        elif grad_out.device.type != "cpu" or grad_out.item() != 1.0:
            g = g * grad_out
        # else: loss.backward() on the loss itself -- hand over the kernel's gradient as is,
        # without a second [N, V] buffer
        return g, None, None, None


class DistillationLoss(nn.Module):
    """``loss = DistillationLoss("kl", temperature=2.0)(student_logits, teacher_logits)``.

    kind: any of ``litecomp.distill.KINDS`` (kl, soft_cross_entropy, reverse_kl, jsd,
    skew_kl, skew_reverse_kl, tvd, mse, cosine); beta: JSD's beta; lam: the skew
    losses' lambda (``beta=`` for them still works, with a DeprecationWarning);
    alpha with ``labels`` in forward adds ``alpha * CE(labels)``; rows whose label is
    ignore_index are skipped.  CPU float tensors run the fused C kernel; other devices the
    same math in torch.
    """

    def __init__(self, kind="kl", *, temperature=1.0, reduction="mean", alpha=0.0, beta=None,
                 lam=None, ignore_index=-100):
        super().__init__()
        name = _d._ALIASES.get(kind, kind)
        if name not in _d.KINDS:
            raise _d.ArgumentError(f"kind: {kind!r} is not one of {', '.join(_d.KINDS)}")
        if reduction not in _d.REDUCTIONS:
            raise _d.ArgumentError(f"reduction: {reduction!r} is not one of "
                                   f"{', '.join(_d.REDUCTIONS)}")
        if name in _d._SKEW_KINDS:
            lam, beta = renamed(lam, beta, "lam", "beta"), None
        self.cfg = dict(kind=name, temperature=float(temperature), reduction=reduction,
                        alpha=float(alpha), beta=beta, lam=lam, ignore_index=int(ignore_index))

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.cfg.items())

    def forward(self, student, teacher, labels=None):
        fused = (student.device.type == "cpu" and teacher.device.type == "cpu"
                 and student.dtype in _C_DTYPES and teacher.dtype in _C_DTYPES)
        if fused:
            if labels is not None:
                labels = labels.to(torch.int64)
            return _FusedLoss.apply(student, teacher, labels, self.cfg)
        c = self.cfg
        return distillation_loss_torch(c["kind"], student, teacher, temperature=c["temperature"],
                                       reduction=c["reduction"], ignore_index=c["ignore_index"],
                                       labels=labels, alpha=c["alpha"], beta=c["beta"],
                                       lam=c["lam"])
