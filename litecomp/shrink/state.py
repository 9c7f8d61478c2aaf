"""Shrink recipes: the "shrink" family of ``litecomp.recipe`` run on a state dict.

Stages (each also takes ``targets`` / ``ignore``):

- ``shrink_ffn``: ``sparsity`` (fraction of units) or ``amount`` (torch's rules),
  ``criterion``, ``granularity`` ("layer" / "global"), ``round_to``; targets pick layers.
- ``shrink_heads``: the same plus ``gqa`` and ``attention``; targets pick attention blocks.
- ``shrink_hidden``: ``sparsity`` / ``amount``, ``criterion``, ``round_to``.
- ``shrink_vocab``: ``keep_ids`` (a list or an ids .npy path), or ``token_ids`` (a tokenized
  corpus: an array, a .npy or a whitespace-separated .txt of ids) with ``vocab_size`` (keep
  the most frequent; default every id that occurs).
- ``lowrank``: ``rank`` / ``energy`` / ``budget``, ``algorithm``, ``oversample``,
  ``power_iters``, ``seed``; targets pick 2-D weights.

>>> import litecomp
>>> from litecomp import shrink
>>> r = shrink.shrink_state_dict(litecomp.examples.tiny_decoder_lm(),
...     [{"method": "shrink_ffn", "sparsity": 0.5}, {"method": "shrink_vocab", "keep_ids": [0, 5, 7]}])
>>> r.config["ffn"], r.config["vocab"]
(64, 3)
"""

import os

import numpy as np

from ..errors import ArgumentError
from ..recipe import stages as _stages


def read_token_ids(source, name="token_ids"):
    """Token ids from an array, a .npy file or a text file of whitespace-separated ids
    (read in chunks)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ArgumentError(f"{name}: {path!r} does not exist")
        if path.endswith(".npy"):
            return [np.load(path, mmap_mode="r", allow_pickle=False)]
        return _text_ids(path, name)
    return [np.asarray(source)]


def _text_ids(path, name):
    out = []
    with open(path, "rb") as f:
        rest = b""
        while True:
            chunk = f.read(1 << 24)
            if not chunk:
                break
            chunk = rest + chunk
            cut = max(chunk.rfind(b" "), chunk.rfind(b"\n"), chunk.rfind(b"\t"))
            if cut < 0:
                rest = chunk
                continue
            rest = chunk[cut + 1:]
            out.append(_parse(chunk[:cut + 1], path, name))
        if rest.strip():
            out.append(_parse(rest, path, name))
    return out


def _parse(buf, path, name):
    try:
        return np.array(buf.split(), dtype=np.int64)
    except ValueError:
        bad = next(t for t in buf.split() if not t.lstrip(b"-").isdigit())
        raise ArgumentError(f"{name}: {path!r} holds {bad[:20].decode(errors='replace')!r}, "
                            "not an integer token id (a text corpus must be tokenized into "
                            "whitespace-separated ids first)") from None


def _keep_ids(stage, vocab):
    from . import token_counts, top_ids
    o = stage.options
    if ("keep_ids" in o) == ("token_ids" in o):
        raise ArgumentError(f"{stage.where()}: shrink_vocab needs keep_ids or token_ids "
                            "(one of them)")
    if "keep_ids" in o:
        src = o["keep_ids"]
        return read_token_ids(src, "keep_ids")[0] if isinstance(src, (str, os.PathLike)) \
            else np.asarray(src)
    counts = token_counts(read_token_ids(o["token_ids"]), vocab)
    return top_ids(counts, o.get("vocab_size"))


def run(state_dict, recipe, *, arch=None, config=None, grads=None, activations=None):
    from . import ShrinkResult, _inputs, ffn, heads, hidden, sizes, vocab
    from ..prune.state import _amount
    plan = _stages(recipe, family="shrink")
    sd, a, _ = _inputs(state_dict, arch, config)
    res = ShrinkResult(sd, dict(a.config or {}), {}, a)
    for st in plan:
        o, where = st.options, st.where()
        common = {"targets": st.targets, "ignore": st.ignore or None}
        if st.method in ("shrink_ffn", "shrink_heads", "shrink_hidden"):
            kw = {k: o[k] for k in ("criterion", "round_to") if k in o}
            amount = _amount(st)
            if st.method == "shrink_ffn":
                kw.update({k: o[k] for k in ("granularity",) if k in o})
                step = ffn(res, None, amount, grads=grads, activations=activations,
                           **common, **kw)
            elif st.method == "shrink_heads":
                kw.update({k: o[k] for k in ("granularity", "gqa", "attention") if k in o})
                step = heads(res, None, amount, grads=grads, activations=activations,
                             **common, **kw)
            else:
                if st.targets or st.ignore:
                    raise ArgumentError(f"{where}: shrink_hidden cuts the whole residual "
                                        "stream; it takes no targets / ignore")
                step = hidden(res, None, amount, grads=grads, activations=activations, **kw)
        elif st.method == "shrink_vocab":
            step = vocab(res, None, _keep_ids(st, sizes(res.state_dict, res.arch)["vocab"]))
        elif st.method == "lowrank":
            from ..lowrank import lowrank_state_dict
            kw = {k: o[k] for k in ("rank", "energy", "budget", "algorithm", "oversample",
                                    "power_iters", "seed") if k in o}
            new_sd, rows = lowrank_state_dict(res.state_dict, **common, **kw)
            step = ShrinkResult(new_sd, res.config, dict(res.kept), res.arch)
            step.lowrank = rows
        else:  # pragma: no cover - the recipe table and this runner disagree
            raise ArgumentError(f"{where}: method {st.method!r} has no shrink runner")
        res = step
    return res
