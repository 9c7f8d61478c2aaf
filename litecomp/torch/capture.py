"""Activation capture on torch models, for calibration (GPTQ, SparseGPT, Wanda, AWQ,
SmoothQuant here; activation observers for static quantization later).

Three pieces, usable on their own:

- ``taps_for(model, modules)``: where each selected module's input can be seen.  An
  ``nn.Linear`` has one tap (its input).  An ``nn.MultiheadAttention`` has a tap per packed
  projection -- rows [0, E) of ``in_proj_weight`` see ``query``, [E, 2E) ``key``, [2E, 3E)
  ``value``, which differ in cross-attention -- or per separate ``q/k/v_proj_weight``.  Its
  ``out_proj`` is an ``nn.Linear`` whose ``forward`` MultiheadAttention never calls (it
  passes the weight to ``F.multi_head_attention_forward``), so its input is recomputed: the
  attention is run once more with ``out_proj`` replaced by the identity.
- ``Capture(taps, observe)``: a context manager that installs forward pre-hooks and calls
  ``observe(tap, x)`` with every activation ``x`` ([..., features], detached) that reaches a
  tap while the model runs.
- The sequential runner: ``find_blocks`` (the model's repeated layers: an ``nn.Sequential``'s
  children, the longest ``nn.ModuleList``, or modules named by ``sequential_targets``),
  ``block_inputs`` (the positional and keyword arguments the first block receives, one set
  per calibration batch, caught by a hook that stops the forward there) and ``call_block``
  / ``next_inputs`` (run one block, with substitute parameters through
  ``torch.func.functional_call`` so the model itself is never modified, and turn its output
  into the next block's arguments).  Only one block's inputs are held at a time.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import ArgumentError

__all__ = ["Tap", "taps_for", "Capture", "find_blocks", "block_inputs", "call_block",
           "next_inputs", "run_batch"]

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Tap:
    """One place an input is observed.  ``key``: the layer name used in reports and Hessian
    files; ``module_name``: the module the hook sits on; ``kind``: "input" (a Linear's input),
    "query" / "key" / "value" (a MultiheadAttention input) or "attn" (the attention output
    that ``out_proj`` multiplies); ``param`` and ``rows``: the weight (and its row block) this input feeds;
    ``features``: the input width."""
    key: str
    module_name: str
    kind: str
    param: str
    rows: Optional[tuple] = None
    features: int = 0


def _tap(key, module_name, kind, param, rows, features):
    return Tap(key, module_name, kind, param, rows, features)


def _join(*names):
    return ".".join(n for n in names if n)


def taps_for(model: nn.Module, modules) -> list:
    """The taps of the given [(name, module)]: Linear -> its input; MultiheadAttention ->
    q/k/v parts of the input projection; a Linear that is a MultiheadAttention's
    ``out_proj`` -> the attention output."""
    owners = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            owners[_join(n, "out_proj")] = n
    taps = []
    for name, mod in modules:
        if isinstance(mod, nn.MultiheadAttention):
            e = mod.embed_dim
            if mod._qkv_same_embed_dim:
                for i, (p, kind) in enumerate(zip(QKV, ("query", "key", "value"))):
                    taps.append(_tap(_join(name, "in_proj_weight", p), name, kind,
                                     _join(name, "in_proj_weight"), (i * e, (i + 1) * e),
                                     mod.in_proj_weight.shape[1]))
            else:
                for p, kind in zip(QKV, ("query", "key", "value")):
                    w = getattr(mod, f"{p}_proj_weight")
                    taps.append(_tap(_join(name, f"{p}_proj_weight"), name, kind,
                                     _join(name, f"{p}_proj_weight"), None, w.shape[1]))
        elif isinstance(mod, nn.Linear):
            if name in owners:
                taps.append(_tap(name, owners[name], "attn", _join(name, "weight"), None,
                                 mod.in_features))
            else:
                taps.append(_tap(name, name, "input", _join(name, "weight"), None,
                                 mod.in_features))
        else:
            raise ArgumentError(f"targets: {name!r} is a {type(mod).__name__}; calibrated "
                                "methods take nn.Linear and nn.MultiheadAttention layers")
    return taps


_MHA_ARGS = ("query", "key", "value")


def _mha_arg(args, kwargs, i):
    if len(args) > i:
        return args[i]
    return kwargs.get(_MHA_ARGS[i])


class Capture:
    """Forward pre-hooks that hand every tap's activation to ``observe(tap, x)``.

    ``model``: the module the tap names are relative to (a block, or the whole model).
    """

    def __init__(self, model: nn.Module, taps, observe):
        self.model, self.taps, self.observe = model, list(taps), observe
        self._handles = []
        self._inside = False

    def __enter__(self):
        by_module = {}
        for t in self.taps:
            by_module.setdefault(t.module_name, []).append(t)
        for name, taps in by_module.items():
            mod = self.model.get_submodule(name) if name else self.model
            if isinstance(mod, nn.MultiheadAttention):
                h = mod.register_forward_pre_hook(self._mha_hook(mod, taps), with_kwargs=True)
            else:
                h = mod.register_forward_pre_hook(self._linear_hook(taps))
            self._handles.append(h)
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def _linear_hook(self, taps):
        def hook(mod, inputs):
            if not self._inside:
                for t in taps:
                    self.observe(t, inputs[0].detach())
        return hook

    def _mha_hook(self, mod, taps):
        def hook(m, args, kwargs):
            if self._inside:
                return None
            for t in taps:
                if t.kind == "attn":
                    self.observe(t, self._attention_output(m, args, kwargs))
                else:
                    x = _mha_arg(args, kwargs, _MHA_ARGS.index(t.kind))
                    self.observe(t, x.detach())
            return None
        return hook

    def _attention_output(self, m, args, kwargs):
        """The input out_proj sees: the attention run with out_proj as the identity."""
        e = m.out_proj.weight.shape[1]
        eye = torch.eye(e, dtype=m.out_proj.weight.dtype, device=m.out_proj.weight.device)
        params = {"out_proj.weight": eye}
        if m.out_proj.bias is not None:
            params["out_proj.bias"] = torch.zeros_like(m.out_proj.bias)
        kw = dict(kwargs)
        kw["need_weights"] = False
        self._inside = True
        try:
            out = torch.func.functional_call(m, params, args, kw)
        finally:
            self._inside = False
        out = out[0] if isinstance(out, tuple) else out
        return out.detach()


# ------------------------------------------------------------------ sequential runner
class _Stop(Exception):
    pass


def run_batch(model, batch):
    """``model(batch)``: a tensor, a tuple/list of positional arguments, or a dict of
    keyword arguments."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def find_blocks(model: nn.Module, sequential_targets=None) -> list:
    """[(name, module)] of the blocks run one after another.

    ``sequential_targets``: patterns or class names (``"LlamaDecoderLayer"``) of the
    blocks; default: the children of an ``nn.Sequential`` model, else the longest
    ``nn.ModuleList`` in the model (a transformer's layers), else the model as one block.
    """
    if sequential_targets is not None:
        from .select import select_modules
        found = select_modules(model, sequential_targets, None, default=(),
                               what="modules (sequential_targets)")
        names = [n for n, _ in found]
        # a block inside another block is run as part of it
        outer = [(n, m) for n, m in found
                 if not any(n != o and n.startswith(o + ".") for o in names)]
        return outer
    if isinstance(model, nn.Sequential):
        return [(n, m) for n, m in model.named_children()]
    best = None
    for n, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and (best is None or len(m) > len(best[1])):
            best = (n, m)
    if best is None:
        return [("", model)]
    return [(_join(best[0], str(i)), m) for i, m in enumerate(best[1])]


def _detach(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, tuple):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, list):
        return [_detach(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def block_inputs(model, block, batches, *, block_name="the first block") -> list:
    """[(args, kwargs)] the block receives for each batch (the forward stops there)."""
    store = []

    def hook(mod, args, kwargs):
        store.append((_detach(tuple(args)), _detach(dict(kwargs))))
        raise _Stop

    if block is model:
        out = []
        for b in batches:
            if isinstance(b, dict):
                out.append(((), dict(b)))
            elif isinstance(b, (tuple, list)):
                out.append((tuple(b), {}))
            else:
                out.append(((b,), {}))
        if not out:
            raise ArgumentError("batches: is empty")
        return out
    h = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        n = 0
        for b in batches:
            n += 1
            try:
                run_batch(model, b)
            except _Stop:
                continue
            raise ArgumentError(f"batches: the model's forward never reached {block_name}")
        if not n:
            raise ArgumentError("batches: is empty")
    finally:
        h.remove()
    return store


def call_block(block, inp, params=None):
    """Run ``block`` on one stored (args, kwargs); ``params`` ({local name: tensor})
    substitute the block's own for this call only."""
    args, kwargs = inp
    if params:
        return torch.func.functional_call(block, params, args, kwargs)
    return block(*args, **kwargs)


def next_inputs(inp, out):
    """The next block's (args, kwargs): this block's output replaces the first argument."""
    args, kwargs = inp
    h = out[0] if isinstance(out, (tuple, list)) else out
    h = h.detach()
    if args:
        return (h,) + tuple(args[1:]), kwargs
    key = next(iter(kwargs))  # the first keyword carried the hidden state
    kw = dict(kwargs)
    kw[key] = h
    return (), kw
