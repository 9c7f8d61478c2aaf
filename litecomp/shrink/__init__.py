"""Structured shrinking: remove whole units so the model itself gets smaller.

Every function takes a state dict and its architecture (``litecomp.arch``: a name, an
``Arch``, or None to ``detect`` it) and returns a ``ShrinkResult``:

- ``.state_dict``: the smaller state dict (untouched tensors are shared, not copied);
- ``.config``: the new sizes -- for a Hugging Face model the updated ``config.json`` dict,
  for the example decoder ``litecomp.torch.DecoderLM``'s keyword arguments;
- ``.kept``: group name -> the old indices kept, in order (``"layers.3.ffn"``,
  ``"layers.3.self_attn.heads"``, ``"layers.3.self_attn.kv_heads"``, ``"hidden"``,
  ``"vocab"``);
- ``.arch``: the architecture bound to the new config, to chain the next step.

A result can be passed where a state dict is expected, so steps chain:
``heads(ffn(sd, "llama", 0.5), None, 2)``.

Removal is exact: a model built at the new sizes computes what the original computes with
the removed units zeroed (``result.masked(original)`` gives that masked state dict), except
that LayerNorm statistics over fewer hidden channels differ (RMSNorm is rescaled to stay
exact; see docs/shrink.md).

>>> import numpy as np, litecomp
>>> from litecomp import shrink
>>> sd = litecomp.examples.tiny_decoder_lm()
>>> r = shrink.ffn(sd, "decoder_lm", 0.5)
>>> r.state_dict["transformer_decoder.layers.0.linear1.weight"].shape
(64, 64)
>>> r.config["ffn"], r.kept["layers.0.ffn"][:4]
(64, array([ 1,  7,  9, 12]))
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import arch as _arch
from ..errors import ArgumentError, ShapeError
from ..prune import count_to_prune
from ..select import select
from ._vocab import token_counts, top_ids, vocab
from .groups import Cut, check_criterion, choose, make_group, prefetch_norms, unit_scores

__all__ = ["ShrinkResult", "ffn", "heads", "hidden", "vocab", "token_counts", "top_ids",
           "sizes", "shrink_state_dict", "count_parameters"]


@dataclass
class ShrinkResult:
    """What a shrink step returns (see the module docstring)."""
    state_dict: dict
    config: dict
    kept: dict
    arch: "_arch.Arch"
    cut: Cut = field(repr=False, default_factory=Cut)
    id_map: Optional[np.ndarray] = None

    def masked(self, state_dict) -> dict:
        """``state_dict`` (the input of this step) with every removed unit zeroed: the
        masked model the smaller one is equivalent to."""
        return self.cut.masked(state_dict)

    @property
    def loadable(self) -> bool:
        """True when the config alone builds a model of the new sizes (``DecoderLM(**config)``
        or ``from_pretrained``); otherwise use ``litecomp.torch.apply_shrink``."""
        return "litecomp_sizes" not in self.config


def count_parameters(state_dict) -> int:
    return int(sum(np.asarray(v).size for v in state_dict.values()))


def _inputs(state_dict, arch, config=None):
    """(state dict, bound arch) from a state dict or a previous ShrinkResult (whose ``kept``
    the next step carries on)."""
    prior = state_dict.kept if isinstance(state_dict, ShrinkResult) else {}
    bound = isinstance(arch, _arch.Arch) and arch.config is not None
    if config is None and not bound and not isinstance(state_dict, ShrinkResult):
        config = _arch.config_of(state_dict)      # a StateDict's own (litecomp's examples)
    if isinstance(state_dict, ShrinkResult):
        arch = state_dict.arch if arch is None else arch
        state_dict = state_dict.state_dict
    if not isinstance(state_dict, dict):
        raise ArgumentError(f"state_dict: expected a dict of arrays, got "
                            f"{type(state_dict).__name__}")
    if arch is None:
        a = _arch.detect(state_dict, config)
    else:
        a = _arch.get(arch)
        if config is not None or a.config is None:
            a = a.bind(config if config is not None else a.config, _prefix(a, state_dict))
    return state_dict, a, prior


def _prefix(a, state_dict):
    if a.config is not None or a.prefix:
        return a.prefix
    for p in a.prefixes:
        if any(p + m in state_dict for m in a.markers):
            return p
    return a.prefixes[0] if a.prefixes else ""


# ------------------------------------------------------------------ sizes
def _per_layer(a, word, n):
    """A per-layer size from the config: litecomp_sizes[word], or the family key (an int or
    a per-layer list); None when the config does not have it."""
    cfg = a.config or {}
    v = (cfg.get("litecomp_sizes") or {}).get(word)
    if v is None:
        v = a.get(word)
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ArgumentError(f"config: {word!r} lists {len(v)} layers, the state dict has "
                                f"{n}")
        return [int(x) for x in v]
    return [int(v)] * n


def _heads_of(a, attn, n):
    h = _per_layer(a, attn.heads_key, n)
    if h is None and attn.heads_key != "heads":
        h = _per_layer(a, "heads", n)
    return h


def sizes(state_dict, arch=None, *, config=None) -> dict:
    """The model's sizes: layers, vocab, hidden, ffn (per layer) and per attention block
    heads / kv_heads (per layer) and head_dim (None where the config lacks the head count)."""
    sd, a, _ = _inputs(state_dict, arch, config)
    n = a.num_layers(sd)
    if n == 0:
        raise ShapeError(f"state_dict: has no layer of {a.name} "
                         f"({a.layer.format(p=a.prefix, i=0)!r} ...)")
    emb = a.model_level(a.vocab, n)[0]
    if emb.name not in sd:
        raise ShapeError(f"state_dict: has no {emb.name!r}, which {a.name} needs")
    out = {"layers": n, "vocab": int(sd[emb.name].shape[emb.axis]),
           "hidden": int(sd[emb.name].shape[1 - emb.axis]), "ffn": [], "attention": {}}
    for i in range(n):
        g = make_group(sd, f"layers.{i}.ffn", [a.in_layer(s, i) for s in a.ffn.slices],
                       [a.in_layer(s, i) for s in a.ffn.consume], f"{a.name} layer {i} ffn")
        out["ffn"].append(g.n)
    for attn in a.attention:
        h = _heads_of(a, attn, n)
        info = {"heads": h, "kv_heads": None, "head_dim": None}
        if h is not None:
            hd = a.get("head_dim")
            kv, dims = [], []
            for i in range(n):
                q = make_group(sd, "q", [a.in_layer(s, i) for s in attn.q + attn.o], [],
                               f"{a.name} layer {i} {attn.name}")
                d = int(hd) if hd is not None else q.n // h[i] if h[i] else 0
                if h[i] < 1 or d < 1 or q.n != h[i] * d:
                    raise ShapeError(f"config: {h[i]} heads of {d} do not fit layer {i}'s "
                                     f"{attn.name} ({q.n} query features)")
                k = make_group(sd, "kv", [a.in_layer(s, i) for s in attn.k + attn.v], [],
                               f"{a.name} layer {i} {attn.name} keys/values")
                if k.n % d or h[i] % (k.n // d):
                    raise ShapeError(f"state_dict: layer {i}'s {attn.name} has {k.n} key "
                                     f"features, not a divisor of {h[i]} heads of {d}")
                kv.append(k.n // d)
                dims.append(d)
            if len(set(dims)) != 1:
                raise ShapeError(f"config: head_dim differs across layers ({sorted(set(dims))})")
            info.update(kv_heads=kv, head_dim=dims[0])
        out["attention"][attn.name] = info
    return out


# families whose classes take these sizes from config.json; others go to litecomp_sizes
_LOADABLE = {"decoder_lm": ("vocab", "hidden", "ffn", "heads", "kv_heads"),
             "llama": ("vocab", "hidden", "ffn", "heads", "kv_heads"),
             "bert": ("vocab", "ffn"), "gpt2": ("vocab", "ffn")}


def _config(a, s, before, norm_scale=None):
    """The new config for sizes ``s`` (from ``sizes``), starting from the bound config."""
    cfg = dict(a.config or {})
    cfg.pop("litecomp_sizes", None)
    loadable = _LOADABLE.get(a.name, ())
    extra = {}
    decoder = a.name == "decoder_lm"

    def put(word, value, old, per_layer=False):
        key = a.keys.get(word)
        uniform = not per_layer or len(set(value)) <= 1
        scalar = value[0] if per_layer and value else value
        changed = value != old
        if decoder:
            cfg[key] = scalar if uniform else list(value)
        elif key and word in loadable and uniform:
            if changed or key in cfg:
                cfg[key] = scalar
        elif changed:
            extra[word] = list(value) if per_layer else value
    for word in ("vocab", "hidden", "layers"):
        put(word, s[word], before[word])
    put("ffn", s["ffn"], before["ffn"], True)
    for attn in a.attention:
        info = s["attention"][attn.name]
        b = before["attention"][attn.name]
        if info["heads"] is None:
            continue
        put(attn.heads_key, info["heads"], b["heads"], True)
        if attn.kv_heads_key:
            put(attn.kv_heads_key, info["kv_heads"], b["kv_heads"], True)
        if info["head_dim"] and (decoder or a.keys.get("head_dim")):
            if (info["heads"] != b["heads"] or s["hidden"] != before["hidden"]
                    or a.keys["head_dim"] in cfg):
                cfg[a.keys["head_dim"]] = info["head_dim"]
        elif info["heads"] != b["heads"]:
            extra["head_dim"] = info["head_dim"]
    hk, nk = a.keys.get("hidden"), a.keys.get("heads")
    if not decoder and hk in cfg and isinstance(cfg.get(nk), int) and cfg[nk] > 0 \
            and cfg[hk] % cfg[nk]:
        # transformers insists on hidden_size % num_attention_heads == 0 even where head_dim
        # is explicit: keep the old sizes in config.json and the new ones for apply_shrink
        old = a.config or {}
        for word in ("hidden", "heads", "kv_heads"):
            key = a.keys.get(word)
            if key in cfg and cfg[key] != old.get(key):
                extra[word] = [cfg[key]] * s["layers"] if word != "hidden" else cfg[key]
                cfg[key] = old.get(key)
        extra.setdefault("head_dim", s["attention"][a.attention[0].name]["head_dim"])
    if decoder:
        if cfg.get("cross_heads") == cfg.get("heads"):
            cfg.pop("cross_heads", None)
    if norm_scale is not None and a.keys.get("norm_eps"):
        key = a.keys["norm_eps"]
        cfg[key] = float(cfg.get(key, 1e-6)) * norm_scale
    if extra:
        cfg["litecomp_sizes"] = extra
    return cfg


def _finish(sd, a, cut, kept, before, after, norm_scale=None, id_map=None, prior=()):
    for k, v in dict(prior).items():
        kept.setdefault(k, v)
    new_sd = cut.apply(sd)
    cfg = _config(a, after, before, norm_scale)
    return ShrinkResult(new_sd, cfg, kept, a.bind(cfg), cut, id_map)


def _layers(a, n, targets, ignore, what):
    names = [a.layer_prefix(i) for i in range(n)]
    if targets is None and not ignore:
        return list(range(n))
    chosen = set(select(names, targets, ignore, what=what))
    return [i for i, nm in enumerate(names) if nm in chosen]


def _check_common(criterion, round_to):
    check_criterion(criterion)
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise ArgumentError(f"round_to: expected a positive int, got {round_to!r}")


# ------------------------------------------------------------------ FFN units
def ffn(state_dict, arch=None, amount=0.5, *, criterion="l2", granularity="layer",
        round_to=1, targets=None, ignore=None, grads=None, activations=None,
        config=None) -> ShrinkResult:
    """Remove FFN units: rows of the up/gate projections (and their biases) with the
    matching columns of the down projection.

    amount: torch's rules (an int count of units, a float fraction) per layer
    (``granularity="layer"``) or over all layers at once (``"global"``; every layer keeps at
    least ``round_to`` units).  criterion: "l2" / "l1" (norm of the coupled slices),
    "taylor" (sum of |w * g| over them; ``grads={name: gradient}``) or "activation"
    (``activations={down projection module: per-input statistic}``, e.g. from
    ``litecomp.torch.activation_stats``).  round_to: kept counts are rounded up to a
    multiple of it.  targets / ignore: the layers (their prefixes, such as
    ``"model.layers.3"``) to shrink; default all.
    """
    sd, a, prior = _inputs(state_dict, arch, config)
    _check_common(criterion, round_to)
    before = sizes(sd, a)
    n = before["layers"]
    chosen = _layers(a, n, targets, ignore, "layers")
    groups = [make_group(sd, f"layers.{i}.ffn", [a.in_layer(s, i) for s in a.ffn.slices],
                         [a.in_layer(s, i) for s in a.ffn.consume], f"{a.name} layer {i} ffn")
              for i in chosen]
    norms = prefetch_norms(sd, groups, criterion, {})
    scores = [unit_scores(sd, g, criterion, grads=grads, activations=activations, cache=norms)
              for g in groups]
    masks = choose(scores, amount, granularity, round_to, "ffn units")
    cut, kept = Cut(), {}
    after = {**before, "ffn": list(before["ffn"])}
    for i, g, m in zip(chosen, groups, masks):
        cut.keep_group(g, m)
        kept[g.name] = np.flatnonzero(m)
        after["ffn"][i] = int(m.sum())
    return _finish(sd, a, cut, kept, before, after, prior=prior)


# ------------------------------------------------------------------ attention heads
GQA_MODES = ("groups", "query")


def _combine(criterion, parts):
    """Scores of several pieces of one unit combined as the criterion combines slices."""
    if criterion == "l2":
        return np.sqrt(sum(p * p for p in parts))
    return sum(parts)


def heads(state_dict, arch=None, amount=0.25, *, criterion="l2", granularity="layer",
          round_to=1, gqa="groups", attention=None, targets=None, ignore=None, grads=None,
          activations=None, config=None) -> ShrinkResult:
    """Remove attention heads: query rows, key/value rows and output-projection columns.

    amount counts *query* heads (torch's rules, per attention block, or globally).  With
    grouped-query attention (fewer key/value heads than query heads):
    ``gqa="groups"`` removes whole groups -- a key/value head with all the query heads that
    share it -- so the amount must be a multiple of the group size; ``gqa="query"`` removes
    the same number of query heads from every group (the amount must be a multiple of the
    number of key/value heads) and keeps every key/value head.  Anything else would break
    the grouping, and raises.  round_to rounds the kept units (groups, or query heads per
    group) up.  attention: names of the blocks to shrink (default all, e.g. the decoder's
    "self_attn" and "multihead_attn"); targets / ignore select blocks by module name
    (``"model.layers.0.self_attn"``).
    """
    sd, a, prior = _inputs(state_dict, arch, config)
    _check_common(criterion, round_to)
    if gqa not in GQA_MODES:
        raise ArgumentError(f"gqa: {gqa!r} is not one of {', '.join(GQA_MODES)}")
    blocks = list(a.attention)
    if attention is not None:
        names = [attention] if isinstance(attention, str) else list(attention)
        unknown = [x for x in names if x not in {b.name for b in blocks}]
        if unknown:
            raise ArgumentError(f"attention: {unknown} are not attention blocks of {a.name} "
                                f"({', '.join(b.name for b in blocks)})")
        blocks = [b for b in blocks if b.name in names]
    before = sizes(sd, a)
    n = before["layers"]
    after = {**before, "attention": {k: dict(v) for k, v in before["attention"].items()}}
    cut, kept = Cut(), {}
    for attn in blocks:
        info = before["attention"][attn.name]
        if info["heads"] is None:
            key = a.keys.get("heads") or a.keys.get(attn.heads_key, attn.heads_key)
            raise ArgumentError(
                f"config: {key!r}, the head count of {a.name}'s {attn.name}, is missing: no "
                "tensor shows it (an nn.TransformerDecoder's state dict does not carry nhead); "
                f"give config={{{key!r}: N}} (command line: --config '{{\"{key}\": N}}'), N "
                "the number of heads the model was built with")
        mods = [f"{a.layer_prefix(i)}.{attn.name}" for i in range(n)]
        if targets is None and not ignore:
            chosen = list(range(n))
        else:
            picked = set(select(mods, targets, ignore, what="attention blocks"))
            chosen = [i for i in range(n) if mods[i] in picked]
        hd = info["head_dim"]
        new_h, new_kv = list(info["heads"]), list(info["kv_heads"])
        qs, kvs, units = [], [], []
        pairs = []
        for i in chosen:
            where = f"{a.name} layer {i} {attn.name}"
            pairs.append((
                make_group(sd, f"layers.{i}.{attn.name}.heads",
                           [a.in_layer(s, i) for s in attn.q + attn.o],
                           [a.in_layer(s, i) for s in attn.o], where, hd),
                make_group(sd, f"layers.{i}.{attn.name}.kv_heads",
                           [a.in_layer(s, i) for s in attn.k + attn.v], [], where, hd)))
        # one pass over every tensor of the block (q, k and v may share a packed one)
        norms = prefetch_norms(sd, [g for pair in pairs for g in pair], criterion, {})
        for qg, kg in pairs:
            qsc = unit_scores(sd, qg, criterion, grads=grads, activations=activations,
                              cache=norms)
            ksc = (np.zeros(kg.n) if criterion == "activation" else
                   unit_scores(sd, kg, criterion, grads=grads, cache=norms))
            qs.append((qg, qsc))
            kvs.append((kg, ksc))
            g = qg.n // kg.n
            if gqa == "groups" or g == 1:
                units.append(_combine(criterion, [qsc.reshape(kg.n, g)[:, j]
                                                  for j in range(g)] + [ksc]))
            else:
                units.append(qsc)
        gsize = [q.n // k.n for (q, _), (k, _) in zip(qs, kvs)]
        if gqa == "groups" or all(x == 1 for x in gsize):
            amounts = _group_amount(amount, qs, gsize, granularity, attn.name)
            masks = choose(units, amounts, granularity, round_to, "key/value head groups"
                           if any(x > 1 for x in gsize) else "heads")
            for i, (qg, _), (kg, _), m, g in zip(chosen, qs, kvs, masks, gsize):
                cut.keep_group(kg, m)
                qm = np.repeat(m, g)
                cut.keep_group(qg, qm)
                kept[qg.name], kept[kg.name] = np.flatnonzero(qm), np.flatnonzero(m)
                new_h[i], new_kv[i] = int(qm.sum()), int(m.sum())
        else:
            if granularity != "layer":
                raise ArgumentError("granularity: gqa='query' removes heads per layer only")
            for i, (qg, qsc), (kg, _), g in zip(chosen, qs, kvs, gsize):
                k = count_to_prune(amount, qg.n)
                if k % kg.n:
                    raise ArgumentError(
                        f"amount: removing {k} of {qg.n} query heads in layer {i}'s "
                        f"{attn.name} breaks GQA: gqa='query' removes the same number from "
                        f"each of the {kg.n} key/value groups, so give a multiple of {kg.n}")
                per = choose([qsc.reshape(kg.n, g)[j] for j in range(kg.n)], k // kg.n,
                             "layer", round_to, f"query heads of a group in layer {i}")
                qm = np.concatenate(per)
                cut.keep_group(qg, qm)
                kept[qg.name] = np.flatnonzero(qm)
                kept[kg.name] = np.arange(kg.n)
                new_h[i] = int(qm.sum())
        after["attention"][attn.name].update(heads=new_h, kv_heads=new_kv)
    return _finish(sd, a, cut, kept, before, after, prior=prior)


def _group_amount(amount, qs, gsize, granularity, name):
    """The amount in key/value groups for gqa='groups' (it is given in query heads)."""
    if all(g == 1 for g in gsize):
        return amount
    total = sum(q.n for q, _ in qs) if granularity == "global" else qs[0][0].n
    k = count_to_prune(amount, total)
    g = gsize[0]
    if len(set(gsize)) != 1 or k % g:
        raise ArgumentError(
            f"amount: removing {k} of {total} query heads in {name} breaks GQA: {g} query "
            f"heads share each key/value head, so remove a multiple of {g}, or use "
            "gqa='query' to remove query heads within the groups")
    return k // g


# ------------------------------------------------------------------ hidden channels
def hidden(state_dict, arch=None, amount=0.25, *, criterion="l2", round_to=1, grads=None,
           activations=None, config=None) -> ShrinkResult:
    """Remove channels of the residual stream: embedding columns, every norm, the rows of
    the projections that write the stream and the columns of those that read it.

    For RMSNorm families the norms are rescaled (weight by sqrt(d/d'), eps by d/d') so the
    smaller model computes exactly what the masked one does; LayerNorm statistics over
    fewer channels cannot be kept and change (docs/shrink.md)."""
    sd, a, prior = _inputs(state_dict, arch, config)
    _check_common(criterion, round_to)
    before = sizes(sd, a)
    n = before["layers"]
    slices = a.model_level(a.hidden.slices, n)
    consume = a.model_level(a.hidden.consume, n)
    g = make_group(sd, "hidden", slices, consume, f"{a.name} hidden channels")
    sc = unit_scores(sd, g, criterion, grads=grads, activations=activations,
                     cache=prefetch_norms(sd, [g], criterion, {}))
    (m,) = choose([sc], amount, "layer", round_to, "hidden channels")
    cut = Cut()
    cut.keep_group(g, m)
    d, d2 = g.n, int(m.sum())
    after = {**before, "hidden": d2}
    scale = None
    if a.norm == "rms" and d2 != d:
        scale = d / d2
    res = _finish(sd, a, cut, {"hidden": np.flatnonzero(m)}, before, after, scale,
                  prior=prior)
    if scale is not None:
        f = np.sqrt(scale)
        for s in a.model_level([_arch.Slice(x, 0) for x in a.norms], n):
            if s.name in res.state_dict:
                w = res.state_dict[s.name]
                res.state_dict[s.name] = (w.astype(np.float64) * f).astype(w.dtype)
    return res


def shrink_state_dict(state_dict, recipe, *, arch=None, config=None, grads=None,
                      activations=None) -> ShrinkResult:
    """Run a recipe's shrink stages in order (``litecomp.recipe`` family "shrink"); see
    ``litecomp.shrink.state``."""
    from .state import run
    return run(state_dict, recipe, arch=arch, config=config, grads=grads,
               activations=activations)
