"""Pruning: exact-k masks for every granularity and criterion, applying and baking them.

Masks are bool arrays, True = keep (as torch's ``*_mask`` buffers, 1 = keep).  Every mask
function returns a new mask; none changes its input.  Names and ``amount`` semantics
mirror ``torch.nn.utils.prune``:

- ``amount`` int: a count; float in [0, 1]: ``round(amount * n)`` with Python's
  half-to-even rounding, so ``1`` prunes one entry and ``1.0`` prunes all.
- ``mask=``: the previous mask.  Only still-kept entries (channels, for structured
  pruning) are candidates and the amount applies to them, as torch's PruningContainer
  does: pruning 0.2 twice leaves 64%.

Selection is exact: the k lowest scores are pruned.  Scores compare as real numbers
(-0.0 equals +0.0, +-inf allowed, NaN raises NonFiniteError); among equal scores the
lower flat index is pruned first, so a mask is the same for any thread count and SIMD
level.  The C kernel (csrc/prune.c) is an O(n) radix selection on the float bits.
"""

import math
import numbers

import numpy as np

from .. import _C
from .. import dtypes as _dt
from .._check import as_array, as_kernel_input, check_axis, check_int, renamed, required
from ..errors import ArgumentError, DTypeError, NonFiniteError, ShapeError
from . import scores, schedule
from .report import SparsityReport, sparsity
from .sensitivity import sensitivity, SensitivityTable
from .state import prune_state_dict
from .sparsegpt import sparsegpt

__all__ = [
    "l1_unstructured", "random_unstructured", "ln_structured", "random_structured",
    "global_unstructured", "per_row", "nm", "block", "apply", "bake", "sparsity",
    "SparsityReport", "prune_state_dict", "sensitivity", "SensitivityTable", "scores", "schedule", "count_to_prune", "sparsegpt",
]

_SCORE_DTYPES = _dt.WEIGHT_DTYPES + ("uint64",)


# ------------------------------------------------------------------ arguments
def count_to_prune(amount, n: int, name: str = "amount") -> int:
    """How many of ``n`` units ``amount`` prunes, with torch's rules and errors.

    >>> count_to_prune(0.5, 5), count_to_prune(1, 5), count_to_prune(1.0, 5)
    (2, 1, 5)
    """
    if isinstance(amount, (bool, np.bool_)) or not isinstance(amount, numbers.Real):
        raise ArgumentError(f"{name}: expected an int count or a float fraction, "
                            f"got {type(amount).__name__} {amount!r}")
    if isinstance(amount, numbers.Integral):
        amount = int(amount)
        if amount < 0:
            raise ArgumentError(f"{name}={amount} should either be a float in the range "
                                "[0, 1] or a non-negative integer")
        if amount > n:
            raise ArgumentError(f"{name}={amount} should be smaller than the number of "
                                f"parameters to prune={n}")
        return amount
    amount = float(amount)
    if not 0.0 <= amount <= 1.0:  # also rejects NaN
        raise ArgumentError(f"{name}={amount} should either be a float in the range [0, 1] "
                            "or a non-negative integer")
    return round(amount * n)


def _scores(x, name, shape=None):
    """Scores as a kernel array: weight dtypes and uint64 as they are, other real dtypes
    (ints, bool) as float64."""
    a = as_array(x, name)
    if _dt.name_of(a.dtype) not in _SCORE_DTYPES:
        if a.dtype.kind not in "biuf":
            raise DTypeError(f"{name}: dtype {a.dtype} is not a real number type")
        a = a.astype(np.float64)
    if shape is not None and a.shape != tuple(shape):
        raise ShapeError(f"{name}: shape {a.shape} does not match the weight's {tuple(shape)}")
    return as_kernel_input(a, name, dtypes=_SCORE_DTYPES)


def _mask(mask, shape, name="mask"):
    """A previous mask as a contiguous bool array (float/int masks: non-zero = keep)."""
    if mask is None:
        return None
    m = as_array(mask, name)
    if m.shape != tuple(shape):
        raise ShapeError(f"{name}: shape {m.shape} does not match the weight's {tuple(shape)}")
    if m.dtype != np.bool_:
        if _dt.name_of(m.dtype) == "bfloat16":
            m = m.astype(np.float32)
        if m.dtype.kind not in "biuf":
            raise DTypeError(f"{name}: dtype {m.dtype} cannot be a mask")
        m = m != 0
    return np.ascontiguousarray(m)


def _select(score_list, mask_list, k, absolute, name="w"):
    """Run the exact-k kernel over segments; returns a new mask per segment.  ``name``:
    the argument the scores came from, for the NaN error."""
    codes = {s.code for s in score_list}
    if len(codes) > 1:  # one key space: widen to float64 (exact for every weight dtype)
        wide = "float64" if codes & {_dt.code_of(np.float64), _dt.code_of(np.uint64)} \
            else "float32"
        if _dt.code_of(np.uint64) in codes:
            raise DTypeError("importance_scores: uint64 scores cannot mix with float scores")
        score_list = [s if s.array.dtype == np.dtype(wide) else
                      as_kernel_input(s.array.astype(wide), "scores") for s in score_list]
    outs = [np.empty(s.array.shape, np.bool_) for s in score_list]
    try:
        _C.select_lowest([s.raw for s in score_list], list(mask_list), outs,
                         score_list[0].code, bool(absolute), int(k))
    except NonFiniteError:
        raise NonFiniteError(f"{name}: contains NaN among the entries to rank "
                             "(NaN has no order; prune or replace it first)") from None
    return outs


def _eligible_count(mask, n):
    return n if mask is None else int(np.count_nonzero(mask))


# ------------------------------------------------------------------ unstructured
def l1_unstructured(w, amount, *, importance_scores=None, mask=None) -> np.ndarray:
    """Prune the ``amount`` entries of smallest |score| (score = w unless given).

    Like ``torch.nn.utils.prune.l1_unstructured``, returning the new mask.

    >>> import numpy as np, litecomp
    >>> w = np.array([[0.5, -0.1, 0.0], [2.0, -3.0, 0.2]], np.float32)
    >>> litecomp.prune.l1_unstructured(w, 0.5)
    array([[ True, False, False],
           [ True,  True, False]])
    """
    w = as_array(w, "w")
    s = _scores(w if importance_scores is None else importance_scores,
                "w" if importance_scores is None else "importance_scores", w.shape)
    m = _mask(mask, w.shape)
    k = count_to_prune(amount, _eligible_count(m, w.size))
    return _select([s], [m], k, absolute=True,
                   name="w" if importance_scores is None else "importance_scores")[0]


def random_unstructured(w, amount, *, seed=0, mask=None) -> np.ndarray:
    """Prune ``amount`` entries chosen uniformly at random (reproducible from ``seed``)."""
    from .. import random as _random
    w = as_array(w, "w")
    m = _mask(mask, w.shape)
    k = count_to_prune(amount, _eligible_count(m, w.size))
    s = as_kernel_input(_random.bits(w.shape, seed=seed), "scores", dtypes=_SCORE_DTYPES)
    return _select([s], [m], k, absolute=False)[0]


def global_unstructured(tensors, amount, *, importance_scores=None, masks=None) -> dict:
    """One L1 threshold over several tensors (``torch.nn.utils.prune.global_unstructured``
    with ``L1Unstructured``), without concatenating them.

    tensors: {name: array}; importance_scores / masks: {name: array} for some names.
    Returns {name: mask}.  Ties across tensors: earlier tensors (dict order) first.  Extra
    memory: the masks (one byte per entry) plus a float32 copy of any tensor whose dtype
    differs from the others.
    """
    if not isinstance(tensors, dict) or not tensors:
        raise ArgumentError("tensors: expected a non-empty dict of name -> array")
    importance_scores = importance_scores or {}
    masks = masks or {}
    for what, d in (("importance_scores", importance_scores), ("masks", masks)):
        unknown = set(d) - set(tensors)
        if unknown:
            raise ArgumentError(f"{what}: names not in tensors: {', '.join(sorted(unknown))}")
    names = list(tensors)
    ss, ms, eligible = [], [], 0
    for name in names:
        w = as_array(tensors[name], f"tensors[{name!r}]")
        src = importance_scores.get(name, w)
        ss.append(_scores(src, f"importance_scores[{name!r}]" if name in importance_scores
                          else f"tensors[{name!r}]", w.shape))
        m = _mask(masks.get(name), w.shape, f"masks[{name!r}]")
        ms.append(m)
        eligible += _eligible_count(m, w.size)
    k = count_to_prune(amount, eligible)
    return dict(zip(names, _select(ss, ms, k, absolute=True,
                                   name="importance_scores" if importance_scores
                                   else "tensors")))


def per_row(w, amount, *, importance_scores=None, mask=None) -> np.ndarray:
    """Each output row prunes its own ``amount`` lowest |score| entries (the Wanda
    comparison group).  ``w`` is [rows, ...]; the amount is per row (torch rules applied to
    the row length; with ``mask`` every row must have the same eligible count)."""
    w = as_array(w, "w")
    if w.ndim < 1:
        raise ShapeError("w: expected at least a 1-D array")
    s = _scores(w if importance_scores is None else importance_scores,
                "w" if importance_scores is None else "importance_scores", w.shape)
    rows = w.shape[0] if w.ndim > 1 else 1
    cols = w.size // rows if rows else 0
    m = _mask(mask, w.shape)
    if m is not None:
        per = np.count_nonzero(m.reshape(rows, cols), axis=1)
        if per.size and (per != per[0]).any():
            raise ArgumentError("mask: rows keep different numbers of entries; per-row "
                                "pruning needs the same count in every row")
        n = int(per[0]) if per.size else 0
    else:
        n = cols
    k = count_to_prune(amount, n)
    out = np.empty(w.shape, np.bool_)
    try:
        _C.select_rows(s.raw.reshape(rows, cols), s.code,
                       None if m is None else m.reshape(rows, cols),
                       out.reshape(rows, cols), True, k)
    except NonFiniteError:
        raise NonFiniteError(f"{'w' if importance_scores is None else 'importance_scores'}: "
                             "contains NaN among the entries to rank") from None
    return out


# ------------------------------------------------------------------ structured
# csrc/prune.c's table (NORM_KINDS): each kernel norm is named by its order, "p" is the
# general path for any other order.
_NORM_KIND_OF_ORDER = {float(name): code for name, code in _C.norm_kinds.items() if name != "p"}


def _norm_kind(norm):
    """(kernel norm kind, order p) for a norm order: a number > 0, +-inf or 'fro'."""
    if isinstance(norm, str):
        if norm == "fro":
            return _NORM_KIND_OF_ORDER[2.0], 2.0
        raise ArgumentError(f"norm: {norm!r} is not supported; use a number, 'fro' or +-inf")
    if isinstance(norm, bool) or not isinstance(norm, numbers.Real):
        raise ArgumentError(f"norm: expected a number, got {type(norm).__name__} {norm!r}")
    p = float(norm)
    if not (p > 0 or p == -np.inf):
        raise ArgumentError(f"norm: {p} must be positive (or +-inf)")
    return _NORM_KIND_OF_ORDER.get(p, _C.norm_kinds["p"]), p


def channel_norms(w, norm=None, axis=None, *, n=None, dim=None) -> np.ndarray:
    """The ``norm``-order norm (float64) of every channel of ``w`` along ``axis``, taken over
    all other axes.  ``n=`` and ``dim=`` are the old spellings of ``norm`` and ``axis``."""
    norm = required(renamed(norm, n, "norm", "n"), "norm")
    axis = required(renamed(axis, dim, "axis", "dim"), "axis")
    k = as_kernel_input(w, "w")
    axis = check_axis(axis, k.array.ndim, "axis")
    kind, p = _norm_kind(norm)
    shape = k.array.shape
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    out = np.empty(shape[axis], np.float64)
    _C.channel_norms(k.raw, k.code, outer, shape[axis], inner, kind, p, out)
    return out


def channel_norms_each(items, norm) -> list:
    """``[channel_norms(w, norm, axis) for w, axis in items]``, the same values, in one
    parallel pass over all the arrays: many small tensors wake the thread team once, not
    once each (what scoring a whole model's layers needs)."""
    kind, p = _norm_kind(norm)
    jobs, outs = [], []
    for i, (w, axis) in enumerate(items):
        k = as_kernel_input(w, f"items[{i}]")
        axis = check_axis(axis, k.array.ndim, f"items[{i}] axis")
        shape = k.array.shape
        out = np.empty(shape[axis], np.float64)
        jobs.append((k.raw, k.code, math.prod(shape[:axis]), shape[axis],
                     math.prod(shape[axis + 1:]), out))
        outs.append(out)
    _C.channel_norms_list(jobs, kind, p)
    return outs


def _structured(w, amount, axis, mask, channel_scores):
    """Shared by ln/random_structured: prune the lowest-scoring channels along ``axis``
    among the channels the previous mask has not fully pruned."""
    axis = check_axis(required(axis, "axis"), w.ndim, "axis")
    m = _mask(mask, w.shape)
    nch = w.shape[axis]
    if m is None:
        elig = None
        n_elig = nch
    else:
        others = tuple(i for i in range(w.ndim) if i != axis)
        elig = np.ascontiguousarray(m.any(axis=others))
        n_elig = int(elig.sum())
    k = count_to_prune(amount, n_elig)
    cs = channel_scores(m, axis)
    keep = _select([as_kernel_input(cs, "scores", dtypes=_SCORE_DTYPES)], [elig], k,
                   absolute=False)[0]
    shape = [1] * w.ndim
    shape[axis] = nch
    out = np.broadcast_to(keep.reshape(shape), w.shape).copy()
    if m is not None:
        out &= m
    return out


def _check_structured(w):
    w = as_array(w, "w")
    if w.ndim <= 1:
        raise ShapeError(f"w: structured pruning needs a multidimensional array, got shape "
                         f"{w.shape}")
    return w


def ln_structured(w, amount, norm=None, axis=None, *, importance_scores=None, mask=None,
                  n=None, dim=None) -> np.ndarray:
    """Prune whole channels along ``axis`` with the smallest norm of order ``norm`` (1, 2,
    inf, -inf, any p > 0, 'fro'), as ``torch.nn.utils.prune.ln_structured(module, name,
    amount, n, dim)``: positional torch-style calls work as they are, ``dim=`` is accepted
    as torch spells it, and ``n=`` still works with a DeprecationWarning (``n`` is an N:M
    count in litecomp).  With ``mask`` the norms are taken of the masked weight (torch
    prunes the already-pruned tensor) and fully pruned channels are not candidates."""
    norm = required(renamed(norm, n, "norm", "n"), "norm")
    axis = renamed(axis, dim, "axis", "dim", deprecated=False)
    w = _check_structured(w)
    src = w if importance_scores is None else importance_scores
    src_name = "w" if importance_scores is None else "importance_scores"
    _scores(src, src_name, w.shape)  # shape and dtype check

    def norms(m, axis):
        x = as_array(src, src_name)
        if _dt.name_of(x.dtype) not in _dt.WEIGHT_DTYPES:
            x = x.astype(np.float64)
        if m is not None:
            x = apply(x, m)
        return channel_norms(x, norm, axis)

    _norm_kind(norm)
    return _structured(w, amount, axis, mask, norms)


def random_structured(w, amount, axis=None, *, seed=0, mask=None, dim=None) -> np.ndarray:
    """Prune ``amount`` whole channels along ``axis`` chosen at random (from ``seed``), as
    ``torch.nn.utils.prune.random_structured`` (whose ``dim=`` is accepted too)."""
    from .. import random as _random
    axis = renamed(axis, dim, "axis", "dim", deprecated=False)
    w = _check_structured(w)
    return _structured(w, amount, axis, mask,
                       lambda m, axis: _random.bits(w.shape[axis], seed=seed))


# ------------------------------------------------------------------ N:M and blocks
def nm(w, n=2, m=4, *, axis=-1, importance_scores=None) -> np.ndarray:
    """N:M mask: in every group of ``m`` consecutive entries along ``axis`` the ``n`` with
    the smallest |score| are pruned (the Wanda / SparseGPT code convention; 2:4 keeps 2 of
    4).  ``axis=-1`` groups input columns of a [out, in] Linear weight."""
    w = as_array(w, "w")
    if w.ndim < 1:
        raise ShapeError("w: expected at least a 1-D array")
    m = check_int(m, "m", 1, 128)
    n = check_int(n, "n", 0, m)
    axis = check_axis(axis, w.ndim, "axis")
    s = _scores(w if importance_scores is None else importance_scores,
                "w" if importance_scores is None else "importance_scores", w.shape)
    if s.code == _dt.code_of(np.uint64):
        raise DTypeError("importance_scores: uint64 scores are not supported by nm")
    L = w.shape[axis]
    if L % m:
        raise ShapeError(f"w: axis {axis} has length {L}, not a multiple of m={m}")
    outer = int(np.prod(w.shape[:axis], dtype=np.int64))
    inner = int(np.prod(w.shape[axis + 1:], dtype=np.int64))
    out = np.empty(w.shape, np.bool_)
    try:
        _C.nm_mask(s.raw, s.code, out, outer, L, inner, n, m, True)
    except NonFiniteError:
        raise NonFiniteError(f"{'w' if importance_scores is None else 'importance_scores'}: "
                             "contains NaN") from None
    return out


def block_norms(w, block_shape, *, norm=2) -> np.ndarray:
    """Norms (float64) of the [br, bc] blocks of a 2-D array; edge blocks may be partial."""
    k = as_kernel_input(w, "w", ndim=2)
    br, bc = _block_shape(block_shape)
    kind, p = _norm_kind(norm)
    R, C = k.array.shape
    out = np.empty((-(-R // br), -(-C // bc)), np.float64)
    _C.block_norms(k.raw, k.code, br, bc, kind, p, out)
    return out


def _block_shape(block_shape):
    if not isinstance(block_shape, (tuple, list)) or len(block_shape) != 2:
        raise ArgumentError(f"block_shape: expected (rows, cols), got {block_shape!r}")
    return (check_int(block_shape[0], "block_shape[0]", 1),
            check_int(block_shape[1], "block_shape[1]", 1))


def block(w, amount, block_shape, *, norm=2, importance_scores=None) -> np.ndarray:
    """Prune whole [br, bc] blocks of a 2-D weight with the smallest norm (default L2).

    ``amount`` counts blocks (edge blocks, which may be partial, count as blocks too)."""
    w = as_array(w, "w")
    if w.ndim != 2:
        raise ShapeError(f"w: block pruning needs a 2-D array, got shape {w.shape}")
    br, bc = _block_shape(block_shape)
    src = w if importance_scores is None else importance_scores
    _scores(src, "importance_scores" if importance_scores is not None else "w", w.shape)
    bn = block_norms(src, (br, bc), norm=norm)
    k = count_to_prune(amount, bn.size)
    keep = _select([as_kernel_input(bn, "scores")], [None], k, absolute=False)[0]
    return np.repeat(np.repeat(keep, br, axis=0), bc, axis=1)[:w.shape[0], :w.shape[1]].copy()


# ------------------------------------------------------------------ apply and bake
def apply(w, mask, *, out=None) -> np.ndarray:
    """``w`` with pruned entries set to zero (+0, all-zero bits): ``where(mask, w, 0)``.

    ``out`` (C-contiguous, w's dtype and size; may be ``w`` itself) is written when given.
    """
    k = as_kernel_input(w, "w", dtypes=_dt.WEIGHT_DTYPES + ("int8", "uint8", "int16",
                                                            "int32", "int64"))
    m = _mask(mask, k.array.shape)
    if m is None:
        raise ArgumentError("mask: expected an array, got None")
    if out is None:
        out = np.empty(k.array.shape, k.array.dtype)
    else:
        out = as_array(out, "out")
        if out.dtype != k.array.dtype or out.size != k.array.size:
            raise ShapeError(f"out: expected {k.array.size} entries of {k.array.dtype}, got "
                             f"{out.size} of {out.dtype}")
        if not (out.flags.c_contiguous and out.flags.writeable):
            raise ArgumentError("out: must be a writeable C-contiguous array")
    _C.apply_mask(k.raw, m, _dt.raw_view(out))
    return out


def bake(state_dict) -> dict:
    """Turn a torch-pruned state dict into a plain one: every ``X_orig`` + ``X_mask`` pair
    becomes ``X = X_orig * X_mask`` (the bits ``torch.nn.utils.prune.remove`` stores, -0.0
    included) and the two keys go.  ``X`` takes ``X_orig``'s place in the order (which is
    also where ``prune.remove`` leaves it), and ``model.load_state_dict`` accepts the result.
    """
    if not isinstance(state_dict, dict):
        raise ArgumentError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
    out = {}
    for key, value in state_dict.items():
        if key.endswith("_mask") and key[:-5] + "_orig" in state_dict:
            continue
        if key.endswith("_orig") and key[:-5] + "_mask" in state_dict:
            base = key[:-5]
            if base in state_dict:
                raise ArgumentError(f"state_dict: has both {base!r} and {key!r}")
            out[base] = _bake_one(value, state_dict[base + "_mask"], key)
        else:
            out[key] = value
    return out


def _bake_one(orig, mask, name):
    k = as_kernel_input(orig, name)
    m = as_array(mask, name[:-5] + "_mask")
    if m.shape != k.array.shape:
        raise ShapeError(f"{name[:-5]}_mask: shape {m.shape} does not match {name}'s "
                         f"{k.array.shape}")
    if _dt.name_of(m.dtype) not in _dt.WEIGHT_DTYPES:
        if m.dtype.kind not in "biu":
            raise DTypeError(f"{name[:-5]}_mask: dtype {m.dtype} cannot be a mask")
        m = m.astype(k.array.dtype if _dt.name_of(k.array.dtype) != "bfloat16"
                     else np.float32)
    mk = as_kernel_input(m, name[:-5] + "_mask")
    out = np.empty(k.array.shape, k.array.dtype)
    _C.bake_mask(k.raw, k.code, mk.raw, mk.code, _dt.raw_view(out))
    return out
