"""Shrunk and factorized models in torch: an attention module whose inner width need not be
the model width, decoder layers at per-layer sizes, ``apply_shrink`` (rebuild a model's
modules at a ``ShrinkResult``'s sizes, in place) and ``LowRankLinear``."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArgumentError, ShapeError


class Attention(nn.Module):
    """``nn.MultiheadAttention``'s parameters and call, with ``heads * head_dim`` free of
    ``embed_dim`` (what removing heads or hidden channels needs): ``in_proj_weight``
    [3 * heads * head_dim, embed_dim], ``in_proj_bias``, ``out_proj`` (Linear
    heads * head_dim -> embed_dim).  The same state-dict names as MultiheadAttention."""

    def __init__(self, embed_dim, heads, head_dim, *, bias=True, batch_first=True):
        super().__init__()
        inner = heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, heads, head_dim
        self.batch_first = batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None,
                need_weights=False, is_causal=False, average_attn_weights=True):
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        w = self.in_proj_weight.chunk(3)
        b = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        B, Sq, Sk = query.shape[0], query.shape[1], key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = F.linear(query, w[0], b[0]).view(B, Sq, h, d).transpose(1, 2)
        k = F.linear(key, w[1], b[1]).view(B, Sk, h, d).transpose(1, 2)
        v = F.linear(value, w[2], b[2]).view(B, Sk, h, d).transpose(1, 2)
        mask = None
        if attn_mask is not None:
            mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, -math.inf) \
                if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype)
        if key_padding_mask is not None:
            kp = key_padding_mask.view(B, 1, 1, Sk)
            kp = torch.zeros_like(kp, dtype=q.dtype).masked_fill(kp, -math.inf) \
                if kp.dtype == torch.bool else kp.to(q.dtype)
            mask = kp if mask is None else mask + kp
        causal = bool(is_causal) and mask is None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(B, Sq, h * d))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def _per_layer(v, n, name):
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ArgumentError(f"{name}: lists {len(v)} layers, the model has {n}")
        return [int(x) for x in v]
    return [int(v)] * n


def decoder_layers(d_model, heads, layers, ffn, head_dim=None, cross_heads=None):
    """``nn.TransformerDecoderLayer``s at per-layer sizes (heads, cross_heads, ffn: an int
    or one per layer); a block whose heads * head_dim is not d_model gets ``Attention``."""
    hs = _per_layer(heads, layers, "heads")
    cs = _per_layer(hs if cross_heads is None else cross_heads, layers, "cross_heads")
    fs = _per_layer(ffn, layers, "ffn")
    if head_dim is None:
        if d_model % hs[0]:
            raise ArgumentError(f"heads: d_model ({d_model}) is not a multiple of {hs[0]}; "
                                "give head_dim")
        head_dim = d_model // hs[0]
    out = []
    for h, c, f in zip(hs, cs, fs):
        layer = nn.TransformerDecoderLayer(d_model, 1, dim_feedforward=f, dropout=0.0,
                                           batch_first=True)
        for attr, n in (("self_attn", h), ("multihead_attn", c)):
            if n * head_dim == d_model:
                setattr(layer, attr, nn.MultiheadAttention(d_model, n, dropout=0.0,
                                                           batch_first=True))
            else:
                setattr(layer, attr, Attention(d_model, n, head_dim))
        out.append(layer)
    return nn.ModuleList(out)


# ------------------------------------------------------------------ apply_shrink
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "num_key_value_heads",
               "num_key_value_groups", "all_head_size", "split_size")


def _fix_module(mod, eps=None):
    """Keep a module's size attributes in step with its (replaced) parameters."""
    w = getattr(mod, "weight", None)
    if isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = w.shape
    elif isinstance(mod, nn.Embedding):
        mod.num_embeddings, mod.embedding_dim = w.shape
    elif isinstance(mod, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))) and w is not None:
        mod.normalized_shape = tuple(w.shape)
    elif type(mod).__name__ == "Conv1D" and w is not None:
        mod.nx, mod.nf = w.shape
    if eps is not None and hasattr(mod, "variance_epsilon"):
        mod.variance_epsilon = eps
    elif eps is not None and isinstance(mod, getattr(nn, "RMSNorm", ())) :
        mod.eps = eps


class _Undo:
    """Puts a model's structure back when rebuilding it fails: a shallow copy of every
    module's attributes (parameters, buffers, submodules, sizes) and of its config, taken
    before anything changes -- no tensor is copied.  Values are written only by the final
    strict load, once every name and shape has been checked (``_check_loadable``)."""

    def __init__(self, model):
        self.saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers),
                       dict(m._modules)) for m in model.modules()]
        cfg = getattr(model, "config", None)
        self.cfg = (cfg, dict(vars(cfg))) if hasattr(cfg, "__dict__") else None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            return False
        for m, attrs, params, buffers, modules in self.saved:
            m.__dict__.clear()
            m.__dict__.update(attrs, _parameters=params, _buffers=buffers, _modules=modules)
        if self.cfg is not None:
            vars(self.cfg[0]).clear()
            vars(self.cfg[0]).update(self.cfg[1])
        return False


def _check_loadable(model, state_dict):
    """The strict load will take ``state_dict``: the same names and shapes (else ShapeError,
    before any value is written)."""
    own = model.state_dict(keep_vars=True)
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise ShapeError(f"result: the state dict has no {missing[:3]}, which the model "
                         f"({type(model).__name__}) has; nothing was changed")
    extra = [k for k in state_dict if k not in own]
    if extra:
        raise ShapeError(f"result: {extra[:3]} are not tensors of the model "
                         f"({type(model).__name__}); nothing was changed")
    bad = [k for k, v in state_dict.items() if tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        k = bad[0]
        raise ShapeError(f"result: {k!r} is {tuple(state_dict[k].shape)} but the rebuilt "
                         f"model's is {tuple(own[k].shape)}; nothing was changed")


def apply_shrink(model: nn.Module, result, *, load=True) -> nn.Module:
    """Rebuild ``model``'s modules at ``result``'s sizes, in place, and (``load``) load the
    smaller state dict with ``strict=True``.  For models whose class cannot take the new sizes
    from a config: per-layer sizes, BERT / GPT-2 heads, nn.MultiheadAttention blocks.

    Parameters whose shape changed are replaced (tied ones stay tied), Linear / Embedding /
    norm / Conv1D size attributes follow, attention modules get their new head counts, and an
    ``nn.MultiheadAttention`` that can no longer hold its heads becomes ``Attention``.
    """
    with _Undo(model):
        _rebuild(model, result)
        _check_loadable(model, result.state_dict)
    if load:
        from . import load_numpy_state_dict
        load_numpy_state_dict(model, result.state_dict, strict=True)
    return model


def _rebuild(model, result):
    sd = result.state_dict
    a = result.arch
    own = model.state_dict(keep_vars=True)
    missing = [k for k in sd if k not in own]
    if missing:
        raise ArgumentError(f"result: {missing[:3]} are not tensors of the model "
                            f"({type(model).__name__})")
    eps = None
    key = a.keys.get("norm_eps")
    if key and key in result.config:
        eps = float(result.config[key])
    from ..shrink import sizes
    s = sizes(sd, a)
    n = s["layers"]
    # attention blocks first: MultiheadAttention is replaced whole
    for attn in a.attention:
        info = s["attention"][attn.name]
        for i in range(n):
            name = f"{a.layer_prefix(i)}.{attn.name}"
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                raise ShapeError(f"model: has no module {name!r} ({a.name})") from None
            h = info["heads"][i] if info["heads"] else None
            if isinstance(mod, nn.MultiheadAttention):
                w = sd[f"{name}.in_proj_weight"]
                d = mod.head_dim
                if w.shape[0] != 3 * mod.embed_dim or w.shape[1] != mod.embed_dim:
                    owner, _, attr = name.rpartition(".")
                    new = Attention(w.shape[1], w.shape[0] // 3 // d, d,
                                    bias=mod.in_proj_bias is not None,
                                    batch_first=mod.batch_first)
                    setattr(model.get_submodule(owner), attr, new)
                continue
            if h is None:
                continue
            kv = info["kv_heads"][i]
            hd = info["head_dim"]
            values = {"num_heads": h, "num_attention_heads": h, "num_key_value_heads": kv,
                      "num_key_value_groups": h // kv, "all_head_size": h * hd,
                      "split_size": h * hd}
            for sub in mod.modules():
                for attr in _HEAD_ATTRS:
                    if hasattr(sub, attr) and isinstance(getattr(sub, attr), int):
                        setattr(sub, attr, values[attr])
    own = model.state_dict(keep_vars=True)
    replaced = {}
    touched = set()
    for k, arr in sd.items():
        cur = own[k]
        if tuple(cur.shape) == tuple(arr.shape):
            continue
        owner_name, _, attr = k.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if id(cur) not in replaced:
            t = torch.empty(arr.shape, dtype=cur.dtype, device=cur.device)
            replaced[id(cur)] = nn.Parameter(t, requires_grad=cur.requires_grad) \
                if isinstance(cur, nn.Parameter) else t
        new = replaced[id(cur)]
        if isinstance(new, nn.Parameter):
            setattr(owner, attr, new)
        else:
            owner.register_buffer(attr, new)
        touched.add(owner_name)
    # tied parameters that the state dict does not list
    for mname, mod in model.named_modules():
        for pname, p in list(mod.named_parameters(recurse=False)):
            if id(p) in replaced:
                setattr(mod, pname, replaced[id(p)])
                touched.add(mname)
    for mname, mod in model.named_modules():
        if mname in touched or eps is not None:
            _fix_module(mod, eps)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        for k2, v in result.config.items():
            if k2 in ("litecomp_sizes",) or hasattr(cfg, k2):
                try:
                    setattr(cfg, k2, v)
                except (AttributeError, TypeError, ValueError):
                    pass



# ------------------------------------------------------------------ low rank
class LowRankLinear(nn.Module):
    """``nn.Linear`` as two: ``first`` (in -> rank, no bias) then ``second`` (rank -> out,
    with the bias), so W ~= second.weight @ first.weight.  Both are plain nn.Linear, so
    quantizing or pruning them later works as for any Linear."""

    def __init__(self, in_features, out_features, rank, *, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x):
        return self.second(self.first(x))

    @classmethod
    def from_factors(cls, a, b, bias=None):
        """From factors ``a`` [out, rank] and ``b`` [rank, in] (NumPy or torch), W ~= a @ b."""
        a = torch.as_tensor(np.asarray(a))
        b = torch.as_tensor(np.asarray(b))
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ShapeError(f"a, b: expected [out, rank] and [rank, in], got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        m = cls(b.shape[1], a.shape[0], a.shape[1], bias=bias is not None)
        with torch.no_grad():
            m.first.weight.copy_(b)
            m.second.weight.copy_(a)
            if bias is not None:
                m.second.bias.copy_(torch.as_tensor(np.asarray(bias)))
        return m

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"rank={self.rank}"


def apply_lowrank(model: nn.Module, state_dict, *, load=True) -> nn.Module:
    """Swap every ``nn.Linear`` that ``state_dict`` (from ``litecomp.lowrank.
    lowrank_state_dict``) holds as ``<name>.first.weight`` / ``<name>.second.weight`` for a
    ``LowRankLinear`` of that rank, then (``load``) load the state dict strictly."""
    swaps = []
    for name, mod in list(model.named_modules()):
        key = f"{name}.first.weight"
        if key not in state_dict:
            continue
        if not isinstance(mod, nn.Linear):
            raise ArgumentError(f"state_dict: {key!r} factorizes {name!r}, which is a "
                                f"{type(mod).__name__}, not an nn.Linear")
        r = state_dict[key].shape[0]
        swaps.append((name, LowRankLinear(mod.in_features, mod.out_features, r,
                                          bias=mod.bias is not None)))
    if not swaps:
        raise ArgumentError("state_dict: factorizes no nn.Linear of the model (no "
                            "'<name>.first.weight')")
    with _Undo(model):
        for name, new in swaps:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attr, new)
        _check_loadable(model, state_dict)
    if load:
        from . import load_numpy_state_dict
        load_numpy_state_dict(model, state_dict, strict=True)
    return model
