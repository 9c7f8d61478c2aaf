"""``oneshot(model, recipe, batches)``: calibrated compression of a torch model, block by
block, as llm-compressor's sequential pipeline does it.

For each block (``capture.find_blocks``): run it on its inputs with hooks that accumulate,
per target layer, the Hessian of its input (and mean |x|, max |x| and a token sample when an
AWQ / SmoothQuant stage needs them); compress every target of the block (smoothing stages
first, then pruning, then quantization, in recipe order); run the block again *with the
compressed weights* to get the next block's inputs.  So block i is calibrated on the outputs
of blocks 0..i-1 already compressed, and only one block's inputs are held at a time.
Layers outside every block (an LM head) are calibrated last, by one more forward pass of the
model with everything before them compressed.

Nothing in the model changes until every layer is done: the compressed values are new
tensors, the blocks run through ``torch.func.functional_call``, and the swap into the
model's parameters happens at the end.  An exception part-way leaves the model as it was.
"""

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..calib.apply import LayerReport, Source, compress_tensor
from ..calib.hessian import Hessian
from .._runtime import release_memory, threads
from ..errors import ArgumentError
from ..recipe import Stage, stages
from . import capture as cap
from .lockstep import LockstepError

__all__ = ["oneshot", "OneshotResult"]


@dataclass
class OneshotResult:
    """``state_dict``: the model's tensors in litecomp's form (QTensor parts for quantized
    weights, dense pruned floats, everything else as is), ready for ``litecomp.save``; its
    dense entries are NumPy views of the (updated) model's tensors, not copies;
    ``report``: a LayerReport per compressed weight and stage; ``hessians``: {layer key:
    Hessian} when ``keep_hessians=True``."""
    state_dict: dict
    report: list
    hessians: dict = field(default_factory=dict)

    def table(self) -> str:
        from .._table import render_table
        rows = [[r.name, r.method, f"{r.sparsity:.3f}", "" if r.bits is None else str(r.bits),
                 "" if r.baseline_error is None else f"{r.baseline_error:.3e}",
                 f"{r.error:.3e}", r.note] for r in self.report]
        return render_table(["layer", "method", "sparsity", "bits", "baseline error",
                             "error", "note"], rows,
                            align=["<", "<", ">", ">", ">", ">", "<"])


def _row_panels(n):
    """The row panels of a Hessian sum: each is added as panel x (its rows and every column
    up to its end) -- the lower triangle and the diagonal blocks.  Panels of about 320 rows
    (measured with 128-token batches: 0.83x the full x^T x's time at width 512, 0.64x at
    1536, 0.61x at 2048, 0.63x at 5632; wider panels gain less, narrower GEMMs slow)."""
    nb = max(1, round(n / 320))
    bs = -(-n // nb)
    return [(r0, min(r0 + bs, n)) for r0 in range(0, n, bs)]


class _Acc:
    """A running sum of x^T x (float32, by torch's addmm where the activations are: the
    NumPy/BLAS thread pool never wakes between the model's own ops) and its token count,
    shared by the taps that see one tensor (q/k/v_proj, gate/up_proj).  Only the row
    panels' lower part is summed (``_row_panels``); ``full_sum()`` fills in the rest by
    symmetry when the sum is read."""

    def __init__(self, features):
        self.features = features
        self.sum = None
        self.count = 0
        self.last = None   # (call number, key) of the last tensor added
        self.x = None      # that tensor, during its call (split needs it)
        self._h = None
        self._src = None
        self._full = False
        self._panels = _row_panels(features)

    def took(self, call):
        """The key of the tensor added during call ``call``, or None."""
        return self.last[1] if self.last is not None and self.last[0] == call else None

    def _addmm(self, a, alpha=1):
        for r0, r1 in self._panels:
            self.sum[r0:r1, :r1].addmm_(a[:, r0:r1].T, a[:, :r1], alpha=alpha)
        self._full = False

    def add(self, x, call, key):
        a = _tokens(x)
        if self.sum is None:
            self.sum = torch.zeros((self.features,) * 2, dtype=a.dtype, device=a.device)
        self._addmm(a)
        if not bool(torch.isfinite(torch.diagonal(self.sum)).all()):
            from ..errors import NonFiniteError
            raise NonFiniteError("x: contains NaN or inf (or values whose square "
                                 "overflows float32)")
        self.count += a.shape[0]
        self.last, self.x = (call, key), x
        self._h = self._src = None

    def full_sum(self):
        """The sum, symmetric (the upper part copied from the lower), or None."""
        if self.sum is not None and not self._full:
            for r0, r1 in self._panels:
                self.sum[r0:r1, r1:] = self.sum[r1:, r0:r1].T
            self._full = True
        return self.sum

    def split(self, call):
        """A copy without this call's tensor (a tap that shared it sees another one now)."""
        c = _Acc(self.features)
        if self.sum is not None:
            c.sum = self.sum.clone()
            c.count = self.count
            if self.took(call) is not None:
                c._addmm(_tokens(self.x), alpha=-1)
                c.count -= self.x.numel() // self.features
        return c

    @property
    def h(self) -> Hessian:
        if self._h is None:
            self._h = _AccHessian(self)
        return self._h

    @property
    def source(self) -> Source:
        """The Hessian as compression reads it (its factor made once for all its taps)."""
        if self._src is None:
            self._src = Source(self.h)
        return self._src

    def release(self):
        """Drop the sum and what was made from it (the last weight it feeds is done)."""
        self.sum = self.x = self._h = self._src = None


class _AccHessian(Hessian):
    """The ``Hessian`` of an ``_Acc``, read from its float32 sum: ``matrix`` is made in
    float32 directly (no float64 copy of the sum on the way); ``sum`` (float64) is made
    when asked for."""

    def __init__(self, acc):  # no super().__init__: no zero float64 sum
        self.features = acc.features
        self.count = acc.count
        self._src = acc.full_sum()
        self._sum = None
        self._acc = acc
        self._taken = False

    @property
    def sum(self):
        if self._taken:
            raise RuntimeError("litecomp internal error: a consumed Hessian was read")
        if self._sum is None:
            self._sum = np.zeros((self.features,) * 2, np.float64) if self._src is None \
                else self._src.double().cpu().numpy()
        return self._sum

    @sum.setter
    def sum(self, value):
        self._sum, self._src = value, None

    def product_matrix(self):
        """(M, scale) with scale * M = the float32 matrix, M a view of the sum: for
        products with H, no copy."""
        if self._taken or self._sum is not None or self._src is None or not self.count or \
                self._src.dtype != torch.float32:
            return self.matrix, 1.0
        return self._src.cpu().numpy(), 2.0 / self.count

    @property
    def mean_sq(self):
        if self._taken or self._sum is not None or self._src is None:
            return super().mean_sq
        d = torch.diagonal(self._src).double().cpu().numpy()
        return d / self.count if self.count else np.zeros(self.features)

    def take_matrix(self):
        """The float32 matrix made in the sum's own memory (scaled in place): the sum is
        gone after this (``Source.consumable``)."""
        if self._sum is not None or self._src is None or not self.count or \
                self._src.dtype != torch.float32:
            return self.matrix
        t, self._src, self._taken = self._src, None, True
        self._acc.sum = None  # the accumulator no longer holds a sum
        t.mul_(2.0 / self.count)
        return t.numpy()

    def as_matrix(self, dtype=np.float32):
        if self._taken or self._sum is not None or self._src is None or not self.count or \
                np.dtype(dtype) != np.float32:
            return super().as_matrix(dtype)
        m = (self._src * (2.0 / self.count)).cpu().numpy()
        return m if m.dtype == np.float32 else m.astype(np.float32)


class _Stats:
    """What one tap accumulates: its x^T x (an ``_Acc``, maybe shared) and, for AWQ /
    SmoothQuant, mean |x|, max |x| and a token sample."""

    def __init__(self, features, need_x):
        self.features = features
        self.acc = _Acc(features)
        self.need_x = need_x
        self.abs_sum = np.zeros(features, np.float64) if need_x else None
        self.abs_max = np.zeros(features, np.float32) if need_x else None
        self.samples = []
        self.n_samples = 0
        self.out_sq = 0.0   # sum of ||W x||^2 over the layer's outputs (``_collect``)
        self.out_calls = 0  # calls whose output was seen
        self.calls = -1     # calls of the calibration pass (``_collect`` sets it)

    def update_x(self, x):
        if not self.need_x:
            return
        from . import to_numpy
        a32 = np.asarray(to_numpy(_tokens(x).cpu()), np.float32)
        self.abs_sum += np.abs(a32).sum(axis=0, dtype=np.float64)
        np.maximum(self.abs_max, np.abs(a32).max(axis=0), out=self.abs_max)
        if self.n_samples < 4096:
            step = max(1, a32.shape[0] // 512)
            take = a32[::step][:4096 - self.n_samples]
            self.samples.append(take.copy())
            self.n_samples += take.shape[0]

    @property
    def count(self):
        return self.acc.count

    def output_energy(self, calls):
        """tr(W H W^T) = 2/n * sum ||W x||^2 from the layer's outputs in the calibration
        pass, when it saw every call's (the forward of the last layer of a block is
        skipped); else None."""
        if self.out_calls != calls or not self.count:
            return None
        return 2.0 * self.out_sq / self.count

    @property
    def h(self) -> Hessian:
        """The litecomp Hessian of everything seen so far."""
        return self.acc.h

    @property
    def x(self):
        return np.concatenate(self.samples) if self.samples else None


def _tokens(x):
    """[..., features] -> a contiguous [tokens, features] float32/float64 tensor."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x.reshape(-1, x.shape[-1]).contiguous()


class _Spill:
    """Arrays written to an unnamed temporary file (``tempfile.TemporaryFile``: no name on
    disk, gone when closed or when the process ends, however it ends) and read back on
    demand.  Written with ``write`` and read with ``readinto``: the data waits in the
    kernel's page cache (written back to disk and dropped under memory pressure), not in
    the process.  A failed write (a full disk) turns it off: the values stay in memory."""

    def __init__(self, folder):
        import tempfile
        self._f = tempfile.TemporaryFile(dir=folder)
        self._end = 0
        self.failed = False

    def put(self, a):
        """A reference to a copy of ``a`` in the file, or ``a`` itself if writing fails."""
        if self.failed or a.nbytes == 0:
            return a
        raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        try:
            self._f.seek(self._end)
            self._f.write(memoryview(raw))
            self._f.flush()
        except OSError:
            self.failed = True
            return a
        ref = _Spilled(self, self._end, a.dtype, a.shape)
        self._end += a.nbytes
        return ref

    def read(self, ref):
        out = np.empty(ref.shape, ref.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        self._f.seek(ref.offset)
        got = 0
        while got < len(view):
            n = self._f.readinto(view[got:])
            if not n:
                raise OSError("litecomp internal error: the spill file is shorter than "
                              "what was written to it")
            got += n
        return out

    def close(self):
        self._f.close()


@dataclass(frozen=True)
class _Spilled:
    spill: _Spill
    offset: int
    dtype: np.dtype
    shape: tuple


class _Values:
    """{param name: new float32 value} of the compressed parameters, held compactly until
    the swap: a quantized weight as its QTensor (dequantized when read), a pruned one in
    ``litecomp.sparse``'s sparse-bitmask form (nonzero values, a bit mask per row) when
    that is smaller -- so the pipeline's extra memory is about the compressed model, not
    a second float copy of it.  With a ``_Spill``, ``settle()`` also moves the float
    arrays (the bitmask form, dense values) to a temporary file there (``_Spill``): the
    extra memory is then the block at hand and the quantized codes.  Reading gives a
    fresh float32 array."""

    def __init__(self, spill=None):
        self._store = {}
        self._held = None  # names set since hold_dense(): kept as given until settle()
        self._spill = spill  # a _Spill, or None

    def close(self):
        if self._spill is not None:
            self._spill.close()

    def __contains__(self, p):
        return p in self._store

    def discard(self, p):
        self._store.pop(p, None)

    def hold_dense(self):
        """Values set from now until ``settle()`` are kept as given: the block about to be
        propagated reads them as they are (``view``), with no encoded form beside its
        decoded copy (measured 7 MB less at the small LLaMA's propagation peak)."""
        self._held = set()

    def settle(self):
        """Hold what was set since ``hold_dense()`` compactly, as every other value, and
        move every float value held in memory to the spill file (if there is one): the
        block's values are final."""
        held, self._held = self._held or (), None
        for p in list(self._store):  # one value at a time: one encoded copy in flight
            if p in held and self._store[p][0] == "dense":
                self[p] = self._store[p][1]
            kind, *rest = self._store[p]
            if kind in ("dense", "sparse") and self._spill is not None and \
                    not self._spill.failed:
                self._store[p] = (kind,) + tuple(
                    self._spill.put(x) if isinstance(x, np.ndarray) else x for x in rest)

    def _resident(self, p):
        """The store entry of ``p`` with its spilled arrays read back."""
        kind, *rest = self._store[p]
        return (kind,) + tuple(x.spill.read(x) if isinstance(x, _Spilled) else x
                               for x in rest)

    def view(self, p):
        """The value for reading only: the held array itself where it is dense, else a
        fresh one as ``self[p]``."""
        kind, *rest = self._store[p]
        if kind == "dense" and isinstance(rest[0], np.ndarray):
            return rest[0]
        return self[p]

    def __iter__(self):
        return iter(list(self._store))

    def __len__(self):
        return len(self._store)

    def __setitem__(self, p, v):
        from ..sparse import _bitmask_encode, _dense_is_smaller
        v = np.ascontiguousarray(v, np.float32)
        if self._held is not None:
            self._store[p] = ("dense", v)
            self._held.add(p)
        elif v.ndim and v.size and not _dense_is_smaller(v):  # pruned: the bitmask form
            self._store[p] = ("sparse", v.shape) + _bitmask_encode(v)
        else:
            self._store[p] = ("dense", v)

    def set_quantized(self, p, q):
        """The value is ``q.dequantize()``: keep only the QTensor."""
        self._store[p] = ("q", q)

    def __getitem__(self, p):
        kind, *rest = self._store[p]
        if kind == "dense":
            return rest[0].copy() if isinstance(rest[0], np.ndarray) else \
                rest[0].spill.read(rest[0])
        if kind == "q":
            return np.asarray(rest[0].dequantize(), np.float32)
        from ..sparse import _bitmask_decode
        shape, compressed, bitmask, offsets = self._resident(p)[1:]
        return _bitmask_decode(p, np.asarray(shape, np.int64), compressed, bitmask, offsets)

    def get(self, p, default=None):
        return self[p] if p in self._store else default

    def shape(self, p) -> tuple:
        kind, *rest = self._store[p]
        return tuple(rest[0].shape if kind in ("dense", "q") else rest[0])


# ------------------------------------------------------------------ recipe -> layers
_DEFAULT = (nn.Linear, nn.MultiheadAttention)


def _stage_modules(model, st):
    from .select import select_modules
    cand = (nn.Linear, nn.MultiheadAttention) if st.calibrated else \
        (nn.Linear, nn.MultiheadAttention, nn.Embedding)
    return select_modules(model, st.targets, st.ignore, default=_DEFAULT,
                          candidates=lambda n, m: isinstance(m, cand),
                          what="Linear / MultiheadAttention modules")


def _plan(model, plan):
    """{param name: [(stage, [taps of that param])]} in recipe order, and all taps."""
    by_param, taps = {}, {}
    for st in plan:
        mods = _stage_modules(model, st)
        emb = [(n, m) for n, m in mods if isinstance(m, nn.Embedding)]
        lin = [(n, m) for n, m in mods if not isinstance(m, nn.Embedding)]
        for t in cap.taps_for(model, lin):
            taps.setdefault(t.key, t)
            entry = by_param.setdefault(t.param, [])
            if entry and entry[-1][0] is st:
                entry[-1][1].append(t)
            else:
                entry.append((st, [t]))
        for n, _m in emb:
            by_param.setdefault(f"{n}.weight", []).append((st, []))
    for p, entries in by_param.items():
        fams = [s.family for s, _ in entries]
        for fam in ("prune", "quant", "smooth"):
            if fams.count(fam) > 1:
                raise ArgumentError(f"recipe: {p!r} is selected by {fams.count(fam)} {fam} "
                                    "stages; a weight takes at most one of each kind")
    return by_param, taps


def _block_of(name, blocks):
    for i, (bn, _b) in enumerate(blocks):
        if bn == "" or name == bn or name.startswith(bn + "."):
            return i
    return None


# ------------------------------------------------------------------ smoothing (AWQ, SQ)
@dataclass
class _Fold:
    """Where 1/s goes: a norm's weight (and bias), or rows of a Linear / packed weight."""
    kind: str            # "norm" | "rows"
    weight: str          # param name
    bias: str = ""       # param name or ""
    rows: tuple = None   # (start, stop) for "rows"


def _parent(name):
    return name.rpartition(".")[0]


def _producer(tap, modules):
    """(_Fold, None) for the op that produces ``tap``'s input alone, or (None, reason)."""
    name = tap.module_name
    mods = modules
    if tap.kind == "attn":  # out_proj <- the value rows of the same attention
        mha = mods[name]
        if mha._qkv_same_embed_dim:
            e = mha.embed_dim
            return _Fold("rows", f"{name}.in_proj_weight",
                         f"{name}.in_proj_bias" if mha.in_proj_bias is not None else "",
                         (2 * e, 3 * e)), None
        return _Fold("rows", f"{name}.v_proj_weight",
                     f"{name}.in_proj_bias" if mha.in_proj_bias is not None else "",
                     None), None
    leaf = name.rpartition(".")[2]
    parent = _parent(name)
    grand = _parent(parent)

    def norm(n):
        m = mods.get(n)
        if m is not None and hasattr(m, "weight") and isinstance(m.weight, torch.Tensor) \
                and m.weight.ndim == 1 and not isinstance(m, (nn.Linear, nn.Embedding)):
            bias = getattr(m, "bias", None)
            return _Fold("norm", f"{n}.weight", f"{n}.bias" if bias is not None else "")
        return None

    hf = {"q_proj": "input_layernorm", "k_proj": "input_layernorm",
          "v_proj": "input_layernorm", "gate_proj": "post_attention_layernorm",
          "up_proj": "post_attention_layernorm"}
    if tap.kind == "input" and leaf in hf:
        f = norm(cap._join(grand, hf[leaf]))
        if f is not None:
            return f, None
    pairs = {"o_proj": "v_proj", "down_proj": "up_proj"}
    if tap.kind == "input" and leaf in pairs:
        prev = mods.get(cap._join(parent, pairs[leaf]))
        if isinstance(prev, nn.Linear) and prev.out_features == mods[name].in_features:
            return _Fold("rows", f"{cap._join(parent, pairs[leaf])}.weight",
                         f"{cap._join(parent, pairs[leaf])}.bias" if prev.bias is not None
                         else ""), None
    own = mods.get(parent)
    if tap.kind == "input" and isinstance(own, (nn.TransformerEncoderLayer,
                                                nn.TransformerDecoderLayer)) \
            and leaf == "linear2":
        act = getattr(own, "activation", None)
        if act is torch.nn.functional.relu or isinstance(act, nn.ReLU):
            return _Fold("rows", f"{parent}.linear1.weight",
                         f"{parent}.linear1.bias" if own.linear1.bias is not None else ""), None
        return None, "linear1 -> activation -> linear2 with a non-ReLU activation"
    if tap.kind == "input" and isinstance(own, nn.Sequential):
        kids = list(own.named_children())
        idx = [n for n, _ in kids].index(leaf)
        j = idx - 1
        while j >= 0 and isinstance(kids[j][1], (nn.ReLU, nn.Identity, nn.Dropout)):
            j -= 1
        if j >= 0 and isinstance(kids[j][1], nn.Linear):
            pn = cap._join(parent, kids[j][0])
            return _Fold("rows", f"{pn}.weight",
                         f"{pn}.bias" if kids[j][1].bias is not None else ""), None
    return None, ("no preceding op it can be folded into (a norm feeding only this "
                  "layer, or a Linear through ReLU); give the stage `mappings`")


def _mapped_producer(mappings, tap, params):
    """A producer from explicit llm-compressor-style ``mappings``:
    [[smooth_layer_pattern, [balance_layer_patterns]], ...]."""
    from ..select import Selector
    for m in mappings or ():
        if not isinstance(m, (list, tuple)) or len(m) != 2:
            raise ArgumentError("mappings: expected [[smooth_layer, [balance_layers]], ...]")
        smooth, balance = m
        if Selector(balance)(tap.module_name) or Selector(balance)(tap.key):
            names = [p for p in params if p.endswith(".weight")]
            hits = [p[:-7] for p in names if Selector(smooth)(p[:-7])]
            if len(hits) != 1:
                raise ArgumentError(f"mappings: {smooth!r} matches {len(hits)} layers for "
                                    f"{tap.key!r}; expected one")
            b = hits[0] + ".bias"
            kind = "rows" if params[hits[0] + ".weight"].ndim == 2 else "norm"
            return _Fold(kind, hits[0] + ".weight", b if b in params else "")
    return None


# ------------------------------------------------------------------ the pipeline
def _np(t):
    from . import to_numpy
    return np.array(to_numpy(t.detach()), np.float32)


def _bar(total, progress, desc):
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="block", leave=False,
                delay=0 if progress else 1.0)


def oneshot(model: nn.Module, recipe, batches, *, sequential_targets=None, progress=None,
            keep_hessians=False, baselines=False, true_sequential=None,
            spill=True) -> OneshotResult:
    """Compress ``model`` with ``recipe`` calibrated on ``batches``; returns an
    ``OneshotResult`` and updates the model's weights in place (at the end, all at once).

    recipe: stages (``litecomp.recipe``; gptq, sparsegpt, wanda, awq, smoothquant and the
    data-free rtn, magnitude, ...) or a .json/.yaml file; a stage without targets takes
    every ``nn.Linear`` and every ``nn.MultiheadAttention`` projection.  batches: an
    iterable (read once) of model inputs -- a tensor, a tuple of positional arguments or a
    dict of keyword arguments.  sequential_targets: the blocks (see
    ``capture.find_blocks``).  progress: a bar per block (None: when it takes a moment).
    baselines: each report also has the error of the data-free counterpart (rtn /
    magnitude per row at the same setting) -- one more product with each Hessian per
    weight, about a sixth of the time on TinyLlama-sized layers.
    true_sequential: within a block, each layer's Hessian is taken on the outputs of the
    block's earlier layers already compressed (GPTQ's true-sequential order), and the
    block is calibrated, compressed and propagated in one forward pass instead of two
    (``_one_pass``; it holds every batch's activations inside the block at once).  None:
    when that is at most ``ONE_PASS_FRACTION`` (1/4) of the model's size; False:
    llm-compressor's order (every Hessian of a block from the uncompressed block, then a
    second pass).  Blocks with a
    MultiheadAttention or a smoothing stage always take two passes.
    spill: where the compressed float values of the blocks already done wait for the swap
    -- an unnamed temporary file in ``tempfile.gettempdir()`` (True), in the folder given,
    or in memory (False).  Pruned weights are half the model's float size even in their
    sparse form; in the file they leave the process (the page cache holds them until the
    kernel writes them out), so the extra memory is the block at hand.  Quantized weights
    stay in memory as their codes.  A write that fails (a full disk) keeps the values in
    memory; the result is the same either way.
    """
    plan = stages(recipe)
    by_param, taps = _plan(model, plan)
    if not by_param:
        raise ArgumentError("recipe: selects no layer of the model")
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    blocks = cap.find_blocks(model, sequential_targets)
    batches = list(batches)
    if not batches:
        raise ArgumentError("batches: is empty")
    nblocks = len(blocks)
    in_block = {}
    for t in taps.values():
        in_block.setdefault(_block_of(t.module_name, blocks), []).append(t)
    for p, entries in by_param.items():
        if not entries[0][1]:  # embeddings: data-free, handled with the tail
            in_block.setdefault(None, [])
    new = _Values(_spill_for(spill))  # param name -> new float32 value (held compactly)
    compact = {}     # param name -> QTensor (quantized weights)
    report = []
    hessians = {}
    run = _Run(model, by_param, params, modules, new, compact, report,
               hessians if keep_hessians else None, bool(baselines))
    was_training = model.training
    model.eval()
    cache_was = _disable_kv_cache(model)
    bar = _bar(nblocks + (1 if None in in_block else 0), progress, "oneshot")
    try:
        with torch.no_grad():
            first = blocks[0][1]
            inps = cap.block_inputs(model, first, batches, block_name=blocks[0][0] or "model")
            inps, sizes = _stacked(run, inps, taps)
            checked = {}  # block class -> whether it computes the same on a stack
            # layers after the blocks (an LM head) are calibrated on the last block's
            # outputs, kept from its propagation (``_tail``)
            tail_calibrated = bool(in_block.get(None))
            last_outs = None
            for bi, (bname, block) in enumerate(blocks):
                btaps = in_block.get(bi, [])
                if sizes is not None:
                    if type(block) not in checked:
                        i0 = next(i for i, sz in enumerate(sizes) if len(sz) > 1)
                        checked[type(block)] = cap.stacks_batches(block, inps[i0], sizes[i0])
                    if not checked[type(block)]:
                        inps, sizes = cap.unstack_inputs(inps, sizes), None
                groups = _one_pass_groups(run, block, bname, inps, btaps, true_sequential)
                if groups is not None:
                    mark = _mark(run)
                    try:
                        outs = _one_pass(run, block, bname, inps, groups)
                    except (_Diverged, LockstepError):
                        _undo(run, mark)
                        groups = None
                last = bi + 1 == nblocks
                if groups is not None:
                    if not last:
                        for j, out in enumerate(outs):
                            inps[j] = cap.next_inputs(inps[j], out)
                            outs[j] = None
                        new.settle()
                    elif tail_calibrated:
                        last_outs = [_detach(o) for o in outs]
                    del outs
                else:  # two passes: calibrate (and compress), then propagate
                    if not last:
                        new.hold_dense()
                    if btaps:
                        _calibrate_and_compress(run, block, bname, inps, btaps,
                                                last and not tail_calibrated)
                    if not last or tail_calibrated:
                        local = _local_params(new, bname, params)
                        outs = last_outs = [] if last else None
                        for j, inp in enumerate(inps):
                            out = cap.call_block(block, inp, local)
                            if last:
                                outs.append(_detach(out))
                                inps[j] = None
                            else:
                                inps[j] = cap.next_inputs(inp, out)
                        del local, out
                        release_memory()  # the forward's heap, before the values' encoding
                        new.settle()
                release_memory()
                if bar is not None:
                    bar.update(1)
            del inps
            if None in in_block:
                _tail(run, batches, in_block[None], blocks, last_outs, sizes)
                del last_outs
                if bar is not None:
                    bar.update(1)
        _swap(params, new)
        sd = _result_state_dict(model, new, compact)
    finally:
        new.close()
        if bar is not None:
            bar.close()
        model.train(was_training)
        _restore_kv_cache(model, cache_was)
    return OneshotResult(sd, report, hessians)


def _spill_for(spill):
    """oneshot's ``_Spill`` file, or None (values held in memory)."""
    import os
    if spill is False or spill is None:
        return None
    if spill is True:
        try:
            return _Spill(None)
        except OSError:  # no usable temporary folder: in memory, the same result
            return None
    if not isinstance(spill, (str, os.PathLike)):
        raise ArgumentError(f"spill: expected True, False or a folder, got {spill!r}")
    if not os.path.isdir(spill):
        raise ArgumentError(f"spill: {os.fspath(spill)!r} is not a folder")
    try:
        return _Spill(os.fspath(spill))
    except OSError as e:
        raise ArgumentError(f"spill: cannot make a temporary file in "
                            f"{os.fspath(spill)!r} ({e.strerror or e})") from None


def _disable_kv_cache(model):
    """Hugging Face models keep a key/value cache when ``config.use_cache`` is on: the
    cache object reaches every block through the stored keyword arguments, and each block
    call would append its keys and values to it -- a block run twice on the same batch
    (calibrate, then propagate) would attend to the first run's keys too.  Turned off for
    the run (as llm-compressor does); returns the old setting for ``_restore_kv_cache``."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "use_cache"):
        return None
    old = cfg.use_cache
    cfg.use_cache = False
    return (old,)


def _restore_kv_cache(model, was):
    if was is not None:
        model.config.use_cache = was[0]


def _local_params(new, prefix, params):
    """{name relative to the block: torch tensor} of the block's compressed parameters."""
    out = {}
    for p in new:
        if prefix == "" or p.startswith(prefix + "."):
            local = p[len(prefix) + 1:] if prefix else p
            t = params[p]
            out[local] = torch.from_numpy(new.view(p)).to(dtype=t.dtype, device=t.device)
    return out


def _collect(module, prefix, taps, inps, need_x, call):
    """Run ``call(inp)`` for every stored input with hooks on ``taps``; {key: _Stats}."""
    stats = {t.key: _Stats(t.features, t.key in need_x) for t in taps}
    rel = _relative(taps, prefix)

    # Taps fed one tensor (q/k/v_proj, gate/up_proj) share one accumulator: joined when
    # they see the same tensor in the first call, split again if they ever do not.
    seen = {}    # this call: key -> the accumulator that took that tensor
    call_no = [0]
    # The call's output is not needed, only what the taps see: once every tap has fired
    # (each exactly once per call, as the first call showed) the rest of the forward is
    # skipped -- in a transformer block, the last projection and what follows it.
    fired = {}
    stop_early = [False]

    def observe(tap, x):
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x._version)
        st = stats[tap.key]
        acc = st.acc
        got = seen.get(key)
        took = acc.took(call_no[0])
        if call_no[0] == 0 and got is not None and got is not acc and acc.count == 0:
            st.acc = acc = got   # first call: join the tap that took this tensor
            took = key
        elif took is not None and took != key:
            st.acc = acc = acc.split(call_no[0])   # shared, but this tap sees another
            took = None
        if took is None:
            acc.add(x, call_no[0], key)
            seen[key] = acc
        st.update_x(x)
        fired[tap.key] = fired.get(tap.key, 0) + 1
        if stop_early[0] and len(fired) == len(stats):
            raise cap._Stop

    # The output energies tr(W H W^T) the report divides by, from the Linear layers'
    # outputs of this same pass (no product with H; the layer's own weight and bias, so
    # only where a plain Linear computes the output)
    mods = dict(module.named_modules())
    out_hooks = []
    for t in rel:
        mod = mods.get(t.module_name)
        if t.kind == "input" and type(mod) is nn.Linear:
            def out_hook(m, _inp, y, st=stats[t.key]):
                e = y.detach()
                if m.bias is not None:
                    e = e - m.bias
                # per-row float32 dots summed in float64 (4x faster than a float64 sum of
                # squares, measured 2e-9 relative to it)
                st.out_sq += float(torch.linalg.vecdot(e, e).double().sum())
                st.out_calls += 1
            out_hooks.append(mod.register_forward_hook(out_hook))
    with contextlib.ExitStack() as stack, cap.Capture(module, rel, observe):
        stack.callback(lambda: [h.remove() for h in out_hooks])
        for i, inp in enumerate(inps):
            call_no[0] = i
            try:
                call(inp)
            except cap._Stop:
                pass
            seen.clear()
            for st in stats.values():   # drop the call's tensors (they hold memory)
                st.acc.x = None
            if i == 0:
                stop_early[0] = len(fired) == len(stats) and \
                    all(c == 1 for c in fired.values()) and \
                    _skip_pays(mods, rel, list(fired), stats, len(inps))
            fired.clear()
    for st in stats.values():
        st.calls = len(inps)
    if stop_early[0]:
        _skipped_energies(mods, rel, stats, len(inps))
    return stats


def _skip_pays(mods, taps, order, stats, calls) -> bool:
    """Whether skipping the rest of the forward once the last tap has fired costs less
    than what it then takes: the skipped layer's output energy tr(W S W^T) from its
    Hessian sum S is out*in^2 multiply-adds, its product with the inputs tokens*in*out.
    So it pays when the calibration has more tokens than the layer has inputs (4,096
    tokens into the small LLaMA's 1536-wide down_proj; not into TinyLlama's 5632)."""
    last = next((t for t in taps if t.key == order[-1]), None)
    mod = mods.get(last.module_name) if last is not None else None
    if last is None or last.kind != "input" or type(mod) is not nn.Linear:
        return True  # nothing computed from the skipped layer's outputs
    tokens = stats[last.key].acc.count * calls  # about: the first call's count per call
    return tokens > last.features


def _skipped_energies(mods, taps, stats, calls):
    """The output energies of the Linear layers whose forward was skipped, from their
    Hessian sums S (= sum x^T x over the calls) on torch's threads: sum ||W x||^2 =
    tr(W S W^T), 256 rows of W at a time."""
    for t in taps:
        st = stats[t.key]
        mod = mods.get(t.module_name)
        if t.kind != "input" or type(mod) is not nn.Linear or st.out_calls == calls or \
                st.acc.sum is None:
            continue
        S = st.acc.full_sum()
        w = mod.weight.detach().to(S.dtype)
        total = 0.0
        for r0 in range(0, w.shape[0], 256):
            wr = w[r0:r0 + 256]
            total += float(torch.linalg.vecdot(wr @ S, wr).double().sum())
        st.out_sq, st.out_calls = total, calls


@dataclass
class _Run:
    """What every step of one oneshot call shares."""
    model: nn.Module
    by_param: dict
    params: dict
    modules: dict
    new: "_Values"
    compact: dict              # param -> QTensor (quantized weights)
    report: list
    hessians: Optional[dict]   # {key: Hessian} when keep_hessians, else None
    baselines: bool


#: Consecutive batches of one shape (whose other inputs are the same) run through each block
#: together, up to this many bytes of the widest target input per call: 4 batches of 128
#: tokens in the 4-layer LLaMA of width 512 (MLP 1536), where its block forward is 21%
#: faster than batch by batch (measured 224 -> 177 ms per 4,096 tokens; no gain past 4);
#: a batch of 128 tokens of TinyLlama-1.1B's MLP (5632) already exceeds it and runs alone,
#: as every larger batch does.  The extra memory is that of the widest activation of one
#: call: about this much.
STACK_BYTES = 3 << 20


def _stacked(run, inps, taps):
    """(inputs, sizes) with batches joined as ``STACK_BYTES`` allows (``cap.stack_inputs``),
    sizes None when nothing was joined.  AWQ and SmoothQuant stages keep the batches
    as given: the token sample they search on is drawn per call."""
    if any(st.method in ("awq", "smoothquant")
           for entries in run.by_param.values() for st, _ in entries) or not taps:
        return inps, None
    widest = max(t.features for t in taps.values())
    stacked, sizes = cap.stack_inputs(inps, STACK_BYTES, 4 * widest)
    if all(len(sz) == 1 for sz in sizes):
        return inps, None
    return stacked, sizes


def _calibrate_and_compress(run, block, bname, inps, btaps, last=False):
    """``last``: no block follows, so the inputs (the list ``inps``, emptied) are dropped
    before the compression."""
    need_x = {t.key for t in btaps for st, ts in run.by_param[t.param]
              if st.method in ("awq", "smoothquant") and t in ts}
    stats = _collect(block, bname, btaps, inps, need_x,
                     lambda inp: cap.call_block(block, inp))
    if last:
        inps.clear()
    release_memory()
    _compress_layers(run, btaps, stats)
    if run.hessians is not None:
        run.hessians.update({k: s.h for k, s in stats.items()})
    del stats
    release_memory()


# ------------------------------------------------------------------ one pass per block
#: One pass holds every batch's activations inside the block at once (each batch's forward
#: waits at the layer being compressed).  true_sequential=None takes it when that is at
#: most this fraction of the model's parameter bytes (``_one_pass_bytes``): peak memory
#: stays about the model's, as with two passes.
ONE_PASS_FRACTION = 0.25


def _one_pass_bytes(inps, btaps) -> int:
    """What one pass holds beyond the block's inputs, about: every token's widest target
    input plus four hidden-state copies (the residual, the normed input and an attention's
    inner states), float32 -- measured 65 MB where this says 59 (4 LLaMA blocks of width
    512, 4,096 tokens).  -1 when the inputs are not a hidden-state tensor."""
    hs = [cap.hidden(inp) for inp in inps]
    if any(h is None or h.ndim == 0 for h in hs):
        return -1
    width = hs[0].shape[-1]
    tokens = sum(h.numel() for h in hs) // max(width, 1)
    return tokens * (max(t.features for t in btaps) + 4 * width) * 4


def _one_pass_groups(run, block, bname, inps, btaps, true_sequential):
    """[[taps reading one tensor], ...] in the order the block runs them, when the block
    can be calibrated, compressed and propagated in one pass: every target a Linear
    (``MultiheadAttention`` computes q/k/v and out_proj inside one call), no smoothing
    stage (it folds scales across layers), and on the first batch every target runs
    exactly once.  Otherwise None (the two-pass path)."""
    if true_sequential is False or not btaps:
        return None
    if any(t.kind != "input" for t in btaps):
        return None
    if any(st.family == "smooth" or st.method == "awq"
           for t in btaps for st, _ in run.by_param[t.param]):
        return None
    if true_sequential is None:
        held = _one_pass_bytes(inps, btaps)
        model_bytes = sum(p.numel() * p.element_size() for p in run.params.values())
        if not 0 <= held <= ONE_PASS_FRACTION * model_bytes:
            return None
    rel = {t.key: t for t in btaps}
    fired, held = [], []

    def observe(tap, x):
        fired.append((tap.key, (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype,
                                x._version)))
        held.append(x)  # alive until the probe ends: no two inputs share an address
    with cap.Capture(block, _relative(btaps, bname), observe):
        cap.call_block(block, inps[0])
    del held
    keys = [k for k, _ in fired]
    if sorted(keys) != sorted(rel) or len(set(keys)) != len(keys):
        return None
    groups, by_tensor = [], {}
    for key, tkey in fired:
        if tkey in by_tensor:
            groups[by_tensor[tkey]].append(rel[key])
        else:
            by_tensor[tkey] = len(groups)
            groups.append([rel[key]])
    return groups


def _mark(run):
    """What ``_undo`` goes back to."""
    return set(run.new), set(run.compact), len(run.report), \
        None if run.hessians is None else set(run.hessians)


def _undo(run, mark):
    new, compact, nrep, hs = mark
    for p in [p for p in run.new if p not in new]:
        run.new.discard(p)
    for p in [p for p in run.compact if p not in compact]:
        del run.compact[p]
    del run.report[nrep:]
    if hs is not None:
        for k in [k for k in run.hessians if k not in hs]:
            del run.hessians[k]


def _relative(taps, prefix):
    return [cap.Tap(t.key, t.module_name[len(prefix) + 1:] if prefix else t.module_name,
                    t.kind, t.param, t.rows, t.features) for t in taps]


class _Diverged(Exception):
    """A later batch took another path through the block than the first (the one pass
    is abandoned, and the block takes two)."""


def _one_pass(run, block, bname, inps, groups):
    """Calibrate, compress and propagate ``block`` in one forward pass over every batch
    (``lockstep``): at the first layer of each group the batches' inputs are added to the
    group's Hessian, all of them wait, the group is compressed (its Hessian then holds the
    outputs of the block's layers before it *already compressed*: GPTQ's true-sequential
    order) and its new weights go into the block for the rest of the pass.  Returns the
    block's outputs.  The block's parameters are put back at the end, error or not; the
    model changes only in oneshot's final swap."""
    from .lockstep import Lockstep
    point = {}    # tap key -> group index (the group's first tap)
    member = {}   # tap key -> group index (its later taps)
    for gi, g in enumerate(groups):
        point[g[0].key] = gi
        for t in g[1:]:
            member[t.key] = gi
    stats = {}
    for g in groups:
        acc = _Acc(g[0].features)
        for t in g:
            stats[t.key] = _Stats(t.features, False)
            stats[t.key].acc = acc
    ls = Lockstep(len(inps))
    seen = [dict() for _ in inps]  # per batch: group -> the tensor its first tap saw

    def observe(tap, x):
        i = ls.index
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x._version)
        gi = point.get(tap.key)
        if gi is not None:
            stats[tap.key].acc.add(x, i, tap.key)
            seen[i][gi] = key
            ls.pause(gi)
        elif seen[i].get(member[tap.key]) != key:
            raise _Diverged(f"{tap.key!r} read another tensor than "
                            f"{groups[member[tap.key]][0].key!r} in batch {i}")

    modules = dict(block.named_modules())
    saved = []

    def put(p):  # the compressed value of ``p`` into the block, for the rest of the pass
        local = p[len(bname) + 1:] if bname else p
        mname, _, attr = local.rpartition(".")
        mod = modules[mname]
        old = mod._parameters[attr]
        saved.append((mod, attr, old))
        t = torch.from_numpy(run.new[p]).to(dtype=old.dtype, device=old.device)
        mod._parameters[attr] = nn.Parameter(t, requires_grad=False)

    def at_point(gi):
        g = groups[gi]
        _compress_layers(run, g, {t.key: stats[t.key] for t in g})
        if run.hessians is not None:
            run.hessians.update({t.key: stats[t.key].h for t in g})
        for p in dict.fromkeys(t.param for t in g):
            put(p)

    def work(i):
        with torch.no_grad():
            return cap.call_block(block, inps[i])

    try:
        for p in run.new:  # values this block already has (none today; kept general)
            if bname == "" or p.startswith(bname + "."):
                put(p)
        with cap.Capture(block, _relative([t for g in groups for t in g], bname), observe):
            outs = ls.run(work, at_point)
    finally:
        for mod, attr, old in reversed(saved):
            mod._parameters[attr] = old
    return outs


def _tail(run, batches, ttaps, blocks=(), last_outs=None, sizes=None):
    """The layers outside every block (an LM head; embeddings, data-free).  Their Hessians
    come from the model run on each batch with every block replaced by the last block's
    output for that batch (kept from its propagation, ``_blocks_replaced``): what runs is
    only what is outside the blocks -- no second pass through the blocks and no float
    copy of their compressed values.  A model whose forward does not call its last block
    exactly once per batch is run through all of it with the compressed values instead."""
    stats = {}
    if ttaps:
        need_x = {t.key for t in ttaps for st, ts in run.by_param[t.param]
                  if st.method in ("awq", "smoothquant") and t in ts}
        if last_outs is not None:
            outs = _per_batch(last_outs, sizes)
            del last_outs
            try:
                if not _replaced_sees_the_same(run, blocks, outs[0], batches[0], ttaps):
                    raise _NotOnce
                with _blocks_replaced(run.model, blocks, outs) as call:
                    stats = _collect(run.model, "", ttaps, batches, need_x, call)
            except _NotOnce:
                stats = None
            del outs
        if not stats:
            allnew = {p: torch.from_numpy(run.new[p]).to(dtype=run.params[p].dtype)
                      for p in run.new}
            stats = _collect(run.model, "", ttaps, batches, need_x,
                             lambda b: _call_model(run.model, allnew, b))
            del allnew
    _compress_layers(run, ttaps, stats, embeddings=True)
    if run.hessians is not None:
        run.hessians.update({k: s.h for k, s in stats.items()})


def _detach(out):
    return cap._detach(out)


def _per_batch(outs, sizes):
    """The last block's outputs, one per original batch (joined calls split again)."""
    if sizes is None:
        return outs
    got = []
    for out, sz in zip(outs, sizes):
        if len(sz) == 1:
            got.append(out)
            continue
        for part in torch.split(cap._output(out), sz, 0):
            got.append(part if isinstance(out, torch.Tensor) else
                       type(out)((part,) + tuple(out[1:])))
    return got


class _NotOnce(Exception):
    """The model's forward did not call its last block exactly once for a batch (or the
    blocks replaced do not give the layers after them what the blocks do)."""


def _tail_inputs(model, ttaps, run_it) -> dict:
    """{tap key: the first input it sees} while ``run_it()`` runs the model."""
    seen = {}

    def observe(tap, x):
        seen.setdefault(tap.key, x.clone())
    with cap.Capture(model, ttaps, observe):
        run_it()
    return seen


def _replaced_sees_the_same(run, blocks, out0, batch0, ttaps) -> bool:
    """On the first batch: do the layers after the blocks see, with the blocks replaced
    (``_blocks_replaced``), what they see when every block really runs with its compressed
    values (one block's values decoded at a time)?  No for a model that reads an earlier
    block's output after the last block (a skip connection to the head), or that runs a
    target layer between blocks.  Equal to ``capture.STACK_RTOL`` of the largest value:
    the kept outputs may come from batches joined, which changes rounding only."""
    model = run.model

    def real_blocks():
        def make(name, b):
            def real(*args, **kwargs):
                f = b.__dict__.pop("forward")
                try:
                    return cap.call_block(b, (args, kwargs),
                                          _local_params(run.new, name, run.params))
                finally:
                    b.forward = f
            return real
        with _forwards_replaced(blocks, make):
            cap.run_batch(model, batch0)

    def replaced():
        with _blocks_replaced(model, blocks, [out0]) as call:
            call(batch0)
    want = _tail_inputs(model, ttaps, real_blocks)
    got = _tail_inputs(model, ttaps, replaced)
    if want.keys() != got.keys():
        return False
    for k, w in want.items():
        g = got[k]
        if g.shape != w.shape:
            return False
        scale = float(w.abs().max()) if w.numel() else 0.0
        if w.numel() and float((g - w).abs().max()) > cap.STACK_RTOL * max(scale, 1e-30):
            return False
    return True


@contextlib.contextmanager
def _blocks_replaced(model, blocks, outs):
    """``call(batch)`` runs the model with every block's forward replaced by one that
    returns the last block's output for that batch (the i-th call: ``outs[i]``).  The
    blocks' own ``forward`` is restored on the way out, however it is left."""
    state = {"i": -1, "last": 0}
    last = blocks[-1][1]

    def stub(*args, **kwargs):
        return outs[state["i"]]

    def last_stub(*args, **kwargs):
        state["last"] += 1
        if state["last"] > 1:
            raise _NotOnce
        return outs[state["i"]]

    def call(batch):
        state["i"] += 1
        state["last"] = 0
        if state["i"] >= len(outs):
            raise _NotOnce
        try:
            cap.run_batch(model, batch)
        except cap._Stop:
            if state["last"] != 1:
                raise _NotOnce from None
            raise
        if state["last"] != 1:
            raise _NotOnce

    with _forwards_replaced(blocks, lambda _name, b: last_stub if b is last else stub):
        yield call


@contextlib.contextmanager
def _forwards_replaced(blocks, make):
    """Each block's ``forward`` replaced by ``make(name, block)`` inside; the blocks' own
    put back on the way out, however it is left."""
    saved = []
    try:
        for name, b in blocks:
            saved.append((b, b.__dict__.get("forward")))
            b.forward = make(name, b)
        yield
    finally:
        for b, f in saved:
            if f is None:
                b.__dict__.pop("forward", None)
            else:
                b.forward = f


def _call_model(model, params, batch):
    """The model on one batch with substitute parameters (the model is not modified)."""
    if isinstance(batch, dict):
        return torch.func.functional_call(model, params, (), batch)
    if isinstance(batch, (tuple, list)):
        return torch.func.functional_call(model, params, tuple(batch))
    return torch.func.functional_call(model, params, (batch,))


def _compress_layers(run, taps, stats, embeddings=False):
    """Compress every parameter these taps feed (and, for the tail, the embeddings).  An
    accumulator's sum and factor are dropped once the last weight it feeds is done
    (unless the Hessians are kept).  The report lists the weights in the block's order."""
    work = {}
    for t in taps:
        work.setdefault(t.param, None)
    if embeddings:
        for p, entries in run.by_param.items():
            if not entries[0][1]:
                work.setdefault(p, None)
    users = _users(taps, stats)
    current = _Current(work, run.new, run.params)
    # smoothing stages first: they change the layer, its producer and its input statistics
    scales = _smooth(run, taps, stats, current)
    order = list(work)
    if not scales and not embeddings:
        _let_consume(run, users)
        order = _largest_first(order, users)
    reports = {p: [] for p in work}
    done = set()
    for p in order:
        with _kernel_threads(run.params[p].numel()):
            _compress_param(run, p, stats, scales, current, reports[p])
        current.done(p)
        done.add(p)
        if run.hessians is None:
            for k, (acc, ps, _) in list(users.items()):
                if ps <= done:
                    acc.release()
                    del users[k]
    for p in work:
        run.report.extend(reports[p])


def _users(taps, stats) -> dict:
    """{id(accumulator): (accumulator, {the params it feeds}, taps reading it)}."""
    out = {}
    for t in taps:
        if t.key in stats:
            acc = stats[t.key].acc
            e = out.setdefault(id(acc), [acc, set(), 0])
            e[1].add(t.param)
            e[2] += 1
    return {k: tuple(v) for k, v in out.items()}


def _largest_first(order, users) -> list:
    """The weights whose Hessian feeds no other weight first, the widest Hessian first:
    that Hessian (in a LLaMA block, down_proj's: 5632^2 floats in TinyLlama-1.1B) is then
    freed before the others are compressed, not held to the end.  With two passes every
    Hessian is from the uncompressed block, so the order changes no result."""
    alone = {}
    for acc, ps, _ in users.values():
        if len(ps) == 1:
            p = next(iter(ps))
            alone[p] = max(alone.get(p, 0), acc.features)
    return sorted(order, key=lambda p: -alone.get(p, 0))


def _let_consume(run, users):
    """A Hessian that feeds one tap's weight, compressed by one calibrated stage (GPTQ or
    SparseGPT), is not needed once its factor exists: its Source may make the factor in
    the accumulator's own memory (``Source.consumable``) -- one n^2 float32 copy fewer at
    the moment the largest layer is compressed.  Not when the Hessians are kept."""
    if run.hessians is not None:
        return
    for acc, ps, ntaps in users.values():
        if ntaps != 1:  # (a packed in_proj_weight's q, k and v parts: one param, 3 taps)
            continue
        p = next(iter(ps))
        entries = [st for st, _ in run.by_param[p] if st.family != "smooth"]
        if len(entries) == 1 and entries[0].method in ("gptq", "sparsegpt"):
            acc.source.consumable = True


class _Current(dict):
    """{param: float32 working value} of the parameters being compressed, each made when
    first read (the latest new value, else the model's) and dropped once the parameter is
    done: one layer's float copy at a time, not the whole block's."""

    def __init__(self, work, new, params):
        super().__init__()
        self._work, self._new, self._params = set(work), new, params

    def _load(self, p):
        if not dict.__contains__(self, p):
            v = self._new[p] if p in self._new else _np(self._params[p])
            dict.__setitem__(self, p, v)
        return dict.__getitem__(self, p)

    def __getitem__(self, p):
        if p in self._work:
            return self._load(p)
        return dict.__getitem__(self, p)

    def __contains__(self, p):
        return p in self._work or dict.__contains__(self, p)

    def get(self, p, default=None):
        return self[p] if p in self else default

    def done(self, p):
        self.pop(p, None)
        self._work.discard(p)


_SMALL = 1 << 22  # elements: below this a weight's kernels run on the calling thread


@contextlib.contextmanager
def _kernel_threads(size):
    """litecomp's kernels and NumPy's BLAS on one thread for a small weight: between the
    BLAS calls of the OBS loop and torch's own ops, the thread pools' spinning workers
    cost more than a second thread gains on a few milliseconds of work (measured in
    oneshot: 2x on the whole compression of a 4-layer model; and BLAS workers still
    spinning slowed the forward pass that follows)."""
    if size >= _SMALL:
        yield
        return
    from .._runtime import blas_single_thread
    with threads(1), blas_single_thread():
        yield


def _compress_param(run, p, stats, scales, current, report):
    """Every non-smoothing stage of parameter ``p`` in recipe order; its reports go to
    ``report``."""
    new, compact = run.new, run.compact
    w = current[p]
    keep = last_q = None
    first = p not in new and all(st.family != "smooth" for st, _ in run.by_param[p])
    for st, ptaps in run.by_param[p]:
        if st.family == "smooth":
            continue
        made = False  # w is already q's values
        if not ptaps:  # embedding (data-free only)
            w, keep, q = _data_free(p, w, st, keep, report)
        elif not st.calibrated:
            w, keep, q = _data_free(p, w, st, keep, report,
                                    _parts_for(ptaps, stats, scales, w))
        else:
            parts = _parts_for(ptaps, stats, scales, w)
            if st.method == "awq":
                w, q, rep = _awq_quantize(p, w, ptaps, stats, scales, st, keep)
            else:
                known = None
                if first and not scales and len(ptaps) == 1:  # w is the model's weight
                    o = stats[ptaps[0].key]
                    known = [o.output_energy(o.calls)]
                w, q, k, rep = compress_tensor(p, w, parts, st, keep,
                                               baselines=run.baselines, energies=known)
                made = True
                keep = k if k is not None else keep
            report.append(rep)
        if q is not None:
            compact[p] = q
            if not made:
                w = np.asarray(q.dequantize(), np.float32)
        last_q = q
        first = False
    if last_q is not None:  # the last stage quantized: w is its values
        new.set_quantized(p, last_q)
    else:
        new[p] = w


def _parts_for(ptaps, stats, scales, w):
    parts = []
    for t in ptaps:
        s = scales.get(t.key)
        if s is not None:  # the input is now x / s
            h = stats[t.key].h
            h2 = Hessian(h.features)
            h2.sum = h.sum / np.outer(s, s).astype(np.float64)
            h2.count = h.count
            h = Source(h2)
        else:
            h = stats[t.key].acc.source
        rows = slice(*t.rows) if t.rows else slice(0, w.shape[0])
        parts.append((rows, h, t.key))
    parts.sort(key=lambda r: r[0].start)
    covered = sum(r[0].stop - r[0].start for r in parts)
    if covered != w.shape[0]:
        raise ArgumentError(f"targets: only some of the q/k/v projections of "
                            f"{ptaps[0].param!r} are selected; a calibrated stage takes all "
                            "three rows blocks of a packed in_proj_weight or none")
    return parts


def _data_free(p, w, st, keep, report, parts=None):
    """A data-free stage (rtn, magnitude, ...) on the whole weight.  With ``parts`` (the
    layer's Hessians) the report has the output error; without (embeddings) the weight's
    relative error."""
    from ..prune import apply
    from ..prune.state import _stage_masks
    from ..quant.state import quantize_stage
    stage = Stage(st.method, None, (), dict(st.options), st.index)

    def rel_error(new):
        if not parts:
            return float(np.sum((new - w) ** 2, dtype=np.float64) /
                         max(float(np.sum(w.astype(np.float64) ** 2)), 1e-300))
        num = sum(h.energy(new[r], w[r]) for r, h, _k in parts)
        den = sum(h.energy(w[r]) for r, h, _k in parts)
        return num / den if den else 0.0
    note = "" if parts else "weight error (no data)"
    if st.family == "prune":
        m = _stage_masks(stage, {p: w})[p]
        keep = m if keep is None else keep & m
        new = apply(w, m)
        report.append(LayerReport(p, st.method, float(np.mean(new == 0)), None,
                                  rel_error(new), note=note))
        return new, keep, None
    src = w if keep is None else np.where(keep, w, 0).astype(np.float32)
    q = quantize_stage(src, stage)
    report.append(LayerReport(p, st.method, float(np.mean(src == 0)), getattr(q, "bits", None),
                              rel_error(np.asarray(q.dequantize(), np.float32)), note=note))
    return w, keep, q


# ------------------------------------------------------------------ smoothing
def _smooth(run, taps, stats, current):
    """Apply the awq / smoothquant stages of these taps: choose s per producer group, scale
    the layers' columns, fold 1/s into the producer.  Returns {tap key: s}."""
    by_param, params, modules = run.by_param, run.params, run.modules
    new, report = run.new, run.report
    from ..quant.awq import awq_scales, smoothquant_scales
    groups = {}
    notes = {}
    for t in taps:
        for st, ts in by_param[t.param]:
            if st.family != "smooth" and st.method != "awq":
                continue
            if t not in ts:
                continue
            fold = _mapped_producer(st.get("mappings"), t, params)
            reason = None
            if fold is None:
                fold, reason = _producer(t, modules)
            if fold is None:
                notes[t.key] = (st.method, reason)
                continue
            gkey = (st.index, fold.weight, fold.rows)
            groups.setdefault(gkey, (st, fold, []))[2].append(t)
    scales = {}
    for (_i, _w, _r), (st, fold, gtaps) in groups.items():
        ws = [_slice(current[t.param], t) for t in gtaps]
        if st.method == "awq":
            x = np.concatenate([stats[t.key].x for t in gtaps[:1]])
            s = awq_scales(ws, x, st.get("bits", 4), st.get("group_size", 128),
                           grid=st.get("grid", 20), scheme=st.get("scheme", "symmetric"))
        else:
            am = np.max([stats[t.key].abs_max for t in gtaps], axis=0)
            s = smoothquant_scales(am, ws, st.get("alpha", 0.5))
        for t in gtaps:
            w = current[t.param]
            r = slice(*t.rows) if t.rows else slice(0, w.shape[0])
            w[r] = w[r] * s[None, :]
            scales[t.key] = s
        # the producer may be a target too (v_proj -> o_proj), already scaled here
        fw = current.get(fold.weight)
        if fw is None:
            fw = new.get(fold.weight)
        fw = _np(params[fold.weight]) if fw is None else fw
        rows = slice(*fold.rows) if fold.rows else slice(0, fw.shape[0])
        if fold.kind == "norm":
            fw = fw / s
        else:
            fw = fw.copy()
            fw[rows] = fw[rows] / s[:, None]
        new[fold.weight] = fw
        if fold.weight in current:
            current[fold.weight] = fw
        if fold.bias:
            b = new.get(fold.bias)
            b = _np(params[fold.bias]) if b is None else b.copy()
            if fold.kind == "norm":
                b = b / s
            else:
                b[rows] = b[rows] / s
            new[fold.bias] = b
        if st.method == "smoothquant":
            for t in gtaps:
                report.append(LayerReport(t.key, "smoothquant", 0.0, None, 0.0,
                                          note=f"1/s folded into {fold.weight}"))
    for k, (method, reason) in notes.items():
        report.append(LayerReport(k, method, 0.0, None, float("nan"),
                                  note="not smoothed: " + reason))
    if notes:
        names = list(notes)
        warnings.warn(f"{len(names)} layer(s) cannot fold activation scales and stay "
                      f"unscaled ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): "
                      f"{next(iter(notes.values()))[1]}", UserWarning, stacklevel=5)
    return scales


def _slice(w, t):
    return w[slice(*t.rows)] if t.rows else w


def _awq_quantize(p, w, ptaps, stats, scales, st, keep):
    """AWQ's clip search and round-to-nearest on the (already scaled) weight."""
    from ..quant import quantize
    from ..quant.awq import apply_clip, awq_clip
    from ..calib.apply import _energy, _join_qtensors
    bits, gs = st.get("bits", 4), st.get("group_size", 128)
    scheme = st.get("scheme", "symmetric")
    qs, num, den, base_num = [], 0.0, 0.0, 0.0
    src = w if keep is None else np.where(keep, w, 0).astype(np.float32)
    for t in sorted(ptaps, key=lambda t: t.rows or (0,)):
        part = _slice(src, t)
        s = scales.get(t.key)
        x = stats[t.key].x
        xs = x / s if s is not None else x
        if st.get("clip", True):
            part = apply_clip(part, awq_clip(part, xs, bits, gs, scheme=scheme), gs)
        q = quantize(part, bits, scheme=scheme, **({"group_size": gs} if gs else {"axis": 0}))
        qs.append(q)
        h = stats[t.key].h.matrix
        orig = _slice(w, t) / (s if s is not None else 1)
        deq = q.dequantize() / (s if s is not None else 1)
        base = quantize(orig, bits, scheme=scheme,
                        **({"group_size": gs} if gs else {"axis": 0})).dequantize()
        num += _energy(deq - orig, h)
        base_num += _energy(base - orig, h)
        den += _energy(orig, h)
    q = _join_qtensors(qs, w.shape) if len(qs) > 1 else qs[0]
    rep = LayerReport(p, "awq", float(np.mean(q.dequantize() == 0)), bits,
                      num / den if den else 0.0, base_num / den if den else 0.0,
                      "" if all(t.key in scales for t in ptaps) else "clip only (no scales)")
    return w, q, rep


# ------------------------------------------------------------------ output
def _result_state_dict(model, new, compact):
    """After the swap: QTensor parts for quantized weights, and for every other tensor
    a NumPy view of the model's own (already updated) tensor -- no second copy."""
    from . import to_numpy
    sd = {}
    for k, v in model.state_dict().items():
        if k in compact:
            sd.update(compact[k].to_state_dict(k))
        else:
            sd[k] = to_numpy(v)
    return sd


def _swap(params, new):
    """Write every new value into its parameter (the only step that changes the model):
    all shapes are checked first, then each value is made and copied in turn."""
    names = list(new)
    for p in names:
        if p not in params or new.shape(p) != tuple(params[p].shape):
            raise ArgumentError(f"{p}: the compressed value does not fit the parameter")
    with torch.no_grad():
        for p in names:
            params[p].copy_(torch.from_numpy(new[p]))
