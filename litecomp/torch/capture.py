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
           "next_inputs", "run_batch", "hidden", "stack_inputs", "unstack_inputs",
           "stacks_batches"]

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


def hidden(inp):
    """The hidden state in a stored (args, kwargs): the first positional argument, else the
    first keyword argument (None when that is not a tensor)."""
    args, kwargs = inp
    h = args[0] if args else next(iter(kwargs.values()), None)
    return h if isinstance(h, torch.Tensor) else None


def _output(out):
    h = out[0] if isinstance(out, (tuple, list)) else out
    return h.detach()


def _with_hidden(inp, h):
    args, kwargs = inp
    if args:
        return (h,) + tuple(args[1:]), kwargs
    key = next(iter(kwargs))  # the first keyword carried the hidden state
    kw = dict(kwargs)
    kw[key] = h
    return (), kw


def next_inputs(inp, out):
    """The next block's (args, kwargs): this block's output replaces the first argument."""
    return _with_hidden(inp, _output(out))


# ------------------------------------------------------------------ stacking batches
def _same(a, b) -> bool:
    """``a`` and ``b`` are the same input: equal tensors (shape, dtype, device, values),
    containers of such, or equal plain values."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
                and bool(torch.equal(a, b)))
    if isinstance(a, (tuple, list)) and type(a) is type(b):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an object without a plain equality: not known to be the same
        return False


def _rest(inp):
    """(args, kwargs) without the hidden state."""
    args, kwargs = inp
    if args:
        return tuple(args[1:]), kwargs
    return (), dict(list(kwargs.items())[1:])


def stack_inputs(inps, per_call_bytes, row_bytes) -> tuple:
    """(stacked, sizes): runs of consecutive stored inputs whose hidden states differ only
    along dim 0 (same trailing shape, dtype and device) and whose other arguments are the
    same, each run joined into one input by concatenating the hidden states along dim 0
    -- at most ``per_call_bytes`` of ``row_bytes`` per hidden-state row (a row: one index
    of every dim but the last) per call.  ``sizes[i]``: the dim-0 sizes of what was joined
    in ``stacked[i]`` (``unstack_inputs`` undoes it).  A block whose batches are
    independent computes the same on the stack (``stacks_batches`` checks it) with larger
    matrix products.  The inputs' hidden states are copied into the stacks (the caller
    drops ``inps``)."""
    stacked, sizes = [], []
    run, run_h = [], []

    def close():
        if not run:
            return
        if len(run) == 1:
            stacked.append(run[0])
        else:
            stacked.append(_with_hidden(run[0], torch.cat(run_h, 0)))
        sizes.append([h.shape[0] if h is not None and h.ndim else None for h in run_h])
        run.clear()
        run_h.clear()

    rows = 0
    for inp in inps:
        h = hidden(inp)
        joinable = h is not None and h.ndim >= 2
        n = h[..., 0].numel() if joinable else 0
        if run and joinable and run_h[0] is not None and run_h[0].ndim >= 2:
            h0 = run_h[0]
            if (h.shape[1:] == h0.shape[1:] and h.dtype == h0.dtype
                    and h.device == h0.device and (rows + n) * row_bytes <= per_call_bytes
                    and _same(_rest(inp), _rest(run[0]))):
                run.append(inp)
                run_h.append(h)
                rows += n
                continue
        close()
        run.append(inp)
        run_h.append(h if joinable else None)
        rows = n
    close()
    return stacked, sizes


def unstack_inputs(stacked, sizes) -> list:
    """The inputs ``stack_inputs`` joined, one per original batch again (views)."""
    out = []
    for inp, sz in zip(stacked, sizes):
        if len(sz) == 1:
            out.append(inp)
            continue
        for part in torch.split(hidden(inp), sz, 0):
            out.append(_with_hidden(inp, part))
    return out


#: How closely a block's output on a stack must equal its outputs batch by batch, relative
#: to the largest output: the matrix products differ only in rounding (measured 1e-7);
#: a block that mixes batches differs by the size of its outputs.
STACK_RTOL = 1e-4


def stacks_batches(block, inp, sizes) -> bool:
    """Whether ``block`` computes on the stacked input ``inp`` (of ``sizes``) what it
    computes on its first two batches one at a time: run on the first two as a stack and
    one by one (a transformer block in eval mode does; a sequence-first attention, which
    would join the batches' sequences, does not)."""
    if len(sizes) < 2:
        return True
    sz = sizes
    h = hidden(inp)
    two = h[:sz[0] + sz[1]]
    a, b = h[:sz[0]], h[sz[0]:sz[0] + sz[1]]
    both = _output(call_block(block, _with_hidden(inp, two)))
    one = torch.cat([_output(call_block(block, _with_hidden(inp, a))),
                     _output(call_block(block, _with_hidden(inp, b)))], 0)
    if both.shape != one.shape or not torch.isfinite(one).all():
        return False
    scale = float(one.abs().max())
    return float((both - one).abs().max()) <= STACK_RTOL * scale
