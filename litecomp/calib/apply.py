"""Calibrated recipe stages on a state dict plus saved Hessians, without torch.

``apply_stage(state_dict, stage, hessians)`` runs one stage (gptq, sparsegpt, wanda; the
data-free rtn / magnitude / ... stages go through ``quantize_state_dict`` /
``prune_state_dict``) and returns ``(new state dict, [LayerReport])``.  ``apply_recipe``
runs a list of stages in order; a quantization stage after a pruning stage keeps the
pruned entries at zero (GPTQ then runs as SparseGPT's joint mode with that mask).

A tensor ``P`` finds its Hessian under ``hessian_key(P)`` (``P`` without ``.weight``); a
packed MultiheadAttention ``P = <attn>.in_proj_weight`` may instead have three, ``P.q``,
``P.k``, ``P.v``, for its three row blocks.  Without ``targets`` a calibrated stage takes
every 2-D float tensor that has a Hessian.  AWQ and SmoothQuant fold scales into the op
before a layer, which a state dict does not describe: they run in ``litecomp.torch.oneshot``.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import dtypes as _dt
from ..errors import ArgumentError
from ..recipe import Stage, stages
from ..select import select
from .hessian import Hessian, load_hessians

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class LayerReport:
    """One compressed layer: method, resulting sparsity and bits, and the relative output
    error ||X (W' - W)^T||^2 / ||X W^T||^2 on the calibration inputs -- of this method
    (``error``) and, when asked for (``baselines=True``), of its data-free counterpart at
    the same setting (``baseline_error``: round-to-nearest for quantization, magnitude per
    row for pruning; None otherwise)."""
    name: str
    method: str
    sparsity: float
    bits: Optional[int]
    error: float
    baseline_error: Optional[float] = None
    note: str = ""


def hessian_key(name: str) -> str:
    """The layer name a weight's Hessian is stored under: ``P`` without ``.weight``."""
    return name[:-len(".weight")] if name.endswith(".weight") else name


def _hessians(hessians) -> dict:
    if isinstance(hessians, dict) and all(isinstance(v, Hessian) for v in hessians.values()):
        return hessians
    if isinstance(hessians, dict) and not any(k.endswith(".hessian") for k in hessians):
        out = {}
        for k, v in hessians.items():
            if isinstance(v, Hessian):
                out[k] = v
            else:  # a bare matrix: its count is unknown, and not needed for compression
                out[k] = Hessian.from_matrix(v, 2)
        return out
    return load_hessians(hessians)


def _parts(name, w, hs):
    """[(row slice, Hessian, part label)] covering w's rows, or None without a Hessian."""
    key = hessian_key(name)
    if key in hs:
        return [(slice(0, w.shape[0]), hs[key], "")]
    if all(f"{key}.{p}" in hs for p in QKV) and w.shape[0] % 3 == 0:
        d = w.shape[0] // 3
        return [(slice(i * d, (i + 1) * d), hs[f"{key}.{p}"], p) for i, p in enumerate(QKV)]
    return None


def _sparsity_of(o, where):
    s = o.get("sparsity")
    if s is None and "n" not in o and "m" not in o:
        raise ArgumentError(f"{where}: needs sparsity (a fraction) or n and m")
    return s


class Source:
    """One Hessian as the compression of its weights reads it, each form made once however
    many weights share it (q/k/v_proj, gate/up_proj): the float32 matrix for products
    (``energy``; from a ``product_matrix()`` view where the Hessian has one, no copy), the
    mean x^2 per column (``mean_sq``) and the OBS factor per (damp, act_order)
    (``factor``).  ``consumable``: the Hessian's owner (``oneshot``) needs it no more once
    the factor exists -- the factor is then made in its memory (``take_matrix``), and any
    later read is an internal error.  ``release()`` drops what it made."""

    def __init__(self, h):
        self.h = h
        self._m = None
        self._factors = {}
        self.consumable = False  # the factor may be made in the Hessian's own memory
        self._consumed = False

    def _product(self):
        if self._m is None:
            pm = getattr(self.h, "product_matrix", None)
            self._m = pm() if pm is not None else (self.h.matrix, 1.0)
        return self._m

    def energy(self, E, minus=None) -> float:
        """tr(E H E^T) (E - minus when given)."""
        if self._consumed:
            raise RuntimeError("litecomp internal error: a consumed Hessian was read")
        m, scale = self._product()
        return scale * _energy(E, m, minus)

    @property
    def mean_sq(self):
        return self.h.mean_sq

    def factor(self, cols, damp, act_order=False):
        from .obs import factor
        key = (float(damp), bool(act_order))
        if key not in self._factors:
            if self._consumed:
                raise RuntimeError("litecomp internal error: a consumed Hessian was read")
            take = getattr(self.h, "take_matrix", None) if self.consumable else None
            if take is not None:  # H's memory becomes the factor's
                self._m, self._consumed = None, True
                m = take()
            else:
                m = self.h.matrix
            self._factors[key] = factor([_symmetric(m)], cols, damp, act_order=act_order)
        return self._factors[key]

    def release(self):
        self._m = None
        self._factors.clear()


def _compress(w, src, stage, keep=None, baselines=False, den=None):
    """(new float32 weight, QTensor or None, keep mask or None, (error, baseline error or
    None, tr(W H W^T)) energies).  ``src``: the Hessian's ``Source``.  ``baselines``: also
    the error of the data-free counterpart (round-to-nearest / magnitude per row), one
    more product with H.  ``den``: tr(W H W^T) when the caller knows it."""
    from ..prune import nm as nm_mask, per_row
    from ..prune.scores import wanda as wanda_score
    from ..prune.sparsegpt import sparsegpt_run
    from ..quant import quantize
    from ..quant.gptq import gptq_run
    o, where = stage.options, stage.where()
    w32 = np.asarray(w, np.float32)
    cols = w32.shape[1]
    if den is None:
        den = src.energy(w32)
    if stage.method == "gptq":
        opts = {k: o[k] for k in ("bits", "group_size", "scheme", "act_order",
                                  "static_groups", "block_size") if k in o}
        damp = o.get("damp", 0.01)
        bits, gs = opts.get("bits", 4), opts.get("group_size", 128)
        scheme = opts.get("scheme", "symmetric")
        bnum = None
        if baselines:
            base = quantize(np.where(keep, w, 0) if keep is not None else w, bits,
                            scheme=scheme, **({"group_size": gs} if gs else {"axis": 0}))
            bnum = src.energy(base.dequantize(), w32)
        if keep is not None:
            sg = {k: v for k, v in opts.items() if k in ("bits", "group_size", "scheme",
                                                          "block_size")}
            sg.setdefault("bits", bits)
            sg.setdefault("group_size", gs)
            r = sparsegpt_run(w, src.factor(cols, damp), mask=keep, **sg)
            new, q = r.new_w, r.qtensor
        else:
            r = gptq_run(w, src.factor(cols, damp, opts.get("act_order", False)), **opts)
            new, q = r.values, r.qtensor
        new = np.asarray(new, np.float32)
        return new, q, keep, (_run_energy(w32, new, r), bnum, den)
    if stage.method == "sparsegpt":
        opts = {k: o[k] for k in ("sparsity", "n", "m", "block_size", "bits",
                                  "group_size", "scheme") if k in o}
        _sparsity_of(o, where)
        bnum = None
        if baselines:
            if "n" in o or "m" in o:
                bm = nm_mask(w, o.get("n", 2), o.get("m", 4))
            else:
                bm = per_row(w, float(o["sparsity"]))
            bnum = src.energy(np.where(bm, w32, 0), w32)
            del bm
        r = sparsegpt_run(w, src.factor(cols, o.get("damp", 0.01)), **opts)
        new = np.asarray(r.new_w, np.float32)
        return new, r.qtensor, r.keep, (_run_energy(w32, new, r), bnum, den)
    if stage.method == "wanda":
        s = _sparsity_of(o, where)
        score = wanda_score(w, src.mean_sq)
        if "n" in o or "m" in o:
            k = nm_mask(w, o.get("n", 2), o.get("m", 4), importance_scores=score)
        else:
            k = per_row(w, float(s), importance_scores=score)
        new = np.where(k, w32, 0)
        bnum = None
        if baselines:
            bm = nm_mask(w, o.get("n", 2), o.get("m", 4)) if ("n" in o or "m" in o) else \
                per_row(w, float(s))
            bnum = src.energy(np.where(bm, w32, 0), w32)
        return new, None, k, (src.energy(new, w32), bnum, den)
    raise ArgumentError(f"{where}: method {stage.method!r} cannot run on a state dict "
                        "with Hessians (awq and smoothquant fold scales into the op before "
                        "a layer: use litecomp.torch.oneshot)")


_ROWS = 256  # rows per product with H in the energies: bounds the temporaries


def _energy(E, H, minus=None) -> float:
    """tr(E H E^T) = n/2 * ||X E^T||^2 (float64 sum), with E = E - minus when given, a
    block of rows at a time (no temporary beyond [256, in])."""
    total = 0.0
    for r0 in range(0, E.shape[0], _ROWS):
        e = E[r0:r0 + _ROWS] if minus is None else E[r0:r0 + _ROWS] - minus[r0:r0 + _ROWS]
        total += float(np.sum((e @ H) * e, dtype=np.float64))
    return total


def _energies(w, candidates, H):
    """(tr(E H E^T) for E = c - w, for each candidate c ..., then tr(W H W^T))."""
    return tuple(_energy(c, H, w) for c in candidates) + (_energy(w, H),)


def _run_energy(w, new, run) -> float:
    """tr(E H E^T), E = new - w, from an OBS loop's loss (``obs.damped_error``): no product
    with H."""
    from .obs import damped_error
    return float(np.sum(damped_error(run.loss, run.lam, new, w, run.dead)))


def _join_qtensors(qs, shape):
    """One QTensor from QTensors of consecutive row blocks (same layout, no perm)."""
    from ..quant import QTensor
    q0 = qs[0]
    return QTensor(np.concatenate([q.data for q in qs]),
                   np.concatenate([q.scales for q in qs]),
                   np.concatenate([q.zero_points for q in qs]), q0.bits, tuple(shape),
                   q0.scheme, q0.axis, q0.group_size)


def _symmetric(m):
    """A Hessian's matrix, marked symmetric (it is x^T x by construction)."""
    from .obs import SymmetricMatrix
    return m.view(SymmetricMatrix)


def compress_tensor(name, w, parts, stage, keep=None, *, baselines=False, energies=None):
    """Compress one weight whose row blocks have the given Hessians (``Hessian`` or
    ``Source``).  Returns (new float32 weight, QTensor or None, keep mask or None,
    LayerReport); the report's ``baseline_error`` only with ``baselines``.  ``energies``:
    per part, tr(W H W^T) if the caller has it (from the layer's outputs), else None."""
    note = ""
    if len(parts) > 1 and stage.method == "gptq" and stage.get("act_order") and \
            not stage.get("static_groups") and stage.get("group_size", 128) is not None:
        # q, k and v would each get their own column order; one QTensor holds one.
        stage = Stage(stage.method, stage.targets, stage.ignore,
                      {**stage.options, "static_groups": True}, stage.index)
        note = "packed q/k/v: act_order with static_groups"
    news, qs, keeps = [], [], []
    err_num = err_den = base_num = 0.0
    for i, (rows, h, _label) in enumerate(parts):
        wp = np.asarray(w[rows])
        src = h if isinstance(h, Source) else Source(h)
        new, q, k, (num, bnum, den) = _compress(wp, src, stage,
                                                None if keep is None else keep[rows],
                                                baselines, energies[i] if energies else None)
        news.append(new)
        qs.append(q)
        keeps.append(k)
        err_num += num
        base_num = None if bnum is None else base_num + bnum
        err_den += den
    new = np.concatenate(news) if len(news) > 1 else news[0]
    q = None if qs[0] is None else (_join_qtensors(qs, w.shape) if len(qs) > 1 else qs[0])
    k = None if keeps[0] is None else (np.concatenate(keeps) if len(keeps) > 1 else keeps[0])
    sp = float(np.mean(new == 0))
    rep = LayerReport(name, stage.method, sp, q.bits if q is not None else None,
                      err_num / err_den if err_den else 0.0,
                      None if base_num is None else (base_num / err_den if err_den else 0.0),
                      note)
    return new, q, k, rep


def _cast_like(new, like):
    from ..quant import cast
    name = _dt.name_of(np.asarray(like).dtype)
    if name in ("float32", "float64"):
        return new.astype(like.dtype, copy=False)
    return cast(new, name)


def apply_stage(state_dict, stage, hessians, *, masks=None, min_ndim=2, baselines=False):
    """Run one recipe stage on ``state_dict`` with saved Hessians.

    ``hessians``: {layer: Hessian}, a Hessian file path, or a loaded file's dict.
    ``masks``: {name: keep mask} of earlier pruning stages (``apply_recipe`` passes them).
    ``baselines``: each report also has the data-free counterpart's error.
    Returns ``(new state dict, [LayerReport])``; the input is not changed.  Quantized
    tensors become QTensor parts (``P.qdata``, ...), pruned ones stay dense float.
    """
    plan = stages(stage)
    if len(plan) != 1:
        raise ArgumentError("stage: expected one stage; use apply_recipe for a list")
    st = plan[0]
    if not st.calibrated:
        return _data_free(state_dict, st, masks)
    hs = _hessians(hessians)
    floats = [k for k, v in state_dict.items()
              if np.ndim(v) >= min_ndim and np.asarray(v).dtype.kind in "fV"
              and _dt.name_of(np.asarray(v).dtype) in _dt.WEIGHT_DTYPES]
    with_h = [k for k in floats if _parts(k, np.asarray(state_dict[k]), hs) is not None]
    if st.targets is None:
        names = select(with_h, None, st.ignore)
    else:
        names = select(floats, st.targets, st.ignore,
                       what=f"float tensors with {min_ndim}+ dimensions")
        missing = [k for k in names if k not in with_h]
        if missing:
            raise ArgumentError(f"hessians: no Hessian for {missing[0]!r} (expected "
                                f"'{hessian_key(missing[0])}.hessian')"
                                + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if not names:
        raise ArgumentError(f"{st.where()}: selects no tensor that has a Hessian")
    results = {}
    report = []
    for name in names:  # everything is computed before the output is assembled
        w = np.asarray(state_dict[name])
        keep = (masks or {}).get(name)
        new, q, k, rep = compress_tensor(name, w, _parts(name, w, hs), st, keep,
                                         baselines=baselines)
        results[name] = (new, q, k)
        report.append(rep)
    out = {}
    for key, value in state_dict.items():
        if key not in results:
            out[key] = value
            continue
        new, q, k = results[key]
        if q is not None:
            out.update(q.to_state_dict(key))
        else:
            out[key] = _cast_like(new, value)
        if masks is not None and k is not None:
            masks[key] = k if key not in masks else masks[key] & k
    return out, report


def _data_free(state_dict, st, masks):
    from ..prune import prune_state_dict
    from ..quant import quantize_state_dict
    if st.family == "prune":
        out, new_masks = prune_state_dict(state_dict, st.as_dict())
        if masks is not None:
            for k, m in new_masks.items():
                masks[k] = m if k not in masks else masks[k] & m
        return out, []
    out, errs = quantize_state_dict(state_dict, st.as_dict())
    return out, [LayerReport(e.name, st.method, 0.0, e.bits, float("nan")) for e in errs]


def apply_recipe(state_dict, recipe, hessians, *, baselines=False):
    """Run every stage of ``recipe`` in order (see ``apply_stage``); returns (state dict,
    report of every stage)."""
    plan = stages(recipe)
    masks, report = {}, []
    sd = state_dict
    for st in plan:
        sd, rep = apply_stage(sd, st, hessians, masks=masks, baselines=baselines)
        report.extend(rep)
    return sd, report
