"""Unit groups resolved against one state dict: which index ranges of which tensors each
unit owns, the units' scores, and the cut itself (one gather per tensor and axis)."""

from dataclasses import dataclass

import numpy as np

from .. import dtypes as _dt
from ..arch import Slice
from ..errors import ArgumentError, ShapeError
from ..prune import channel_norms, channel_norms_each, count_to_prune, l1_unstructured
from ..prune.scores import ActivationStats, taylor

CRITERIA = ("l1", "l2", "taylor", "activation")
# the weight dtypes, as NumPy dtypes of native byte order (a set test: resolve runs per tensor)
_WEIGHTS = frozenset(_dt.dtype_of(n) for n in _dt.WEIGHT_DTYPES)


def _is_weight(t):
    return isinstance(t, np.ndarray) and (t.dtype in _WEIGHTS or
                                          _dt.name_of(t.dtype) in _dt.WEIGHT_DTYPES)


@dataclass
class Part:
    """A slice bound to a tensor: ``offset`` of its block along ``axis``, ``length`` of it."""
    name: str
    axis: int
    offset: int
    length: int
    consume: bool

    def view(self, a):
        idx = [slice(None)] * a.ndim
        idx[self.axis] = slice(self.offset, self.offset + self.length)
        return a[tuple(idx)]


@dataclass
class Group:
    """``n`` units of ``width`` consecutive indices in every part."""
    name: str
    parts: list
    n: int
    width: int


def resolve(state_dict, slices, what, consume=()):
    """[Part] for the slices present in the state dict (required ones must be); every
    part must have the same length.  ``consume``: the slices that read the units."""
    consume = set(consume)
    parts = []
    for s in slices:
        t = state_dict.get(s.name)
        if t is None:
            if s.optional:
                continue
            raise ShapeError(f"state_dict: has no {s.name!r}, which {what} needs (the state "
                             "dict does not match the architecture)")
        if not _is_weight(t):
            raise ShapeError(f"state_dict[{s.name!r}]: expected a float array, got "
                             f"{getattr(t, 'dtype', type(t).__name__)}")
        axis = s.axis + t.ndim if s.axis < 0 else s.axis
        if not 0 <= axis < t.ndim:
            raise ShapeError(f"state_dict[{s.name!r}]: shape {t.shape} has no axis {s.axis} "
                             f"({what})")
        L = t.shape[axis]
        if L % s.parts:
            raise ShapeError(f"state_dict[{s.name!r}]: axis {axis} has length {L}, not "
                             f"{s.parts} equal parts ({what})")
        block = L // s.parts
        parts.append(Part(s.name, axis, s.part * block, block, s in consume))
    if not parts:
        raise ShapeError(f"state_dict: has none of the tensors {what} needs")
    first = parts[0]
    for p in parts[1:]:
        if p.length != first.length:
            raise ShapeError(f"state_dict: {p.name!r} has {p.length} {what} positions along "
                             f"axis {p.axis} but {first.name!r} has {first.length} (the "
                             "state dict does not match the architecture)")
    return parts


def make_group(state_dict, name, coupling_slices, consume, what, width=1):
    parts = resolve(state_dict, coupling_slices, what, consume)
    L = parts[0].length
    if L % width:
        raise ShapeError(f"state_dict[{parts[0].name!r}]: {L} positions are not whole units "
                         f"of {width} ({what})")
    return Group(name, parts, L // width, width)


# ------------------------------------------------------------------ scores
def _module_stat(activations, tensor_name):
    module = tensor_name.rsplit(".", 1)[0]
    for key in (module, tensor_name):
        if key in activations:
            v = activations[key]
            if isinstance(v, ActivationStats):
                v = v.norm
            return key, np.asarray(v, np.float64)
    return None, None


def axis_norms(t, axis, order, cache=None, name=None):
    """Norms of every index of ``t`` along ``axis`` (``prune.channel_norms``): computed over
    the whole axis once, so the packed parts of one tensor (q|k|v) are one pass over its
    bytes and a strided part is never copied.  ``cache`` keeps them by (name, axis, order)."""
    key = (name, axis, order)
    if cache is not None and key in cache:
        return cache[key]
    per = channel_norms(t, order, axis)
    if cache is not None:
        cache[key] = per
    return per


def prefetch_norms(state_dict, groups, criterion, cache):
    """Put into ``cache`` every axis norm the groups' "l1" / "l2" scores will ask for,
    computed in one call (``prune.channel_norms_each``: one parallel pass over them all)."""
    if criterion not in ("l1", "l2"):
        return cache
    order = 1 if criterion == "l1" else 2
    want = {}
    for g in groups:
        for p in g.parts:
            t = state_dict[p.name]
            key = (p.name, p.axis, order)
            if t.ndim > 1 and key not in cache:
                want[key] = (t, p.axis)
    for key, per in zip(want, channel_norms_each(list(want.values()), order)):
        cache[key] = per
    return cache


def unit_scores(state_dict, group, criterion, *, grads=None, activations=None, cache=None):
    """float64 score per unit of ``group`` (a lower score is removed first).  ``cache``: a
    dict shared by the groups of one step, so a tensor several groups cut is read once."""
    n, w = group.n, group.width
    if criterion == "activation":
        if not activations:
            raise ArgumentError("activations: criterion='activation' needs activations= "
                                "({module name: per-input-feature statistic})")
        acc, used = np.zeros(n), 0
        for p in group.parts:
            if not p.consume:
                continue
            key, stat = _module_stat(activations, p.name)
            if stat is None:
                continue
            full = state_dict[p.name].shape[p.axis]
            if stat.shape != (full,):
                raise ShapeError(f"activations[{key!r}]: expected {full} values (the input "
                                 f"features of {p.name!r}), got shape {stat.shape}")
            acc += stat[p.offset:p.offset + p.length].reshape(n, w).sum(axis=1)
            used += 1
        if not used:
            need = sorted({p.name.rsplit(".", 1)[0] for p in group.parts if p.consume})
            raise ArgumentError(f"activations: no statistic for {group.name}; give one for "
                                f"{' or '.join(repr(k) for k in need)} (its input features: "
                                "litecomp.torch.activation_stats(model, batches) collects "
                                "them for every Linear, a MultiheadAttention's out_proj "
                                "included)")
        return acc / used
    acc = np.zeros(n)
    for p in group.parts:
        t = state_dict[p.name]
        v = p.view(t)
        if criterion != "taylor" and t.ndim > 1:
            per = axis_norms(t, p.axis, 1 if criterion == "l1" else 2, cache, p.name)
            per = per[p.offset:p.offset + p.length]
            per = per * per if criterion == "l2" else per
        elif criterion == "taylor":
            g = (grads or {}).get(p.name)
            if g is None:
                raise ArgumentError(f"grads: criterion='taylor' needs the gradient of "
                                    f"{p.name!r}")
            g = np.asarray(g)
            if g.shape != t.shape:
                raise ShapeError(f"grads[{p.name!r}]: shape {g.shape} does not match the "
                                 f"tensor's {t.shape}")
            per = channel_norms(taylor(v, p.view(g)), 1, p.axis) if v.ndim > 1 else \
                np.abs(taylor(v, p.view(g))).astype(np.float64)
        else:
            per = np.abs(v.astype(np.float64))
            per = per * per if criterion == "l2" else per
        acc += per.reshape(n, w).sum(axis=1)
    return np.sqrt(acc) if criterion == "l2" else acc


def check_criterion(criterion):
    if criterion not in CRITERIA:
        raise ArgumentError(f"criterion: {criterion!r} is not one of {', '.join(CRITERIA)}")


# ------------------------------------------------------------------ how many, which
def round_keep(keep, n, round_to):
    """``keep`` rounded up to a multiple of ``round_to`` (at most n)."""
    if round_to > 1 and keep % round_to:
        keep = min(n, keep + round_to - keep % round_to)
    return keep


def lowest(scores, k):
    """Keep-mask removing the ``k`` lowest scores (ties: the lower index goes first)."""
    if k == 0:
        return np.ones(len(scores), bool)
    return l1_unstructured(np.ascontiguousarray(scores, np.float64), int(k))


def choose(score_list, amount, granularity, round_to, what, min_keep=1):
    """Keep-masks, one per score vector, under torch's amount rules per vector ("layer") or
    over all of them ("global"); kept counts rounded up to multiples of ``round_to``."""
    if granularity == "layer":
        out = []
        for i, s in enumerate(score_list):
            k = count_to_prune(amount, len(s))
            keep = round_keep(len(s) - k, len(s), round_to)
            if keep < min_keep:
                raise ArgumentError(f"amount: removes all {len(s)} {what} of layer {i}")
            out.append(lowest(s, len(s) - keep))
        return out
    if granularity != "global":
        raise ArgumentError(f"granularity: {granularity!r} is not 'layer' or 'global'")
    allv = np.concatenate(score_list) if score_list else np.zeros(0)
    k = count_to_prune(amount, len(allv))
    mask = lowest(allv, k)
    out, at = [], 0
    floor = max(min_keep, round_to)
    for s in score_list:
        m = mask[at:at + len(s)].copy()
        at += len(s)
        keep = max(int(m.sum()), min(floor, len(s)))
        keep = round_keep(keep, len(s), round_to)
        if keep > m.sum():  # give back the best-scored removed units
            order = np.argsort(-s, kind="stable")
            back = [j for j in order if not m[j]][:keep - int(m.sum())]
            m[back] = True
        out.append(m)
    return out


def unit_index(mask, width):
    """Element indices (int64) of the kept units."""
    units = np.flatnonzero(mask).astype(np.int64)
    return (units[:, None] * width + np.arange(width, dtype=np.int64)).reshape(-1)


# ------------------------------------------------------------------ the cut
class Cut:
    """Kept indices per (tensor, axis, part offset); ``apply`` gathers every tensor once
    per axis and shares the untouched ones."""

    def __init__(self):
        self.index = {}  # name -> {axis: {offset: (length, kept element indices)}}

    def keep(self, part: Part, elems):
        per = self.index.setdefault(part.name, {}).setdefault(part.axis, {})
        old = per.get(part.offset)
        if old is not None and not np.array_equal(old[1], elems):
            raise ArgumentError(f"{part.name}: cut twice along axis {part.axis} differently")
        per[part.offset] = (part.length, np.asarray(elems, np.int64))

    def keep_group(self, group, mask):
        elems = unit_index(mask, group.width)
        for p in group.parts:
            self.keep(p, elems)

    def axis_index(self, name, axis, full):
        """Kept indices along a whole axis of length ``full`` (untouched parts kept)."""
        per = self.index[name][axis]
        pieces, at = [], 0
        for off in sorted(per):
            length, elems = per[off]
            if off > at:
                pieces.append(np.arange(at, off, dtype=np.int64))
            pieces.append(off + elems)
            at = off + length
        if at < full:
            pieces.append(np.arange(at, full, dtype=np.int64))
        return np.concatenate(pieces)

    def apply(self, state_dict):
        out = {}
        for name, t in state_dict.items():
            if name not in self.index:
                out[name] = t
                continue
            for axis in sorted(self.index[name]):
                t = np.take(t, self.axis_index(name, axis, t.shape[axis]), axis=axis)
            out[name] = t
        return out

    def masked(self, state_dict):
        """The input's shapes with every removed index zeroed (the masked model)."""
        out = {}
        for name, t in state_dict.items():
            if name not in self.index:
                out[name] = t
                continue
            m = t.copy()
            for axis in self.index[name]:
                drop = np.setdiff1d(np.arange(t.shape[axis]), self.axis_index(name, axis,
                                                                              t.shape[axis]))
                idx = [slice(None)] * t.ndim
                idx[axis] = drop
                m[tuple(idx)] = 0
            out[name] = m
        return out
