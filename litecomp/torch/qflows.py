"""torch.ao.quantization's three whole-model modes on litecomp's kernels (CPU; no
torch.ao): dynamic (``quantize_dynamic``), static (``prepare`` -> calibration batches ->
``convert``) and quantization-aware training (``prepare_qat`` -> train -> ``convert``).

A ``qconfig`` says what to quantize and how: ``None`` (the "int8" preset), a preset name, or
a dict in the words the recipes use::

    {"weight": {"bits": 8, "scheme": "symmetric", "axis": 0, "observer": "minmax"},
     "activation": {"bits": 8, "scheme": "affine", "observer": "histogram"},  # or None
     "targets": ["Linear"], "ignore": ["fc"]}

``activation: None`` means no calibrated activation parameters: the kernel quantizes each
input at run time (per row for 8-bit weights -- dynamic int8 -- per block of 32 for 4-bit
weights).  Converted layers are ``QuantLinear`` and, for ``nn.MultiheadAttention``,
``QuantMultiheadAttention`` (its q/k/v and output projections quantized; torch's
quantize_dynamic leaves them in float).  See docs/quant-workflows.md.
"""

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArgumentError
from ..io.atomic import deferred_interrupt
from ..quant.calibrate import HistogramObserver
from ..quant.observers import MinMaxObserver, MovingAverageMinMaxObserver
from ..select import patterns
from . import to_numpy
from .capture import Capture, taps_for
from .qlinear import QuantLinear
from .quant import FakeQuantize
from .select import select_modules

__all__ = ["PRESETS", "OBSERVERS", "qconfig", "quantize_dynamic", "prepare", "calibrate",
           "prepare_qat", "convert", "quantize", "QuantMultiheadAttention", "QATLinear",
           "get_default_qconfig", "get_default_qat_qconfig", "quantized_state_dict",
           "save_quantized", "load_quantized"]

#: The observers a qconfig can name: running min/max, torch's moving average (c = 0.01),
#: torch's histogram with its L2 range search, the 99.99th percentile of that histogram, and
#: the clipping range of smallest expected squared error.
OBSERVERS = ("minmax", "moving_average", "histogram", "percentile", "mse")

_W8 = {"bits": 8, "scheme": "symmetric", "axis": 0, "observer": "minmax"}
PRESETS = {
    "int8": {"weight": _W8, "activation": {"bits": 8, "scheme": "affine",
                                           "observer": "histogram"}},
    "int8_dynamic": {"weight": _W8, "activation": None},
    "int4_weight": {"weight": {"bits": 4, "scheme": "symmetric", "group_size": 128,
                               "observer": "minmax"}, "activation": None},
}
_KEYS = ("weight", "activation", "targets", "ignore")
_WKEYS = ("bits", "scheme", "axis", "group_size", "observer")
_AKEYS = ("bits", "scheme", "observer")


def _check_keys(d, allowed, where):
    if not isinstance(d, dict):
        raise ArgumentError(f"{where}: expected a dict, got {type(d).__name__}")
    bad = [k for k in d if k not in allowed]
    if bad:
        raise ArgumentError(f"{where}: unknown key {bad[0]!r}; expected some of "
                            f"{', '.join(allowed)}")


def _observer_name(v, where):
    if v not in OBSERVERS:
        raise ArgumentError(f"{where}.observer: unknown observer {v!r}; expected one of "
                            f"{', '.join(OBSERVERS)}")
    return v


def _scheme(v, where):
    if v not in ("symmetric", "affine"):
        raise ArgumentError(f"{where}.scheme: must be 'symmetric' or 'affine', got {v!r}")
    return v


def qconfig(spec=None) -> dict:
    """The validated, complete form of a qconfig (a new dict): ``None`` -> the "int8" preset;
    a preset name (``PRESETS``); a torch.ao ``QConfig`` object (as the seed's
    ``get_default_qconfig("fbgemm")`` returns) -> "int8"; or a dict with keys ``weight``
    (default: 8-bit symmetric per output channel), ``activation`` (default None: quantized
    at run time), ``targets`` and ``ignore`` (``litecomp.select`` patterns; default every
    Linear).  Unknown keys, observers, widths and combinations the kernels cannot run raise
    ArgumentError naming the key."""
    if spec is None:
        spec = "int8"
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ArgumentError(f"qconfig: unknown preset {spec!r}; expected one of "
                                f"{', '.join(PRESETS)} or a dict")
        spec = PRESETS[spec]
    elif hasattr(spec, "activation") and hasattr(spec, "weight") and not isinstance(spec, dict):
        spec = PRESETS["int8"]  # a torch.ao QConfig: its fbgemm meaning
    _check_keys(spec, _KEYS, "qconfig")
    w = dict(_W8) if spec.get("weight") is None else dict(spec["weight"])
    _check_keys(w, _WKEYS, "qconfig.weight")
    bits = w.setdefault("bits", 8)
    if bits not in (4, 8):
        raise ArgumentError(f"qconfig.weight.bits: the quantized Linear kernels run 4- and "
                            f"8-bit weights, got {bits!r}")
    _scheme(w.setdefault("scheme", "symmetric"), "qconfig.weight")
    _observer_name(w.setdefault("observer", "minmax"), "qconfig.weight")
    if "axis" in w and "group_size" in w:
        raise ArgumentError("qconfig.weight: give axis (per channel) or group_size, not both")
    if bits == 8:
        if w["scheme"] != "symmetric" or "group_size" in w or w.setdefault("axis", 0) != 0:
            raise ArgumentError("qconfig.weight: 8-bit weights run symmetric per output "
                                "channel (axis 0)")
    else:
        if "axis" in w:
            raise ArgumentError("qconfig.weight.axis: 4-bit weights run in groups along the "
                                "input axis; give group_size")
        gs = w.setdefault("group_size", 128)
        if not isinstance(gs, int) or gs < 32 or gs % 32:
            raise ArgumentError(f"qconfig.weight.group_size: must be a multiple of 32, got "
                                f"{gs!r}")
        if w["observer"] != "minmax":
            raise ArgumentError("qconfig.weight.observer: grouped weights take 'minmax'")
    a = spec.get("activation")
    if a is not None:
        a = dict(a)
        _check_keys(a, _AKEYS, "qconfig.activation")
        ab = a.setdefault("bits", 8)
        if not isinstance(ab, int) or not 2 <= ab <= 8:
            raise ArgumentError(f"qconfig.activation.bits: must be 2 to 8, got {ab!r}")
        _scheme(a.setdefault("scheme", "affine"), "qconfig.activation")
        _observer_name(a.setdefault("observer", "histogram"), "qconfig.activation")
        if bits != 8:
            raise ArgumentError("qconfig.activation: static activations run with 8-bit "
                                "weights; use activation None with 4-bit weights")
    out = {"weight": w, "activation": a}
    for key in ("targets", "ignore"):
        out[key] = patterns(spec.get(key), key)
    return out


def get_default_qconfig(backend="fbgemm"):
    """torch.ao's spelling: the "int8" preset (per-channel int8 weights, histogram-calibrated
    uint8 activations) whatever the backend name."""
    return qconfig("int8")


def get_default_qat_qconfig(backend="fbgemm"):
    """torch.ao's spelling; for ``prepare_qat`` the "int8" preset with min/max activation
    ranges (what fake quantization observes while training)."""
    q = qconfig("int8")
    q["activation"]["observer"] = "minmax"
    return q


# ------------------------------------------------------------------ choosing layers
def _mha_children(model):
    """Names of the Linear modules that nn.MultiheadAttention modules own."""
    skip = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            skip.update(f"{name}.{c}" if name else c for c, _ in mod.named_modules() if c)
    return skip


def _supported_mha(m):
    return (isinstance(m, nn.MultiheadAttention) and m.bias_k is None and not m.add_zero_attn)


def _chosen(model, cfg, *, default=(nn.Linear, nn.MultiheadAttention),
            what="Linear or MultiheadAttention modules"):
    """[(name, module)] of the Linear and MultiheadAttention modules a qconfig's
    targets/ignore select (``default``: the classes no targets means); none raises."""
    skip = _mha_children(model)
    mha = nn.MultiheadAttention in default

    def ok(n, m):
        if isinstance(m, nn.MultiheadAttention):
            return mha and _supported_mha(m)
        return isinstance(m, nn.Linear) and n not in skip
    chosen = select_modules(model, cfg["targets"], cfg["ignore"], default=default,
                            candidates=ok, what=what)
    if not chosen:
        raise ArgumentError(f"model: has no {what} to quantize"
                            + (f" (targets={list(cfg['targets'])})" if cfg["targets"] else "")
                            + (f" (ignore={list(cfg['ignore'])})" if cfg["ignore"] else ""))
    return chosen


def _swap(model, layers, tag):
    """Put the new modules in place, all or nothing."""
    with deferred_interrupt():
        for name, q in layers.items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, q)
        model._litecomp_quantized = list(layers)
        model._litecomp_state = tag
        if tag == "converted":  # the nested-tensor fast path reads float weights
            for m in model.modules():
                if isinstance(m, nn.TransformerEncoder):
                    m.use_nested_tensor = False
    return model


# ------------------------------------------------------------------ converted modules
def _quant_linear(weight, bias, wcfg, input_qparams=None, input_bits=8, qparams=None):
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight.detach().float())
        if bias is not None:
            lin.bias.copy_(bias.detach().float())
    if qparams is None and wcfg["bits"] == 8 and wcfg["observer"] != "minmax":
        qparams = _observe(wcfg, weight.detach(), axis=0).qparams_for(8, "symmetric")
    return QuantLinear.from_linear(lin, bits=wcfg["bits"], group_size=wcfg.get("group_size", 128),
                                   scheme=wcfg["scheme"], qparams=qparams,
                                   input_qparams=input_qparams, input_bits=input_bits)


class QuantMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with quantized projections: ``q_proj``, ``k_proj``,
    ``v_proj`` and ``out_proj`` are ``QuantLinear`` layers; the attention itself
    (``F.scaled_dot_product_attention``) runs in float.  Same call as MultiheadAttention
    (``attn_mask``, ``key_padding_mask``, ``is_causal``, ``need_weights``, ``batch_first``)."""

    # what torch's encoder layer inspects before its fused fast path: no float in_proj, so
    # it takes the ordinary path, which calls this module
    in_proj_weight = in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim, num_heads, projections, *, batch_first=False, dropout=0.0):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.batch_first, self.dropout = batch_first, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = projections

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention, wcfg, input_qparams=None, input_bits=8):
        """``input_qparams``: {"q", "k", "v", "out"} -> (scale, zero_point) for static
        activations, or None."""
        e = mha.embed_dim
        if mha._qkv_same_embed_dim:
            ws = mha.in_proj_weight.chunk(3)
        else:
            ws = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        bs = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
        qp = input_qparams or {}
        projs = [_quant_linear(w, b, wcfg, qp.get(p), input_bits)
                 for w, b, p in zip(ws, bs, "qkv")]
        projs.append(_quant_linear(mha.out_proj.weight, mha.out_proj.bias, wcfg, qp.get("out"),
                                   input_bits))
        return cls(e, mha.num_heads, projs, batch_first=mha.batch_first,
                   dropout=mha.dropout)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        if not batched:
            query, key, value = (x.unsqueeze(1) for x in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if self.batch_first and batched:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        # [L, B, E] from here on, as torch's MultiheadAttention computes
        L, B, _ = query.shape
        S = key.shape[0]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(L, B * h, d).transpose(0, 1)
        k = self.k_proj(key).view(S, B * h, d).transpose(0, 1)
        v = self.v_proj(value).view(S, B * h, d).transpose(0, 1)
        mask = _float_mask(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if key_padding_mask is not None:
            kp = _float_mask(key_padding_mask, q.dtype).view(B, 1, 1, S).expand(B, h, 1, S)
            kp = kp.reshape(B * h, 1, S)
            mask = kp if mask is None else mask + kp
        if is_causal and mask is None:
            mask = torch.triu(torch.full((L, S), -math.inf, dtype=q.dtype), 1).unsqueeze(0)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            att = torch.bmm(q * (1.0 / math.sqrt(d)), k.transpose(1, 2))
            if mask is not None:
                att = att + mask
            att = torch.softmax(att, dim=-1)
            if p:
                att = F.dropout(att, p)
            out = torch.bmm(att, v)
            weights = att.view(B, h, L, S)
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            if mask is not None:  # [B*h or 1, L or 1, S] -> 4-D
                mask = (mask.view(B, h, *mask.shape[1:]) if mask.shape[0] == B * h
                        else mask.unsqueeze(0))
            out = F.scaled_dot_product_attention(
                q.view(B, h, L, d), k.view(B, h, S, d), v.view(B, h, S, d), attn_mask=mask,
                dropout_p=p).view(B * h, L, d)
        out = out.transpose(0, 1).reshape(L * B, h * d)
        out = self.out_proj(out).view(L, B, self.embed_dim)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _float_mask(m, dtype):
    """MultiheadAttention's masks as additive float: True (bool) means "do not attend"."""
    if m is None:
        return None
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, -math.inf)
    return m.to(dtype)


# ------------------------------------------------------------------ dynamic
def quantize_dynamic(model: nn.Module, qconfig_spec=None, dtype="int8", *, targets=None,
                     ignore=None, inplace=False) -> nn.Module:
    """torch.ao's ``quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)`` on litecomp's
    int8 kernels: weights int8 symmetric per output channel, activations quantized per row
    at run time.  ``qconfig_spec``: a set of module classes (``nn.Linear``,
    ``nn.MultiheadAttention``; None or {nn.Linear}: both -- the attention's projections are
    linear layers too, which torch leaves in float; torch's {class: qconfig} dict is read as
    its classes), or a qconfig (preset name or dict; its
    activation must be None).  ``dtype``: "int8" (or torch.qint8); "int4" runs the
    "int4_weight" preset.  ``targets``/``ignore`` narrow the layers.  Returns the quantized
    model (a copy unless ``inplace``)."""
    dt = str(dtype).replace("torch.", "")
    if dt not in ("int8", "qint8", "int4"):
        raise ArgumentError(f"dtype: expected 'int8' (torch.qint8) or 'int4', got {dtype!r}")
    classes = None
    if isinstance(qconfig_spec, dict) and any(isinstance(k, type) for k in qconfig_spec):
        qconfig_spec = set(qconfig_spec)  # torch's {nn.Linear: default_dynamic_qconfig}
    if qconfig_spec is None or isinstance(qconfig_spec, (set, frozenset, list, tuple)):
        classes = tuple(qconfig_spec or (nn.Linear,))
        for c in classes:
            if not (isinstance(c, type) and issubclass(c, (nn.Linear, nn.MultiheadAttention))):
                raise ArgumentError(f"qconfig_spec: litecomp quantizes nn.Linear and "
                                    f"nn.MultiheadAttention, got {c!r}")
        cfg = qconfig("int4_weight" if dt == "int4" else "int8_dynamic")
    else:
        cfg = qconfig(qconfig_spec)
        if cfg["activation"] is not None:
            raise ArgumentError("qconfig_spec: dynamic quantization has no activation "
                                "observers; use prepare/convert for static activations")
    if targets is not None:
        cfg["targets"] = patterns(targets, "targets")
    if ignore is not None:
        cfg["ignore"] = patterns(ignore, "ignore")
    default = (nn.Linear, nn.MultiheadAttention)
    if classes is not None and not any(issubclass(c, nn.Linear) for c in classes):
        default = (nn.MultiheadAttention,)  # attention only
    chosen = _chosen(model, cfg, default=default)
    new = {n: _convert_one(m, cfg, None) for n, m in chosen}  # all built before any swap
    if not inplace:
        model = copy.deepcopy(model)
    return _swap(model, new, "converted")


def _convert_one(mod, cfg, qp):
    w = cfg["weight"]
    bits = cfg["activation"]["bits"] if cfg["activation"] else 8
    if isinstance(mod, nn.MultiheadAttention):
        return QuantMultiheadAttention.from_float(mod, w, qp, bits)
    return _quant_linear(mod.weight, mod.bias, w, qp, bits)


# ------------------------------------------------------------------ observers
class _Observer:
    """One tap's (or weight's) observer from a qconfig entry; ``qparams_for(bits, scheme)``
    gives litecomp's unsigned-code (scales, zero_points)."""

    def __init__(self, entry, axis=None):
        name = entry["observer"]
        self.method = {"histogram": "l2", "percentile": "percentile", "mse": "mse"}.get(name)
        if self.method:
            self.obs = HistogramObserver(scheme=entry["scheme"], axis=axis)
        elif name == "moving_average":
            self.obs = MovingAverageMinMaxObserver(scheme=entry["scheme"], axis=axis)
        else:
            self.obs = MinMaxObserver(scheme=entry["scheme"], axis=axis)
        self.seen = 0

    def update(self, x):
        a = to_numpy(x.detach().float())
        if self.obs.axis is None:
            a = a.reshape(-1)
        self.obs.update(a)
        self.seen += 1

    def qparams_for(self, bits, scheme):
        if self.method:
            return self.obs.qparams(self.method, bits=bits, scheme=scheme)
        return self.obs.qparams(bits=bits, scheme=scheme)


def _observe(wcfg, weight, axis):
    o = _Observer(wcfg, axis=axis)
    o.update(weight)
    return o


# ------------------------------------------------------------------ static
def _prepared_state(model, want):
    state = getattr(model, "_litecomp_state", None)
    if state == want:
        return
    if state == "converted":
        raise ArgumentError("model: already converted; calibration and convert need a model "
                            "from prepare() or prepare_qat()")
    raise ArgumentError(f"model: not prepared (call litecomp.torch.{want.replace('-', '_')}"
                        f"(model, qconfig) first)" if state is None else
                        f"model: prepared with {state}(), not {want}()")


def prepare(model: nn.Module, qconfig=None, *, inplace=False) -> nn.Module:
    """Insert activation observers on the inputs of the Linear layers (and the q/k/v and
    attention-output inputs of nn.MultiheadAttention) a qconfig selects; the model computes
    as before.  Run calibration batches through it (or ``calibrate(model, batches)``), then
    ``convert(model)``.  ``qconfig`` defaults to ``model.qconfig`` if set (the seed's
    ``model.qconfig = get_default_qconfig("fbgemm")``), else "int8"; its activation entry
    must not be None (use ``quantize_dynamic``)."""
    spec = qconfig if qconfig is not None else getattr(model, "qconfig", None)
    cfg = globals()["qconfig"](spec)
    if cfg["activation"] is None:
        raise ArgumentError("qconfig: has no activation entry; static quantization calibrates "
                            "activations (use quantize_dynamic for weight-only or dynamic)")
    if getattr(model, "_litecomp_state", None) is not None:
        raise ArgumentError(f"model: already {model._litecomp_state}")
    chosen = _chosen(model, cfg)
    if not inplace:
        model = copy.deepcopy(model)
        chosen = [(n, model.get_submodule(n)) for n, _ in chosen]
    # an attention module's out_proj input is the attention output (capture recomputes it)
    taps = taps_for(model, chosen + [(f"{n}.out_proj", m.out_proj) for n, m in chosen
                                     if isinstance(m, nn.MultiheadAttention)])
    observers = {t.key: _Observer(cfg["activation"]) for t in taps}
    cap = Capture(model, taps, lambda t, x: observers[t.key].update(x))
    cap.__enter__()
    model._litecomp_prepared = {"qconfig": cfg, "names": [n for n, _ in chosen],
                                "taps": taps, "observers": observers, "capture": cap}
    model._litecomp_state = "prepare"
    return model


def calibrate(model: nn.Module, batches) -> nn.Module:
    """Run ``batches`` (tensors, tuples of arguments or dicts of keyword arguments) through a
    prepared model under ``torch.no_grad()`` in eval mode, for its observers."""
    from .capture import run_batch
    _prepared_state(model, "prepare")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in batches:
                run_batch(model, b)
    finally:
        model.train(was)
    return model


def _static_qparams(model):
    info = model._litecomp_prepared
    a = info["qconfig"]["activation"]
    empty = [k for k, o in info["observers"].items() if o.seen == 0]
    if empty:
        raise ArgumentError(f"model: no calibration batch reached {empty[0]!r} (and "
                            f"{len(empty) - 1} more); run batches through the prepared model "
                            "before convert")
    per = {}
    for t in info["taps"]:
        s, z = info["observers"][t.key].qparams_for(a["bits"], a["scheme"])
        part = {"input": None, "query": "q", "key": "k", "value": "v", "attn": "out"}[t.kind]
        if t.kind == "attn":  # out_proj's input belongs to its attention module
            per.setdefault(t.module_name, {})["out"] = (s, z)
        elif part is None:
            per[t.module_name] = (s, z)
        else:
            per.setdefault(t.module_name, {})[part] = (s, z)
    return per


# ------------------------------------------------------------------ QAT
class QATLinear(nn.Linear):
    """A Linear trained with fake-quantized weights (per output channel, ``bits``) and,
    if the qconfig has an activation entry, fake-quantized inputs; gradients by the
    clipped straight-through estimator, or LSQ (``learnable``: scales and zero points are
    parameters).  Any torch optimizer trains it; ``convert`` turns it into a QuantLinear."""

    def __init__(self, in_features, out_features, bias=True, *, cfg, learnable=False):
        super().__init__(in_features, out_features, bias=bias)
        w, a = cfg["weight"], cfg["activation"]
        self.qconfig = cfg
        self.weight_fake_quant = FakeQuantize(bits=w["bits"], signed=True, scheme="symmetric",
                                              axis=0, learnable=learnable)
        if learnable:  # symmetric weights keep zero point 0: only the scales learn
            self.weight_fake_quant.zero_point.requires_grad_(False)
        self.input_fake_quant = None if a is None else FakeQuantize(
            bits=a["bits"], signed=False, scheme=a["scheme"], learnable=learnable,
            averaging_constant=0.01 if a["observer"] == "moving_average" else None)

    @classmethod
    def from_linear(cls, lin, cfg, learnable=False):
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, cfg=cfg,
                learnable=learnable)
        m.weight, m.bias = lin.weight, lin.bias  # the same parameters: optimizers keep them
        return m.to(lin.weight.device)

    def forward(self, x):
        if self.input_fake_quant is not None:
            x = self.input_fake_quant(x)
        return F.linear(x, self._weight_fq(), self.bias)

    def _weight_fq(self):
        fq = self.weight_fake_quant
        if not fq.learnable:  # the range of the weight as it is now, not of its history
            fq.observer.min_val = fq.observer.max_val = None
        return fq(self.weight)


def prepare_qat(model: nn.Module, qconfig=None, *, learnable=False,
                inplace=False) -> nn.Module:
    """Swap each Linear a qconfig selects for a ``QATLinear`` (fake-quantized weights at the
    qconfig's weight bits, per output channel; fake-quantized inputs if it has an activation
    entry); train with any optimizer, then ``convert``.  ``learnable=True``: LSQ (trained
    scales and zero points) instead of the straight-through estimator with min/max ranges.
    nn.MultiheadAttention stays in float while training (its projections are not Linear
    calls)."""
    spec = qconfig if qconfig is not None else getattr(model, "qconfig", None)
    cfg = globals()["qconfig"](spec)
    if cfg["weight"]["bits"] == 4:
        cfg["weight"] = {"bits": 4, "scheme": "symmetric", "axis": 0, "observer": "minmax"}
    if getattr(model, "_litecomp_state", None) is not None:
        raise ArgumentError(f"model: already {model._litecomp_state}")
    chosen = _chosen(model, cfg, default=(nn.Linear,), what="Linear modules")
    if not inplace:
        model = copy.deepcopy(model)
        chosen = [(n, model.get_submodule(n)) for n, _ in chosen]
    new = {n: QATLinear.from_linear(m, cfg, learnable) for n, m in chosen}
    _swap(model, new, "prepare_qat")
    model._litecomp_prepared = {"qconfig": cfg, "names": list(new)}
    return model


def _from_qat(m: QATLinear):
    """The QuantLinear computing what the trained QATLinear computes."""
    cfg = m.qconfig
    fq = m.weight_fake_quant
    if not fq._initialised and fq.learnable:
        raise ArgumentError("model: a QAT layer never ran forward; train (or run a batch) "
                            "before convert")
    if not fq.learnable:
        with torch.no_grad():
            m._weight_fq()  # the scales of the trained weights (the optimizer moved them)
    s = fq.scale.detach().float().reshape(-1).clamp_min(1e-12)
    zbits = cfg["weight"]["bits"]
    n, k = m.weight.shape
    zp = 1 << (zbits - 1)  # signed codes -> litecomp's unsigned ones
    sc = to_numpy(s.contiguous()).astype(np.float32)
    if zbits == 8:
        qparams = (sc, np.full(n, zp, np.int32))
        gs = 128
    else:
        gs = -(-k // 32) * 32  # one group spanning the row
        qparams = (sc.reshape(n, 1), np.full((n, 1), zp, np.int32))
    wcfg = {"bits": zbits, "scheme": "symmetric", "group_size": gs, "observer": "minmax"}
    iq = None
    bits = 8
    if m.input_fake_quant is not None:
        f = m.input_fake_quant
        if not f._initialised:
            raise ArgumentError("model: a QAT layer never ran forward; train before convert")
        iq = (float(f.scale.detach().reshape(-1)[0]),
              int(torch.round(f.zero_point.detach().float()).reshape(-1)[0]))
        bits = cfg["activation"]["bits"]
    return _quant_linear(m.weight, m.bias, wcfg, iq, bits, qparams=qparams)


# ------------------------------------------------------------------ convert
def convert(model: nn.Module, *, inplace=False) -> nn.Module:
    """Swap the observed (``prepare``) or fake-quantized (``prepare_qat``) layers for
    quantized ones: ``QuantLinear`` with int8 per-channel weights and the calibrated (or
    trained) *static* activation scale and zero point, ``QuantMultiheadAttention`` for
    attention modules.  Raises if the model was not prepared, was already converted, or a
    layer saw no calibration batch."""
    state = getattr(model, "_litecomp_state", None)
    if state not in ("prepare", "prepare_qat"):
        _prepared_state(model, "prepare")
    info = model._litecomp_prepared
    cfg = info["qconfig"]
    if state == "prepare":
        per = _static_qparams(model)
        new = {n: _convert_one(model.get_submodule(n), cfg, per.get(n)) for n in info["names"]}
    else:
        new = {n: _from_qat(model.get_submodule(n)) for n in info["names"]}
    if not inplace:
        if state == "prepare":
            info["capture"].__exit__(None, None, None)
        saved = model._litecomp_prepared
        del model._litecomp_prepared
        try:
            out = copy.deepcopy(model)
        finally:
            model._litecomp_prepared = saved
            if state == "prepare":
                info["capture"].__enter__()
        model = out
    elif state == "prepare":
        info["capture"].__exit__(None, None, None)
        del model._litecomp_prepared
    else:
        del model._litecomp_prepared
    return _swap(model, new, "converted")


# ------------------------------------------------------------------ weight-only (ChatGLM)
def quantize(model: nn.Module, bits=4, group_size=128, *, targets=None, ignore=None,
             inplace=True) -> nn.Module:
    """ChatGLM's ``model.quantize(bits)``: every selected Linear (and nn.MultiheadAttention
    projections) gets ``bits``-bit weights (4: groups of ``group_size`` along the input axis;
    8: per output channel, activations per row at run time).  In place by default, as
    ChatGLM's."""
    if bits == 4:
        w = {"bits": 4, "scheme": "symmetric", "group_size": group_size, "observer": "minmax"}
    elif bits == 8:
        w = dict(_W8)
    else:
        raise ArgumentError(f"bits: the quantized Linear kernels run 4 and 8 bits, got {bits!r}")
    return quantize_dynamic(model, {"weight": w, "activation": None, "targets": targets,
                                    "ignore": ignore}, inplace=inplace)



# ------------------------------------------------------------------ save and load
_PROJ = ("q_proj", "k_proj", "v_proj", "out_proj")


def _quant_layers(model):
    """{name: QuantLinear} of a converted model, attention projections included."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def quantized_state_dict(model: nn.Module) -> dict:
    """A converted model as plain NumPy arrays that ``litecomp.save`` writes and that read
    back without torch: every quantized layer's weight in ``QTensor`` form
    (``{name}.weight.qdata / .scales / .zero_points / .qmeta``: ``litecomp.quant.
    load_quantized(sd, name + ".weight")`` gives the QTensor), ``{name}.bias``,
    ``{name}.input_qparams`` (float64 [scale, zero point, bits], static layers), and every
    other parameter and buffer as it is."""
    layers = _quant_layers(model)
    if not layers:
        raise ArgumentError("model: has no quantized layers (convert or quantize it first)")
    out = {}
    for name, m in layers.items():
        out.update(m.qtensor().to_state_dict(f"{name}.weight"))
        if m.bias is not None:
            out[f"{name}.bias"] = to_numpy(m.bias).copy()
        if m.input_bits is not None:
            out[f"{name}.input_qparams"] = np.array(
                [float(m.input_scale), int(m.input_zero_point), m.input_bits], np.float64)
    inside = tuple(f"{n}." for n in layers)
    for key, v in model.state_dict().items():
        if not key.startswith(inside):
            out[key] = to_numpy(v).copy()
    return out


def save_quantized(model: nn.Module, path, **kw) -> str:
    """``litecomp.save(quantized_state_dict(model), path, **kw)``."""
    from ..io import save
    return save(quantized_state_dict(model), path, **kw)


def load_quantized(model: nn.Module, source, qconfig=None) -> nn.Module:
    """Load a saved quantized model (a path ``save_quantized`` wrote, or its dict) into a
    model freshly prepared (``prepare`` / ``prepare_qat``) with the same qconfig, or into
    the float model with ``qconfig`` given (dynamic and weight-only models), in place: the
    selected layers become the saved quantized ones, everything else loads as usual.  A file
    quantized with other settings (layers, weight bits, static or dynamic activations and
    their bits) raises ArgumentError naming the layer; the model is not changed."""
    from ..io import load
    from ..quant.state import load_quantized as load_q
    state = getattr(model, "_litecomp_state", None)
    if state in ("prepare", "prepare_qat"):
        info = model._litecomp_prepared
        if qconfig is not None:
            raise ArgumentError("qconfig: the prepared model has its own")
    elif state is None and qconfig is not None:
        cfg = globals()["qconfig"](qconfig)
        info = {"qconfig": cfg, "names": [n for n, _ in _chosen(model, cfg)]}
    else:
        raise ArgumentError("model: load_quantized needs a model from prepare() or "
                            "prepare_qat(), or the float model and the qconfig it was "
                            "quantized with")
    sd = load(source) if not isinstance(source, dict) else source
    cfg = info["qconfig"]
    a = cfg["activation"]
    want_bits = cfg["weight"]["bits"]

    def layer(prefix):
        if f"{prefix}.weight.qmeta" not in sd:
            raise ArgumentError(f"source: has no quantized {prefix!r}; it was quantized with "
                                "other settings (targets/ignore)")
        q = load_q(sd, f"{prefix}.weight")
        if q.bits != want_bits:
            raise ArgumentError(f"source: {prefix!r} has {q.bits}-bit weights, the qconfig "
                                f"{want_bits}-bit")
        iq = sd.get(f"{prefix}.input_qparams")
        if (iq is None) != (a is None):
            raise ArgumentError(f"source: {prefix!r} was quantized with "
                                f"{'dynamic' if iq is None else 'static'} activations, the "
                                f"qconfig has {'none' if a is None else 'static ones'}")
        ip, bits = None, 8
        if iq is not None:
            iq = np.asarray(iq, np.float64).ravel()
            ip, bits = (float(iq[0]), int(iq[1])), int(iq[2])
            if bits != a["bits"]:
                raise ArgumentError(f"source: {prefix!r} has {bits}-bit static activations, "
                                    f"the qconfig {a['bits']}-bit")
        return QuantLinear.from_qtensor(q, sd.get(f"{prefix}.bias"), input_qparams=ip,
                                        input_bits=bits)
    new = {}
    for n in info["names"]:
        mod = model.get_submodule(n)
        if isinstance(mod, nn.MultiheadAttention):
            new[n] = QuantMultiheadAttention(mod.embed_dim, mod.num_heads,
                                             [layer(f"{n}.{p}") for p in _PROJ],
                                             batch_first=mod.batch_first, dropout=mod.dropout)
        else:
            new[n] = layer(n)
    extra = [k[:-len(".weight.qmeta")] for k in sd if k.endswith(".weight.qmeta")]
    names = set(new) | {f"{n}.{p}" for n, m in new.items()
                        if isinstance(m, QuantMultiheadAttention) for p in _PROJ}
    stray = [k for k in extra if k not in names]
    if stray:
        raise ArgumentError(f"source: quantizes {stray[0]!r}, which the qconfig does not "
                            "select; it was quantized with other settings")
    # the rest of the state (embeddings, norms, float layers), checked before any change
    inside = tuple(f"{n}." for n in names)
    rest = {k: v for k, v in sd.items() if not k.startswith(inside)}
    own = {k for k in model.state_dict() if not k.startswith(inside)}
    missing, unexpected = own - set(rest), set(rest) - own
    if missing or unexpected:
        raise ArgumentError(f"source: does not fit the model (missing {sorted(missing)[:3]}, "
                            f"unexpected {sorted(unexpected)[:3]})")
    from . import load_numpy_state_dict
    if state == "prepare":
        info["capture"].__exit__(None, None, None)
    if state is not None:
        del model._litecomp_prepared
    _swap(model, new, "converted")
    load_numpy_state_dict(model, {k: np.ascontiguousarray(v) for k, v in rest.items()},
                          strict=False)
    return model
