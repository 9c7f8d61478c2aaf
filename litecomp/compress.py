"""One recipe, one pass, one output a runtime loads: ``compress(source, out, recipe, format=)``.

A thin runner.  Each stage of the recipe (``litecomp.recipe``) is handled by its family's
runner in ``RUNNERS`` -- one table, no per-method code here:

- ``prune`` stages change a tensor's values (``litecomp.prune.state``'s per-stage masks);
- ``quant`` stages decide how a tensor is stored, so the output format's writer runs them:
  ``litecomp`` (litecomp's compact state dict in .safetensors), ``safetensors`` (dense:
  quantized and dequantized back, fake quantization), ``compressed-tensors`` (a folder for
  transformers / vLLM; rtn and fp8 stages) and ``gguf`` (a llama.cpp model file; ``gguf``
  stages with a ``qtype``).

The input is read one tensor at a time from a memory map and the output written as it is
produced (``litecomp.io.StreamWriter``, GGUF tensor by tensor), so peak memory stays near
two of the largest tensor whatever the model's size; the one exception is a ``global``
pruning stage, which ranks all its tensors together and holds their masks.  Every check --
unknown methods and keys, targets that match nothing, a format that cannot hold a stage's
result -- runs before the first byte is written, and the output appears only when complete.
A per-tensor report (method, sparsity, bits, bytes before/after, SQNR) is returned, printed
by the command and saved as JSON beside the output.
"""

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from . import dtypes as _dt
from .errors import ArgumentError
from .recipe import METHODS, stages as _stages
from .select import select

__all__ = ["compress", "check_recipe", "FORMATS", "RUNNERS", "Row", "report_table"]

FORMATS = ("litecomp", "safetensors", "compressed-tensors", "gguf")


@dataclass
class Row:
    """One tensor of the report."""
    name: str
    methods: list = field(default_factory=list)
    sparsity: float = 0.0
    bits: float = 0.0
    bytes_before: int = 0
    bytes_after: int = 0
    sqnr_db: float = math.inf
    max_abs_err: float = 0.0
    cosine: float = 1.0
    numel: int = 0
    output_error: Optional[float] = None  # calibrated stages: ||X (W' - W)^T||^2 / ||X W^T||^2


# ------------------------------------------------------------------ family runners
class PruneRunner:
    """Value-changing stages: ``run(stage, name, array) -> (array, keep mask)``.  ``prepare``
    gets every stage's selected names before the pass (a ``global`` stage ranks them
    together).  Calibrated stages (sparsegpt, wanda) run ``litecomp.calib``'s per-tensor
    ``compress_tensor`` with the tensor's saved Hessian."""

    hessians = None  # {layer: Hessian} for calibrated stages
    reports = None   # {name: [LayerReport]} filled by calibrated stages

    def prepare(self, stage, names, read):
        self.global_masks = getattr(self, "global_masks", {})
        if stage.options.get("granularity") == "global":
            from .prune.state import _stage_masks
            self.global_masks[stage.index] = _stage_masks(stage, {n: read(n) for n in names})

    def run(self, stage, name, a, inplace=False, keep=None):
        if stage.calibrated:
            new, _q, k, rep = _calibrated(self, stage, name, a, keep)
            from .calib.apply import _cast_like
            return _cast_like(new, a), k
        from .prune import apply
        from .prune.state import _stage_masks
        masks = self.global_masks.get(stage.index) if hasattr(self, "global_masks") else None
        mask = masks[name] if masks is not None else _stage_masks(stage, {name: a})[name]
        ok = inplace and a.flags.writeable and a.flags.c_contiguous
        return apply(a, mask, out=a if ok else None), mask


def _calibrated(runner, stage, name, a, keep):
    """litecomp.calib's compress_tensor on one tensor with its Hessian (rows of a packed
    q/k/v weight by their three); the LayerReport goes to ``runner.reports``."""
    from .calib.apply import _parts, compress_tensor, hessian_key
    parts = _parts(name, np.asarray(a), runner.hessians)
    if parts is None:
        raise ArgumentError(f"hessians: no Hessian for {name!r} (expected "
                            f"'{hessian_key(name)}.hessian'), which {stage.where()} selects")
    new, q, k, rep = compress_tensor(name, a, parts, stage, keep)
    runner.reports.setdefault(name, []).append(rep)
    return new, q, k, rep


class QuantRunner:
    """Storage stages: the output format's writer runs them through ``quantize(stage,
    name, array, keep)`` (``check(stage, fmt)`` says whether that format can hold the
    stage's result).  A gptq stage runs ``litecomp.calib``'s GPTQ with the tensor's saved
    Hessian (after a pruning stage, SparseGPT's joint mode keeps the mask); ``given``:
    {name: QTensor} already quantized (``litecomp.torch.compress``, from oneshot)."""

    hessians = None
    reports = None
    given = None

    def quantize(self, stage, name, a, keep=None):
        if self.given is not None and name in self.given:
            return self.given[name]
        if stage.method == "gptq":
            return _calibrated(self, stage, name, a, keep)[1]
        from .quant.state import quantize_stage
        return quantize_stage(a, stage)

    def check(self, stage, fmt):
        where = stage.where()
        if fmt == "gguf" and stage.method != "gguf":
            o = stage.options
            raise ArgumentError(
                f"{where}: GGUF cannot hold a {stage.method} stage "
                f"({o.get('bits', 8)}-bit, group_size {o.get('group_size')}); GGUF stores "
                "its own block types: use {'method': 'gguf', 'qtype': 'Q4_K'} (Q2_K..Q6_K, "
                "Q4_0, Q8_0, ...)")
        if fmt != "gguf" and stage.method == "gguf":
            raise ArgumentError(f"{where}: a gguf stage (qtype {stage.options.get('qtype')}) "
                                f"goes with --format gguf, not {fmt}")
        if fmt == "compressed-tensors":
            from .export.ct import scheme_of
            scheme_of(stage)
        if stage.method == "gptq" and stage.options.get("bits", 4) > 8:
            raise ArgumentError(f"{where}.bits: gptq stores 2-8 bit codes")
        if stage.method == "gguf":
            from .quant.gguf import FORMATS as GF
            qt = stage.options.get("qtype", "Q8_0")
            if qt not in GF:
                raise ArgumentError(f"{where}.qtype: {qt!r} is not one of {', '.join(GF)}")


RUNNERS = {"prune": PruneRunner, "quant": QuantRunner}
VALUE_FAMILIES = ("prune",)          # families whose runner changes values in the pass


def _runner_for(stage, runners, done=()):
    fam = stage.family
    if stage.index in done:
        return runners.get(fam)
    if fam not in runners:
        raise ArgumentError(f"{stage.where()}: method {stage.method!r} ({fam}) has no runner "
                            f"in compress; it runs: {', '.join(sorted(runners))} (shrink stages "
                            "first)")
    if stage.method in ("awq", "smoothquant"):
        raise ArgumentError(f"{stage.where()}: {stage.method} folds scales into the op before "
                            "each layer, which a checkpoint's tensors do not describe: run it "
                            "on the torch model with litecomp.torch.compress(model, out, "
                            "recipe, batches, format=...)")
    if stage.calibrated and runners[fam].hessians is None:
        raise ArgumentError(f"{stage.where()}: method {stage.method!r} needs calibration "
                            "data: pass --hessians (hessians= here; a file from "
                            "litecomp.calib.save_hessians) or use litecomp.torch.compress")
    if stage.method == "sparsegpt" and "bits" in stage.options:
        raise ArgumentError(f"{stage.where()}: sparsegpt with bits also quantizes; in a "
                            "compress recipe give the sparsegpt stage and then a gptq stage "
                            "(gptq after pruning keeps the mask: the same joint mode)")
    return runners[fam]


def _shrink_prefix(plan_stages):
    """The leading shrink stages; a shrink stage after another kind is an error."""
    n = 0
    while n < len(plan_stages) and plan_stages[n].family == "shrink":
        n += 1
    for s in plan_stages[n:]:
        if s.family == "shrink":
            raise ArgumentError(f"{s.where()}: shrink stages change the model's shapes and "
                                "names, so they come first in a compress recipe (before "
                                f"{plan_stages[n].method})")
    return plan_stages[:n]


# ------------------------------------------------------------------ the lazy, transformed view
class _View:
    """The input with the value stages applied on access, one tensor at a time; records
    each tensor's sparsity and methods in the report rows."""

    def __init__(self, ck, infos, plan, runners, rows, inplace, done=()):
        self.ck, self.infos, self.plan, self.runners, self.rows = ck, infos, plan, runners, rows
        self.inplace = inplace  # values are private copy-on-write maps: change them there
        self.done = done        # stage indices already applied (litecomp.torch.compress)
        self._last = None
        self.keep = {}          # name -> the keep mask of the pruning stages, last tensor only

    def release(self):
        """Consumers read tensors one after the other: the previous one's mapped pages
        leave this process (litecomp.io.Checkpoint.release)."""
        if self._last is not None and hasattr(self.ck, "release"):
            self.ck.release(*self._last)
        self._last = None

    def __iter__(self):
        return iter(self.infos)

    def __len__(self):
        return len(self.infos)

    def __contains__(self, name):
        return name in self.infos

    def info(self, name):
        return self.infos[name]

    def upto(self, name, last):
        self.release()
        a = self.ck[name]
        self._last = (name, a)
        keep = None
        for stage, names in self.plan:
            if stage.index >= last:
                break
            if stage.family in VALUE_FAMILIES and name in names and stage.index not in self.done:
                a, k = self.runners[stage.family].run(stage, name, a, self.inplace, keep)
                if k is not None:
                    keep = k if keep is None else keep & k
        self.keep = {} if keep is None else {name: keep}
        return a

    def __getitem__(self, name):
        a = self.upto(name, math.inf)
        if self._last is not None and a is not self._last[1]:
            self.release()  # the stages made a copy: the mapped input is not needed again
        row = self.rows[name]
        row.methods += [s.method for s, names in self.plan
                        if s.family in VALUE_FAMILIES and name in names]
        if row.methods and a.dtype.kind in "fV":
            from .core import tensor_stats
            row.sparsity = float(tensor_stats(a).sparsity)
        return a

    def quantize(self, stage, name, a):
        """The storage stage's result for the tensor just read (its pruning mask kept)."""
        return self.runners["quant"].quantize(stage, name, a, self.keep.get(name))


def _infos(ck):
    return {n: (np.dtype(ck.info(n)[0]), tuple(ck.info(n)[1])) for n in ck}


def _candidates(infos):
    return [n for n, (dt, shape) in infos.items()
            if _dt.name_of(dt) in _dt.WEIGHT_DTYPES and len(shape) >= 2]


class _Progress:
    """tensors and bytes done, on stderr (a bar when it is a terminal)."""

    def __init__(self, infos, enabled):
        self.total = sum(int(np.prod(s, dtype=np.int64)) * dt.itemsize
                         for dt, s in infos.values())
        self.count, self.n, self.done = len(infos), 0, 0
        self.enabled = enabled and sys.stderr.isatty()  # a bar only where it redraws
        self.t0 = time.perf_counter()

    def __call__(self, name, info):
        self.n += 1
        dt, shape = info
        self.done += int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        if not self.enabled:
            return
        from ._table import format_bytes
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r[{bar:<30}] {self.n}/{self.count} tensors, "
                         f"{format_bytes(self.done)}/{format_bytes(self.total)} "
                         f"({time.perf_counter() - self.t0:.0f}s)")
        if self.n == self.count:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ------------------------------------------------------------------ compress
def compress(source, out, recipe, *, format="litecomp", config=None, tokenizer=None,
             imatrix=None, hessians=None, max_shard_size=None, progress=False,
             report_path=None, key=None, _given=None):
    """Run ``recipe`` over the checkpoint ``source`` (a path; a dict works too) and write
    ``out`` in ``format`` (one of FORMATS).  Returns the report rows (``Row``); with
    ``report_path`` (the command uses ``<out>.report.json``) they are saved as JSON.

    ``config`` / ``tokenizer``: the Hugging Face config (and tokenizer.json) for the
    compressed-tensors and GGUF formats, and for shrink stages' architecture (default: the
    config litecomp saved beside a checkpoint file, ``litecomp.arch.config_path``);
    ``imatrix``:
    importance weights for GGUF K-quants; ``hessians``: saved Hessians (a safetensors file
    from ``litecomp.calib.save_hessians``, or {layer: Hessian}) for the calibrated stages
    gptq, sparsegpt and wanda; ``key``: the nested entry of a torch checkpoint that holds
    the state dict.  Shrink stages (shrink_ffn, shrink_heads, shrink_hidden, shrink_vocab,
    lowrank) come first and run on the whole state dict (``litecomp.shrink``), so the
    model is held in memory for them; awq and smoothquant need the torch model
    (``litecomp.torch.compress``).
    """
    from . import io
    if format not in FORMATS:
        raise ArgumentError(f"format: {format!r} is not one of {', '.join(FORMATS)}")
    if config is None and isinstance(source, (str, os.PathLike)):
        from .arch import config_path
        side = config_path(source)  # the config litecomp saved beside the checkpoint
        if os.path.isfile(side):
            config = side
    plan_stages = _stages(recipe)
    given_q, done, given_reports = _given or ({}, (), {})
    runners = {fam: cls() for fam, cls in RUNNERS.items()}
    reports = dict(given_reports)
    hs = None
    if hessians is not None:
        from .calib.apply import _hessians
        hs = _hessians(hessians)
    for r in runners.values():
        r.reports, r.given, r.hessians = reports, given_q, hs
    shrinks = check_recipe(plan_stages, format, done=done, runners=runners)
    if shrinks and format in ("compressed-tensors", "gguf") and \
            any(s.method == "lowrank" for s in shrinks):
        raise ArgumentError(f"{next(s for s in shrinks if s.method == 'lowrank').where()}: "
                            f"{format} has no layout for low-rank factors (X.first / "
                            "X.second); write litecomp or safetensors and load them with "
                            "litecomp.torch.apply_lowrank")
    if format == "gguf" and len({s.options.get("qtype", "Q8_0") for s in plan_stages
                                 if s.family == "quant"}) > 1:
        raise ArgumentError("recipe: one GGUF file takes one qtype here; give one gguf stage")
    import mmap
    files_from = None
    if shrinks:
        from .export.ct import _config_folder
        if not any(s.method == "shrink_vocab" for s in shrinks):
            files_from = _config_folder(config)  # the tokenizer still fits the model
        source, config, tokenizer = _shrink(source, shrinks, config, tokenizer, key)
    # copy-on-write maps: a stage may change a tensor in place, and only the pages it
    # writes become this process's memory
    ck = io.Checkpoint(source, key=key, access=mmap.ACCESS_COPY) \
        if not hasattr(source, "items") \
        else _DictSource(source)
    try:
        infos = _infos(ck)
        cands = _candidates(infos)
        plan = []
        for s in plan_stages[len(shrinks):]:
            if s.index in done:  # another pass ran it: the tensors its reports name
                names = {n for n, reps in reports.items() if n in infos
                         and any(r.method == s.method for r in reps)}
                if s.family != "smooth":
                    plan.append((s, names))
                continue
            pool = cands
            if s.calibrated and s.targets is None and s.index not in done:
                # as litecomp.calib: without targets, every tensor that has a Hessian
                from .calib.apply import _parts
                pool = [n for n in cands
                        if _parts(n, np.empty((infos[n][1][0], 0)), runners["prune"].hessians)]
            plan.append((s, set(select(pool, s.targets, s.ignore,
                                       what="float tensors with 2+ dimensions"
                                       + (" that have a Hessian" if pool is not cands
                                          else "")))))
        for s, names in plan:
            if not names:
                raise ArgumentError(f"{s.where()}: selects no tensor")
        quant = {}
        for s, names in plan:
            if s.family == "quant":
                for n in sorted(names):
                    quant.setdefault(n, s)
        rows = {n: Row(n, bytes_before=int(np.prod(shape, dtype=np.int64)) * dt.itemsize,
                       numel=int(np.prod(shape, dtype=np.int64)))
                for n, (dt, shape) in infos.items()}
        view = _View(ck, infos, plan, runners, rows, not isinstance(ck, _DictSource), done)
        for s, names in plan:
            if s.family in VALUE_FAMILIES and hasattr(runners[s.family], "prepare"):
                runners[s.family].prepare(s, sorted(names), lambda n, s=s: view.upto(n, s.index))
        bar = _Progress(infos, progress)
        _WRITERS[format](view, out, quant, rows, bar, config=config, tokenizer=tokenizer,
                         imatrix=imatrix, max_shard_size=max_shard_size,
                         files_from=files_from)
        view.release()
    finally:
        ck.close()
    for name in given_q:
        if name in rows:  # the model's weights were changed in place: no original to compare
            rows[name].sqnr_db = rows[name].max_abs_err = rows[name].cosine = math.nan
    for name, reps in reports.items():
        if name in rows:
            rows[name].output_error = float(reps[-1].error)
            if not rows[name].methods:
                rows[name].methods = [r.method for r in reps]
    result = list(rows.values())
    if report_path is not None:
        from .io.atomic import atomic_write
        with atomic_write(report_path) as f:
            f.write(json.dumps({"source": str(source) if not hasattr(source, "items") else
                                None, "output": os.fspath(out), "format": format,
                                "recipe": [s.as_dict() for s in plan_stages],
                                "tensors": [_jsonable(asdict(r)) for r in result]},
                               indent=1).encode())
    return result


def check_recipe(recipe, format, *, done=(), runners=None):
    """The checks ``compress`` runs before reading anything: every stage has a runner, the
    format can hold its result, calibrated stages have what they need (``done``: stage
    indices another pass already ran).  Returns the leading shrink stages."""
    plan_stages = _stages(recipe)
    if runners is None:
        runners = {fam: cls() for fam, cls in RUNNERS.items()}
        for r in runners.values():
            r.hessians = {}  # calibration data is checked when it is loaded
    shrinks = _shrink_prefix(plan_stages)
    for s in plan_stages[len(shrinks):]:
        r = _runner_for(s, runners, done)
        if hasattr(r, "check"):
            r.check(s, format)
    if format == "gguf":  # after the recipe: a stage GGUF cannot hold is the first news
        from .export.ggufmodel import require_gguf
        require_gguf()
    return shrinks


def _shrink(source, shrinks, config, tokenizer, key):
    """The leading shrink stages on the whole state dict (``litecomp.shrink``): (the smaller
    state dict, its config, the tokenizer to use).  A Hugging Face config comes back with
    the new sizes; after shrink_vocab the tokenizer no longer matches the ids, so none is
    written."""
    import warnings

    from . import io
    from .export.ct import _config_folder, load_config
    from .shrink import shrink_state_dict
    sd = dict(source) if hasattr(source, "items") else io.load(source, key=key)
    cfg = load_config(config)
    res = shrink_state_dict(sd, list(shrinks), config=cfg)
    if cfg is not None:
        folder = _config_folder(config)
        if tokenizer is None and folder and os.path.isfile(os.path.join(folder,
                                                                        "tokenizer.json")):
            tokenizer = os.path.join(folder, "tokenizer.json")
        cfg = dict(res.config)
    if tokenizer is not None and any(s.method == "shrink_vocab" for s in shrinks):
        warnings.warn("shrink_vocab renumbers the vocabulary: the tokenizer is not written "
                      "(the output has no vocabulary)", RuntimeWarning, stacklevel=3)
        tokenizer = None
    return res.state_dict, cfg, tokenizer


def _jsonable(d):
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


class _DictSource(dict):
    def info(self, name):
        a = np.asarray(self[name])
        return a.dtype, a.shape

    def close(self):
        pass


# ------------------------------------------------------------------ writers
def _record(row, stage, original, q, nbytes):
    from .quant.state import error_report
    row.methods.append(stage.method if stage.method != "gguf" else
                       f"gguf:{stage.options.get('qtype', 'Q8_0')}")
    deq = q if isinstance(q, np.ndarray) else q.dequantize()
    e = error_report(row.name, original, deq)
    row.sqnr_db, row.max_abs_err, row.cosine = e.sqnr_db, e.max_abs_err, e.cosine
    row.bits = 8.0 * nbytes / max(1, original.size)
    row.bytes_after = int(nbytes)


def _write_state(view, out, quant, rows, bar, *, dense, max_shard_size, **_):
    from .io.stream import StreamWriter
    out = os.fspath(out)
    if not out.endswith(".safetensors"):
        raise ArgumentError(f"out: {out!r}: the {'safetensors' if dense else 'litecomp'} "
                            "format writes a .safetensors file")
    with StreamWriter(out, max_shard_size=max_shard_size) as w:
        for name in view:
            a = view[name]
            stage = quant.get(name)
            if stage is None:
                w.add(name, a)
                rows[name].bytes_after = a.nbytes
            else:
                q = view.quantize(stage, name, a)
                if dense:
                    d = q.dequantize(a.dtype if _dt.name_of(a.dtype) in _dt.WEIGHT_DTYPES
                                     else np.float32)
                    w.add(name, d)
                    _record(rows[name], stage, a, q, q.nbytes)
                    rows[name].bytes_after = d.nbytes
                else:
                    parts = q.to_state_dict(name)
                    for k, v in parts.items():
                        w.add(k, v)
                    _record(rows[name], stage, a, q, sum(v.nbytes for v in parts.values()))
            bar(name, view.info(name))


def _write_ct(view, out, quant, rows, bar, *, config, max_shard_size, files_from, **_):
    from .export.ct import compressed_tensors, quantize_for
    stages = list({id(s): s for s in quant.values()}.values())
    # each quantized weight by the first stage that selected it
    plan = [s.__class__(s.method, tuple(n for n, st in quant.items() if st is s), (),
                        dict(s.options), s.index) for s in stages]
    written = {}

    def on_tensor(name, info):
        bar(name, info)

    def record(name, stage, original, q, nbytes):
        _record(rows[name], stage, original, q, nbytes)
    def quantizer(name, a, stage, dtype):
        if stage.method in ("rtn", "fp8") and name not in view.runners["quant"].given:
            return quantize_for(a, stage, dtype)
        return view.quantize(stage, name, a)  # gptq / awq: the calibrated codes
    compressed_tensors(view, out, config=config, recipe=plan or None,
                       max_shard_size=max_shard_size or "5GB", progress=on_tensor,
                       on_quantized=record, quantizer=quantizer, files_from=files_from)
    for name, row in rows.items():
        if name not in quant and not row.bytes_after:
            dt, shape = view.info(name)
            row.bytes_after = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    return written


def _write_gguf(view, out, quant, rows, bar, *, config, tokenizer, imatrix, **_):
    from .export.ggufmodel import gguf
    stage = next(iter(quant.values()), None)
    qtype = stage.options.get("qtype", "Q8_0") if stage else "F32"
    targets = set(quant)

    def record(name, original, blocks, kind):
        from .quant import gguf as qg
        bar(name, view.info(name))
        if name in targets and kind in qg.FORMATS:
            _record(rows[name], stage, original, qg.dequantize(blocks, kind)
                    .reshape(original.shape), blocks.nbytes)
        else:
            rows[name].bytes_after = blocks.nbytes
    gguf(view, out, config=config, qtype=qtype, tokenizer=tokenizer, imatrix=imatrix,
         on_tensor=record,
         quantize=targets)


_WRITERS = {
    "litecomp": lambda *a, **k: _write_state(*a, dense=False, **k),
    "safetensors": lambda *a, **k: _write_state(*a, dense=True, **k),
    "compressed-tensors": _write_ct,
    "gguf": _write_gguf,
}


def report_table(rows) -> str:
    """The report as a text table (tensors a stage touched) and a total line."""
    from ._table import format_bytes, render_table
    touched = [r for r in rows if r.methods]
    body = [[r.name, "+".join(r.methods), f"{r.sparsity:.1%}",
             f"{r.bits:.2f}" if r.bits else "-", format_bytes(r.bytes_before),
             format_bytes(r.bytes_after),
             "-" if not math.isfinite(r.sqnr_db) else f"{r.sqnr_db:.1f}"] for r in touched]
    before = sum(r.bytes_before for r in rows)
    after = sum(r.bytes_after for r in rows)
    table = render_table(["tensor", "method", "sparsity", "bits", "before", "after",
                          "SQNR dB"], body, align=["<", "<", ">", ">", ">", ">", ">"])
    return (f"{table}\n{len(touched)} of {len(rows)} tensors compressed; "
            f"{format_bytes(before)} -> {format_bytes(after)}")
