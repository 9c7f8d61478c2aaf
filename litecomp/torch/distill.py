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

import ml_dtypes
import numpy as np

from .. import distill as _d
from .._check import renamed
from .._distill_linear import _Head
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


# ------------------------------------------------------------------ fused lm_head + loss
# fused_linear's matmuls in torch's own bfloat16 GEMM.  NumPy has no bf16 GEMM (its
# OpenBLAS build no sbgemm), so the NumPy engine widens a bf16 head to float32 and runs
# sgemm; torch's CPU bf16 matmul (oneDNN, avx512_bf16) is what torch eager runs, at about
# 1.6x sgemm's rate here.  float16 is left on the NumPy engine: torch's CPU float16 matmul
# measured 12 GFLOP/s against bf16's 150 on the same 2 cores.
_BF16 = np.dtype(ml_dtypes.bfloat16)
_PART_ROWS = 2048   # weight-gradient rows per bf16 block: 2 MiB at d = 512, stays in cache
# for the float32 add (16k-row blocks made that add 4x slower: measured)


class _TorchHead(_Head):
    """A bf16 head whose matmuls are torch's, in bf16 (logits as F.linear makes them); the
    weight's gradient is accumulated in float32, a block of rows at a time."""

    def __init__(self, weight, bias, ct, name):
        super().__init__(weight, bias, ct, name)
        self.tw = from_numpy(self.w)
        self.tb = None if self.b is None else from_numpy(self.b)

    def logits(self, h, out):
        h, o = from_numpy(h), from_numpy(out)
        if self.tb is None:
            torch.mm(h, self.tw.t(), out=o)
        else:
            torch.addmm(self.tb, h, self.tw.t(), out=o)
        return out

    def backward_hidden(self, g, out):
        torch.mm(from_numpy(g), self.tw, out=from_numpy(out))
        return out

    def add_weight_grad(self, g, h, gw, first):
        if self.part is None:
            self.part = torch.empty(min(self.v, _PART_ROWS), self.d, dtype=self.tw.dtype)
        part, g, h, gw = self.part, from_numpy(g), from_numpy(h), from_numpy(gw)
        for lo in range(0, self.v, part.shape[0]):
            hi = min(self.v, lo + part.shape[0])
            torch.mm(g[:, lo:hi].t(), h, out=part[:hi - lo])
            gw[lo:hi].add_(part[:hi - lo])      # float32 += bf16, one pass


class _TorchEngine:
    """The matmul engine (see litecomp._distill_linear._NumpyEngine) for bfloat16 tensors:
    logits in bf16 (as torch eager makes them), the row kernel's float32 gradient cast to
    bf16 once, over the logits it replaces, for the two backward matmuls; the hidden
    states' gradient comes out of its matmul in bf16, the weight's and bias's are summed
    over chunks in float32."""

    ct, acc = _BF16, np.dtype(np.float32)

    def head(self, weight, bias, name):
        return _TorchHead(weight, bias, self.ct, name)

    def rows(self, a):
        return a

    def logit_buffer(self, rows, v):
        return np.empty((rows, v), self.ct)

    def grad_buffer(self, rows, v):
        return np.empty((rows, v), self.acc)

    def for_matmul(self, g, logits):
        from_numpy(logits).copy_(from_numpy(g))
        return logits


def _engine_for(tensors):
    """The torch engine when every tensor is bfloat16, else None (NumPy's)."""
    return _TorchEngine() if all(x.dtype == torch.bfloat16 for x in tensors) else None


class _FusedLinear(torch.autograd.Function):
    """litecomp.distill.fused_linear: loss and all gradients in forward, chunk by chunk;
    backward scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, t_weight, t_bias, labels, cfg):
        want = tuple(name for name, need in zip(("hidden", "weight", "bias"),
                                                ctx.needs_input_grad[:3]) if need)
        if t_weight is None:
            tch = to_numpy(teacher)
        else:
            tch = (to_numpy(teacher), to_numpy(t_weight)) + \
                (() if t_bias is None else (to_numpy(t_bias),))
        res = _d.fused_linear(
            to_numpy(hidden), to_numpy(weight), tch, kind=cfg["kind"],
            temperature=cfg["temperature"], alpha=cfg["alpha"], beta=cfg["beta"],
            lam=cfg["lam"], labels=None if labels is None else to_numpy(labels),
            ignore_index=cfg["ignore_index"], reduction=cfg["reduction"],
            student_bias=None if bias is None else to_numpy(bias), chunk=cfg["chunk"],
            grad=want or False,
            _engine=_engine_for([x for x in (hidden, weight, bias, teacher, t_weight, t_bias)
                                 if x is not None]))
        ctx.grads = [None if g is None else from_numpy(g).to(x.dtype)
                     for g, x in zip(res[1:], (hidden, weight, bias))]
        return torch.tensor(res.loss, dtype=hidden.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        scale = grad_out.item()
        grads = [g if g is None or scale == 1.0 else g * scale for g in ctx.grads]
        return (*grads, None, None, None, None, None)


def _weight_bias(head, name):
    """(weight, bias or None) of an nn.Linear, a weight tensor or a (weight, bias) pair."""
    if isinstance(head, nn.Linear):
        return head.weight, head.bias
    if isinstance(head, torch.Tensor):
        return head, None
    if isinstance(head, (tuple, list)) and len(head) == 2:
        return head[0], head[1]
    raise _d.ArgumentError(f"{name}: expected an nn.Linear, a weight tensor or a (weight, "
                           f"bias) pair, got {type(head).__name__}")


def _submodule_slot(model, name):
    parent, _, attr = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def hidden_states(model, inputs, head=None):
    """``model(inputs)`` with its output head swapped for the identity, so no logits are
    made: returns ``(last hidden states, head module)``.

    head: the head's (dotted) attribute name; default ``"lm_head"`` (Hugging Face) if the
    model has one, else ``"fc"`` (``DecoderLM``).  An output with a ``.logits`` field (a
    transformers ModelOutput) gives that field, which then holds the hidden states.
    """
    if head is None:
        head = "lm_head" if hasattr(model, "lm_head") else "fc"
    try:
        parent, attr = _submodule_slot(model, head)
        lm_head = getattr(parent, attr)
    except AttributeError:
        raise _d.ArgumentError(f"head: {type(model).__name__} has no submodule {head!r}") \
            from None
    setattr(parent, attr, nn.Identity())
    try:
        out = model(inputs)
    finally:
        setattr(parent, attr, lm_head)
    return getattr(out, "logits", out), lm_head


class FusedLinearDistillationLoss(nn.Module):
    """A distillation loss that takes the student's last hidden states and its lm_head
    instead of logits, so the ``[N, V]`` logits never exist (``litecomp.distill.fused_linear``
    on CPU tensors, chunks of ``chunk`` rows):

        loss = FusedLinearDistillationLoss("kl", temperature=2.0)
        value = loss(student_hidden, student.fc, teacher_logits_or_(hidden, head), labels)

    The teacher is its logits, or ``(teacher_hidden, teacher_head)`` with the head an
    nn.Linear, a weight tensor or a (weight, bias) pair -- then its logits are made a chunk
    at a time too.  The student's head may be any of those three forms as well.  kind,
    temperature, alpha, beta, lam, ignore_index, reduction ("mean", "sum" or "batchmean"): as
    in ``DistillationLoss``.  The gradients are computed in forward (the only time the logits
    exist) and kept for backward: ``[N, d]`` plus the head's own size.  When every tensor is
    bfloat16 the matmuls are torch's bf16 GEMM (what torch eager runs; NumPy has none),
    otherwise NumPy's BLAS in float32 (float64).  Tensors on another
    device, or of a dtype the kernels do not take, go through the same math in torch ops
    (materialising the logits).  ``head`` names the model attribute that
    :meth:`hidden_states` swaps out (see :func:`hidden_states`).
    """

    def __init__(self, kind="kl", *, temperature=1.0, reduction="mean", alpha=0.0, beta=None,
                 lam=None, ignore_index=-100, chunk=None, head=None):
        super().__init__()
        if reduction not in ("mean", "sum", "batchmean"):
            raise _d.ArgumentError(f"reduction: {reduction!r} is not one of 'mean', 'sum', "
                                   "'batchmean' (the fused loss needs a scalar)")
        name = _d._ALIASES.get(kind, kind)
        if name not in _d.KINDS:
            raise _d.ArgumentError(f"kind: {kind!r} is not one of {', '.join(_d.KINDS)}")
        if name in _d._SKEW_KINDS:
            lam, beta = renamed(lam, beta, "lam", "beta"), None
        self.cfg = dict(kind=name, temperature=float(temperature), reduction=reduction,
                        alpha=float(alpha), beta=beta, lam=lam, ignore_index=int(ignore_index),
                        chunk=chunk)
        self.head = head

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.cfg.items())

    def hidden_states(self, model, inputs):
        """``(last hidden states, head)`` of ``model`` on ``inputs``, without logits."""
        return hidden_states(model, inputs, self.head)

    def forward(self, student_hidden, lm_head, teacher, labels=None):
        w, b = _weight_bias(lm_head, "lm_head")
        if isinstance(teacher, (tuple, list)):
            if len(teacher) == 3:
                t, tw, tb = teacher
            elif len(teacher) == 2:
                t, (tw, tb) = teacher[0], _weight_bias(teacher[1], "teacher head")
            else:
                raise _d.ArgumentError("teacher: expected logits or (hidden, head)")
            t, tw = t.detach(), tw.detach()
            tb = None if tb is None else tb.detach()
        else:
            t, tw, tb = teacher.detach(), None, None
        tensors = [x for x in (student_hidden, w, b, t, tw, tb) if x is not None]
        if labels is not None:
            labels = labels.to(torch.int64)
        if all(x.device.type == "cpu" and x.dtype in _C_DTYPES for x in tensors):
            return _FusedLinear.apply(student_hidden, w, b, t, tw, tb, labels, self.cfg)
        c = self.cfg
        s_logits = F.linear(student_hidden, w, b)
        t_logits = t if tw is None else F.linear(t, tw, tb)
        return distillation_loss_torch(c["kind"], s_logits, t_logits,
                                       temperature=c["temperature"],
                                       reduction=c["reduction"], ignore_index=c["ignore_index"],
                                       labels=labels, alpha=c["alpha"], beta=c["beta"],
                                       lam=c["lam"])


def distill_step(student, teacher, batch, loss, optimizer, *, features=None):
    """One step of distillation: the teacher (eval mode, no gradient) and the student see the
    same inputs, the student takes one optimizer step on ``loss``.  Returns the loss.

    batch: the inputs, or ``(inputs, labels)`` (labels for the hard-label term and
    ignore_index).  loss: a ``DistillationLoss`` (on logits) or a
    ``FusedLinearDistillationLoss`` (on hidden states and heads: no logits at all), or any
    ``loss(student_logits, teacher_logits, labels)``.  features: a ``FeatureDistillation``
    whose hooks see both forward passes; its loss is added.  The optimizer must hold the
    projections of ``features`` too, when it has any.
    """
    inputs, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
    teacher.eval()
    student.train()
    if isinstance(loss, FusedLinearDistillationLoss):
        with torch.no_grad():
            t_out = loss.hidden_states(teacher, inputs)      # (hidden states, head)
        value = loss(*loss.hidden_states(student, inputs), t_out, labels)
    else:
        with torch.no_grad():
            t_out = teacher(inputs)
        value = loss(student(inputs), t_out, labels)
    if features is not None:
        value = value + features()
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return value.item()
