"""``litecomp.distill.fused_linear``: the student's lm_head matmul fused with a distillation
loss, in chunks of rows, so the ``[N, V]`` logits never exist beyond one chunk.

For each chunk of rows: the student's logits ``h @ W.T + b`` go into one ``[chunk, V]``
buffer (and the teacher's into another, when the teacher is given as hidden states and a
head); the row kernel of ``litecomp.distill`` (csrc/distill.c) turns the student buffer into
the gradient with respect to the logits, in place; two matmuls then give the chunk's
gradient for the hidden states and add its share of the weight's gradient.  Rows whose
label is ``ignore_index`` are left out of every matmul.

The matmuls belong to a small "matmul engine" (one object: the heads, the chunk buffers and
the dtype the gradient reaches the backward matmuls in); the chunk loop is the same for all.
The default is NumPy's BLAS in float32 (float64), a float16/bfloat16 weight widened a block
of rows at a time, never as a whole; ``litecomp.torch`` passes one that runs torch's own
bfloat16/float16 GEMM (NumPy has none), keeping this loop and the row kernel.

Memory beyond the inputs: the gradients themselves (``[N, d]``, ``[V, d]``, ``[V]``), two
``[chunk, V]`` buffers (one when the teacher's logits are given), and a 16 MiB block.
"""

import re
from typing import NamedTuple, Optional

import numpy as np

from . import core as _core
from . import dtypes as _dt
from . import distill as _d
from ._check import as_array, as_kernel_input, check_choice, check_int
from ._runtime import threads
from .errors import ArgumentError, NonFiniteError, ShapeError

_CHUNK_BYTES = 64 << 20   # the default chunk keeps one [chunk, V] float32 buffer near this
# a [rows, d] block of the weight (widened, or a gradient share).  16 MiB: a bf16 head's
# logits in 4 MiB blocks (2,048 rows at d = 512) took 3x the time of 16 MiB blocks, matmul
# call overhead and BLAS thread wake-ups; 32 and 64 MiB gained little more (measured)
_BLOCK_BYTES = 16 << 20
_GRADS = ("hidden", "weight", "bias")


class FusedLinearResult(NamedTuple):
    """What :func:`fused_linear` returns; unpack it as ``loss, gh, gw, gb = ...``."""
    loss: object                         # a float, or row losses for reduction="none"
    grad_hidden: Optional[np.ndarray]    # [..., d] like student_hidden
    grad_weight: Optional[np.ndarray]    # [V, d]
    grad_bias: Optional[np.ndarray]      # [V], or None without a student bias


def default_chunk(vocab: int) -> int:
    """The rows per chunk :func:`fused_linear` uses by default: a power of two in [16, 1024]
    whose ``[chunk, vocab]`` float32 buffer stays within 64 MiB (128 rows at 98,631)."""
    rows = max(1, _CHUNK_BYTES // (4 * max(1, vocab)))
    return int(min(1024, max(16, 1 << (rows.bit_length() - 1))))


class _Head:
    """A ``[V, d]`` weight (and optional ``[V]`` bias) read in the compute dtype, a block of
    rows at a time when it is stored in another dtype: the NumPy engine's matmuls."""

    def __init__(self, weight, bias, ct, name):
        self.w = as_kernel_input(weight, f"{name}_weight", ndim=2).array
        self.v, self.d = self.w.shape
        self.native = self.w.dtype == ct
        self.ct = ct
        self.rows = max(16, _BLOCK_BYTES // (ct.itemsize * max(1, self.d)))
        self.scratch = None if self.native else np.empty((min(self.rows, self.v), self.d), ct)
        self.part = None
        self.b = None
        if bias is not None:
            b = as_kernel_input(bias, f"{name}_bias", ndim=1).array
            if b.shape != (self.v,):
                raise ShapeError(f"{name}_bias: shape {b.shape} does not match the weight's "
                                 f"{self.v} rows")
            self.b = _widen(b, ct)

    def blocks(self):
        """(lo, hi, weight rows lo:hi in the compute dtype) over the whole weight."""
        for lo in range(0, self.v, self.rows):
            hi = min(self.v, lo + self.rows)
            if self.native:
                yield lo, hi, self.w[lo:hi]
                continue
            # widened on this thread alone: an OpenMP team woken between two BLAS calls
            # fights BLAS's still-spinning threads for the cores (measured at d = 512,
            # V = 98,631 on 2 cores: a chunk's logits 0.19-0.24 s with 2 widening threads,
            # 0.11 s with one, 0.10 s from a float32 weight)
            with threads(1):
                if self.ct == np.float32:
                    wb = _core.to_float32(self.w[lo:hi], out=self.scratch[:hi - lo])
                else:
                    self.scratch[:hi - lo] = self.w[lo:hi]
                    wb = self.scratch[:hi - lo]
            yield lo, hi, wb

    def logits(self, h, out):
        """out = h @ W.T + b."""
        if self.native:
            np.matmul(h, self.w.T, out=out)
        else:
            for lo, hi, wb in self.blocks():
                np.matmul(h, wb.T, out=out[:, lo:hi])
        if self.b is not None:
            np.add(out, self.b, out=out)
        return out

    def backward_hidden(self, g, out):
        """out = g @ W (the gradient with respect to the hidden states)."""
        if self.native:
            return np.matmul(g, self.w, out=out)
        part = np.empty_like(out)
        for lo, hi, wb in self.blocks():
            np.matmul(g[:, lo:hi], wb, out=out if lo == 0 else part)
            if lo:
                np.add(out, part, out=out)
        return out

    def add_weight_grad(self, g, h, gw, first):
        """gw (+)= g.T @ h, a block of rows at a time so that no second [V, d] array exists
        (``first``: gw holds nothing yet)."""
        if self.part is None:
            self.part = np.empty((min(self.v, self.rows), self.d), gw.dtype)
        part = self.part
        for lo in range(0, gw.shape[0], part.shape[0]):
            hi = min(gw.shape[0], lo + part.shape[0])
            if first:
                np.matmul(g[:, lo:hi].T, h, out=gw[lo:hi])
            else:
                np.matmul(g[:, lo:hi].T, h, out=part[:hi - lo])
                np.add(gw[lo:hi], part[:hi - lo], out=gw[lo:hi])


class _NumpyEngine:
    """The default matmul engine: NumPy's BLAS in the compute dtype ``ct`` (float32, or
    float64 for gradient checks); the row kernel writes the gradient over the logits, and
    the backward matmuls read it there.

    An engine has ``ct`` (the dtype of the logits and of the hidden states' gradient),
    ``acc`` (of the row kernel's gradient and the weight's and bias's gradients), ``head``
    (a ``_Head``-like object per head), ``rows`` (hidden states in ``ct``),
    ``logit_buffer`` / ``grad_buffer`` (None: in place over the logits) and ``for_matmul``
    (the kernel's gradient as the backward matmuls take it)."""

    def __init__(self, ct):
        self.ct = self.acc = np.dtype(ct)

    def head(self, weight, bias, name):
        return _Head(weight, bias, self.ct, name)

    def rows(self, a):
        return _widen(a, self.ct)

    def logit_buffer(self, rows, v):
        return np.empty((rows, v), self.ct)

    def grad_buffer(self, rows, v):
        return None

    def for_matmul(self, g, logits):
        return g


def _widen(a, ct):
    """A small array (hidden states, bias) in the compute dtype."""
    if a.dtype == ct:
        return a
    return _core.to_float32(a) if ct == np.float32 else a.astype(ct)


def _which_grads(grad):
    if grad is True:
        return set(_GRADS)
    if grad is False or grad is None:
        return set()
    names = {grad} if isinstance(grad, str) else set(grad)
    bad = names - set(_GRADS)
    if bad:
        raise ArgumentError(f"grad: {', '.join(sorted(bad))} is not one of "
                            f"{', '.join(_GRADS)} (or pass True / False)")
    return names


def _renumbered(exc, take):
    """The kernel's NonFiniteError names a row of the chunk; name the caller's row."""
    m = re.match(r"(\w+): row (\d+)( .*)", str(exc))
    if not m:
        return exc
    local = int(m.group(2))
    row = take.start + local if isinstance(take, slice) else int(take[local])
    return NonFiniteError(f"{m.group(1)}: row {row}{m.group(3)}")


def fused_linear(student_hidden, student_weight, teacher, *, kind="kl", temperature=1.0,
                 alpha=0.0, beta=None, lam=None, labels=None, ignore_index=-100,
                 student_bias=None, reduction="mean", chunk=None, grad=True,
                 _engine=None) -> FusedLinearResult:
    """A distillation loss on the student's logits ``student_hidden @ student_weight.T +
    student_bias`` and its gradients for the hidden states, weight and bias, without ever
    holding the ``[N, V]`` logits: rows go through in chunks.

    student_hidden: ``[..., d]`` (every leading index is one row, as in :func:`loss`).
    student_weight: ``[V, d]`` (torch's ``nn.Linear`` layout); student_bias: ``[V]`` or None.
    teacher: the teacher's logits ``[..., V]`` (same leading shape), or a tuple
    ``(teacher_hidden [..., d_t], teacher_weight [V, d_t])`` or
    ``(teacher_hidden, teacher_weight, teacher_bias)``, whose logits are made a chunk at a
    time too.  No gradient flows into the teacher.
    kind, temperature, alpha, beta, lam, labels, ignore_index, reduction: as in :func:`loss`
    (``alpha`` with ``labels`` mixes in the hard-label cross entropy; ignored rows are left
    out of the matmuls).
    chunk: rows per chunk (default :func:`default_chunk`); memory grows with it, speed
    barely beyond ~128 rows.
    grad: True (all three gradients), False (the loss only: one matmul per chunk), or the
    names wanted out of ``"hidden"``, ``"weight"``, ``"bias"``.

    Inputs may be float32, bfloat16 or float16 (computed in float32; gradients float32), or
    float64 (computed in float64, for gradient checks).  Returns a
    :class:`FusedLinearResult` ``(loss, grad_hidden, grad_weight, grad_bias)``, None for a
    gradient not asked for.  The row kernels give the same bits for any thread count; the
    matmuls are NumPy's BLAS, whose last bits may depend on its build.  (``_engine`` is
    private: ``litecomp.torch`` passes its torch matmul engine, see ``_NumpyEngine``.)
    """
    cfg = _d._settings(kind, temperature, alpha, beta, lam, labels)
    check_choice(reduction, "reduction", _d.REDUCTIONS)
    ignore = check_int(-100 if ignore_index is None else ignore_index, "ignore_index")
    want = _which_grads(grad)

    hid = as_kernel_input(student_hidden, "student_hidden").array
    if hid.ndim == 0:
        raise ShapeError("student_hidden: expected [..., d] hidden states, got a scalar")
    w_in = as_array(student_weight, "student_weight")
    eng = _engine or _NumpyEngine(np.float64 if np.float64 in (hid.dtype, w_in.dtype)
                                  else np.float32)
    ct, acc = eng.ct, eng.acc
    head = eng.head(w_in, student_bias, "student")
    lead, d, v = hid.shape[:-1], hid.shape[-1], head.v
    if head.d != d:
        raise ShapeError(f"student_weight: shape {head.w.shape} does not match hidden "
                         f"size {d} of student_hidden {hid.shape}")
    h2 = eng.rows(hid.reshape(-1, d))
    n = h2.shape[0]

    t_head = t_logits = None
    if isinstance(teacher, (tuple, list)):
        if len(teacher) not in (2, 3):
            raise ArgumentError("teacher: expected logits, or (hidden, weight) or "
                                f"(hidden, weight, bias); got a {len(teacher)}-tuple")
        th = as_kernel_input(teacher[0], "teacher_hidden").array
        t_head = eng.head(teacher[1], teacher[2] if len(teacher) == 3 else None, "teacher")
        if th.shape[:-1] != lead or th.ndim == 0 or th.shape[-1] != t_head.d:
            raise ShapeError(f"teacher_hidden: shape {th.shape} does not fit student rows "
                             f"{lead} and teacher_weight {t_head.w.shape}")
        if t_head.v != v:
            raise ShapeError(f"teacher_weight: {t_head.v} rows (vocabulary) do not match the "
                             f"student's {v}")
        t_hid = eng.rows(th.reshape(-1, t_head.d))
    else:
        tk = as_kernel_input(teacher, "teacher", dtypes=_d._DTYPES)
        if tk.array.shape != lead + (v,):
            raise ShapeError(f"teacher: logits of shape {tk.array.shape} do not match the "
                             f"student's {lead + (v,)}")
        t_logits = tk.raw.reshape(n, v)
        t_code, t_f64 = tk.code, tk.array.dtype == np.float64

    lab = _d._labels(labels, lead, ignore)
    rows = None if lab is None else np.flatnonzero(lab != ignore)
    if rows is not None and rows.size:
        bad = rows[(lab[rows] < 0) | (lab[rows] >= v)]
        if bad.size:   # checked here, where the row number is the caller's
            raise ArgumentError(f"labels: row {bad[0]} has label {lab[bad[0]]}, outside "
                                f"[0, {v})")
    n_valid = n if rows is None else rows.size
    weight, div = _d._reduce_setup(reduction, n_valid, lead[0] if lead else 1)
    chunk = default_chunk(v) if chunk is None else check_int(chunk, "chunk", 1)
    chunk = max(1, min(chunk, n_valid))

    gh = np.zeros((n, d), ct) if "hidden" in want else None
    gw = np.zeros((v, d), acc) if "weight" in want else None
    gb = np.zeros(v, acc) if "bias" in want and head.b is not None else None
    need_g = gh is not None or gw is not None or gb is not None
    s_buf = eng.logit_buffer(chunk, v) if n_valid else None
    t_buf = eng.logit_buffer(chunk, v) if t_head is not None and n_valid else None
    g_buf = eng.grad_buffer(chunk, v) if n_valid and need_g else None
    ccode = _dt.code_of(ct)
    row_loss = np.zeros(n, np.float64)
    chunk_loss = np.empty(chunk, np.float64)

    for c0 in range(0, n_valid, chunk):
        c1 = min(n_valid, c0 + chunk)
        m = c1 - c0
        take = slice(c0, c1) if rows is None else rows[c0:c1]
        hc = h2[take]
        s = head.logits(hc, s_buf[:m])
        if t_head is not None:
            t, tcode = t_head.logits(t_hid[take], t_buf[:m]), ccode
        else:
            t, tcode = t_logits[take], t_code
            if t_f64 != (acc == np.float64):  # the kernel takes float64 on both sides or neither
                t, tcode = _widen(tk.array.reshape(n, v)[take], acc), _dt.code_of(acc)
        g = s if g_buf is None else g_buf[:m]   # the row kernel's gradient, in acc
        try:
            _d._row_kernel(cfg, s, ccode, t, tcode, None if lab is None else lab[take],
                           ignore, weight, g if need_g else None, chunk_loss[:m])
        except NonFiniteError as exc:
            raise _renumbered(exc, take) from None
        row_loss[take] = chunk_loss[:m]
        if not need_g:
            continue
        if gb is not None:
            np.add(gb, g.sum(axis=0), out=gb)
        gm = eng.for_matmul(g, s)
        if gh is not None:
            if rows is None:
                head.backward_hidden(gm, gh[take])
            else:
                gh[take] = head.backward_hidden(gm, np.empty((m, d), ct))
        if gw is not None:
            head.add_weight_grad(gm, hc, gw, c0 == 0)

    if reduction == "none":
        value = row_loss.reshape(lead)
    else:
        value = float(row_loss.sum()) / div if div else 0.0
    return FusedLinearResult(value, None if gh is None else gh.reshape(lead + (d,)), gw, gb)
